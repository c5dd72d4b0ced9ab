"""Run a notebook of notebooks/ with papermill, as the tests do (in its own folder, no progress bar).

The kernel gets this checkout's root first on ``PYTHONPATH``: the shared ``.venv`` installs
``rlformal_utils`` in editable mode from the clone that created it, so without this a second clone
(a worktree, a CI cache) would test the first clone's code."""
import contextlib
import os
from pathlib import Path

import papermill as pm

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


@contextlib.contextmanager
def this_checkout_first():
    """``PYTHONPATH`` (which a kernel started now inherits) with this checkout's root in front."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *([old] if old else [])])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def run_notebook(name, out, **params):
    with this_checkout_first():
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
