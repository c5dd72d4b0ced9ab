"""JupyterLab leaves notebooks/ clean: a save through the Jupyter server's contents manager, with the
repository's configuration, of a notebook as Lab holds it after a run gives back git's bytes."""
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from rlformal_utils import notebook_hygiene as H

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "jupyter" / "jupyter_server_config.d" / "rlformal.json"
NOTEBOOK_NAMES = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))


def _contents_manager(root: Path):
    """A contents manager with the hook the repository's server extension registers."""
    from jupyter_server.services.contents.filemanager import FileContentsManager
    cm = FileContentsManager(root_dir=str(root))
    H._load_jupyter_server_extension(SimpleNamespace(contents_manager=cm, log=logging.getLogger("test")))
    return cm


def test_the_configuration_a_real_server_reads_registers_the_hook(tmp_path, monkeypatch):
    """Load the server the way `jupyter lab` does, from a config dir holding only the repository's
    jupyter_server_config.d file (the venv's own config dirs are read too), then save a run notebook."""
    from jupyter_core.utils import run_sync
    from jupyter_server.serverapp import ServerApp
    conf = tmp_path / "etc" / "jupyter_server_config.d"
    conf.mkdir(parents=True)
    shutil.copy(CONFIG, conf / CONFIG.name)
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(tmp_path / "etc"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "home"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    name = NOTEBOOK_NAMES[0]
    shutil.copy(REPO / "notebooks" / name, root / "notebooks" / name)
    monkeypatch.setattr(H, "NOTEBOOKS", root / "notebooks")
    app = ServerApp()
    try:
        app.initialize(argv=[f"--ServerApp.root_dir={root}"], new_httpserver=False)
        cm = app.contents_manager
        model = run_sync(cm.get)(f"notebooks/{name}", content=True)
        content = _as_lab_after_a_run(json.loads(json.dumps(model["content"])))
        run_sync(cm.save)(dict(type="notebook", format="json", content=content), f"notebooks/{name}")
    finally:
        ServerApp.clear_instance()
    assert (root / "notebooks" / name).read_bytes() == (REPO / "notebooks" / name).read_bytes()


def _as_lab_after_a_run(content: dict) -> dict:
    """What Lab sends back on save after opening a notebook and running every cell."""
    content["metadata"]["language_info"] = dict(content["metadata"].get("language_info", {}), version="3.11.7")
    content["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    for i, cell in enumerate(content["cells"]):
        cell["metadata"]["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}
        if cell["cell_type"] == "code":
            cell["execution_count"] = i + 1
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "a line\n"},
                               {"output_type": "execute_result", "execution_count": i + 1, "metadata": {},
                                "data": {"text/plain": "42"}}]
    return content


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_open_run_save_in_lab_leaves_the_file_byte_identical(tmp_path, monkeypatch, name):
    (tmp_path / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / name, tmp_path / "notebooks" / name)
    monkeypatch.setattr(H, "NOTEBOOKS", tmp_path / "notebooks")
    cm = _contents_manager(tmp_path)
    model = cm.get(f"notebooks/{name}", content=True)
    model = dict(type="notebook", format="json", content=_as_lab_after_a_run(json.loads(json.dumps(model["content"]))))
    cm.save(model, f"notebooks/{name}")
    assert (tmp_path / "notebooks" / name).read_bytes() == (REPO / "notebooks" / name).read_bytes()


def test_notebooks_elsewhere_keep_their_outputs(tmp_path, monkeypatch):
    name = NOTEBOOK_NAMES[0]
    monkeypatch.setattr(H, "NOTEBOOKS", tmp_path / "notebooks")
    shutil.copy(REPO / "notebooks" / name, tmp_path / name)
    cm = _contents_manager(tmp_path)
    model = cm.get(name, content=True)
    cm.save(dict(type="notebook", format="json", content=_as_lab_after_a_run(json.loads(json.dumps(model["content"])))),
            name)
    nb = nbformat.read(tmp_path / name, as_version=4)
    assert nb.metadata.language_info.version == "3.11.7"
    assert all(c.outputs for c in nb.cells if c.cell_type == "code")


def test_committed_notebooks_hold_the_canonical_language_info_and_are_clean():
    for name in NOTEBOOK_NAMES:
        raw = (REPO / "notebooks" / name).read_text()
        nb = nbformat.reads(raw, as_version=4)
        assert nb.metadata.language_info == H.LANGUAGE_INFO, name
        assert nbformat.writes(H.clean(nb)) + "\n" == raw, name  # nothing for the hook to change


def test_run_all_installs_the_configuration_into_the_venv():
    script = (REPO / "run_all.sh").read_text()
    assert "jupyter/jupyter_server_config.d/rlformal.json" in script and "etc/jupyter/jupyter_server_config.d" in script
