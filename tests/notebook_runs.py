"""Run a notebook of notebooks/ with papermill, as the tests do (in its own folder, no progress bar)."""
from pathlib import Path

import papermill as pm

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name, out, **params):
    return pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=params, cwd=str(NOTEBOOKS),
                               progress_bar=False, start_timeout=300)


def assert_stops_in_first_cells(name, tmp_path, params, message):
    """A bad parameter stops the notebook in its setup cell with ``message``, before any output exists."""
    import pytest
    out = tmp_path / "run"
    with pytest.raises(pm.PapermillExecutionError, match=message) as err:
        run_notebook(name, tmp_path / "executed.ipynb", output_dir=str(out), **params)
    assert err.value.exec_count <= 3  # the setup cell, before any work
    assert not out.exists()
