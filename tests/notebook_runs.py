"""Run a notebook of notebooks/ with papermill, as the tests do (in its own folder, no progress bar)."""
from pathlib import Path

import papermill as pm

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name, out, **params):
    return pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=params, cwd=str(NOTEBOOKS),
                               progress_bar=False, start_timeout=300)
