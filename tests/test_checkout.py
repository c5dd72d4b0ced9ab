"""Notebook kernels import ``rlformal_utils`` from the checkout under test, whether the tests start them
(``notebook_runs``) or the runner does (``executors.execute``), even when nothing in the caller's
environment points there: the shared ``.venv``'s editable install may point at another clone."""
import json
import os
from pathlib import Path

import nbformat
import pytest

from notebook_runs import REPO, run_notebook
from rlformal_utils import executors

PROBE = ("import json, os, sys, rlformal_utils\n"
         "json.dump(dict(file=rlformal_utils.__file__, pythonpath=os.environ.get('PYTHONPATH', '')),\n"
         "          open(found_path, 'w'))")


@pytest.fixture
def probe(tmp_path):
    """A two-cell notebook that writes where its kernel imported rlformal_utils from."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = nbformat.v4.new_code_cell("found_path = ''")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(PROBE)]
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    return path


def _assert_this_checkout(found: dict):
    assert Path(found["file"]).resolve() == REPO / "rlformal_utils" / "__init__.py"
    assert found["pythonpath"].split(os.pathsep)[0] == str(REPO)


def test_the_repository_root_is_the_checkout_of_the_imported_package():
    import rlformal_utils
    from rlformal_utils.runs import REPO_ROOT
    assert REPO_ROOT == REPO and Path(rlformal_utils.__file__).resolve().parent == REPO / "rlformal_utils"


def test_a_test_notebook_kernel_imports_this_checkout(probe, tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # as in a fresh shell: only the .venv's install is left
    run_notebook(probe, tmp_path / "executed.ipynb", found_path=str(tmp_path / "found.json"))
    _assert_this_checkout(json.loads((tmp_path / "found.json").read_text()))
    assert "PYTHONPATH" not in os.environ  # the test process's environment is left as it was


def test_a_runner_notebook_kernel_imports_this_checkout(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/nowhere")  # a caller's own entries stay, behind the checkout
    job = executors.Job("probe", str(probe), str(tmp_path / "run"), dict(found_path=str(tmp_path / "found.json")),
                        "probe.ipynb", threads=1, thread_param=None)
    outcome = executors.execute(job)
    assert outcome.ok, outcome.error
    found = json.loads((tmp_path / "found.json").read_text())
    _assert_this_checkout(found)
    assert found["pythonpath"].split(os.pathsep)[1:] == ["/nowhere"]


def test_checkout_first_puts_the_root_in_front_once():
    root = str(REPO)
    assert executors.checkout_first(None) == root
    assert executors.checkout_first("") == root
    assert executors.checkout_first(f"/a{os.pathsep}{root}{os.pathsep}/b") == os.pathsep.join([root, "/a", "/b"])
