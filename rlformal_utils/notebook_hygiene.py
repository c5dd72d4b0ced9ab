"""Keep the notebooks in ``notebooks/`` clean in git when JupyterLab saves them.

Opening a notebook in JupyterLab writes the running kernel's ``language_info`` (``"version": "3.11.7"``)
into its metadata, and every save then stores the outputs of the cells that ran. The repository's
Jupyter configuration (``jupyter/jupyter_server_config.d/rlformal.json``, installed into
``.venv/etc/jupyter/`` by ``./run_all.sh``) enables this module as a Jupyter server extension, which
registers :func:`pre_save_hook` with the server's contents manager. (A ``jupyter_server_config.d`` file
is read for its ``jpserver_extensions`` only, so it cannot set ``ContentsManager.pre_save_hook`` itself.)
Before the server writes a notebook under ``notebooks/`` the hook

* writes the language metadata the committed notebooks hold (:data:`LANGUAGE_INFO`),
* clears outputs and execution counts (executed copies live in ``results/``),
* drops per-cell view state that Lab or extensions add (``execution``, ``scrolled``, ``collapsed``,
  ``ExecuteTime``, an empty ``tags`` list) and saved widget state.

So opening, running and saving a notebook leaves ``git status`` clean unless a cell was edited.
Notebooks elsewhere (your own copies, ``results/``, ``scratch/``) are saved as they are.

    python -m rlformal_utils.notebook_hygiene notebooks/*.ipynb   # the same clean-up by hand
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO_ROOT / "notebooks"

# what every committed notebook holds: the language and its minor version, never the patch level
LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
    "version": "3.11",
}
VOLATILE_CELL_METADATA = ("execution", "scrolled", "collapsed", "ExecuteTime")


def clean(nb: dict) -> dict:
    """Normalise a notebook (a dict as nbformat or the Jupyter server holds it) in place; return it."""
    meta = nb.setdefault("metadata", {})
    if "language_info" in meta or "kernelspec" in meta:
        meta["language_info"] = json.loads(json.dumps(LANGUAGE_INFO))
    meta.pop("widgets", None)
    for cell in nb.get("cells", []):
        cmeta = cell.setdefault("metadata", {})
        for key in VOLATILE_CELL_METADATA:
            cmeta.pop(key, None)
        if cmeta.get("tags") == []:
            del cmeta["tags"]
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb


def is_source_notebook(path: str | os.PathLike, root_dir: str | os.PathLike | None = None) -> bool:
    """True for a ``.ipynb`` inside the repository's ``notebooks/`` folder. ``path`` is what the
    Jupyter server passes (relative to its ``root_dir``) or an absolute path."""
    p = Path(path)
    if not p.is_absolute():
        p = Path(root_dir or os.getcwd()) / p
    try:
        rel = p.resolve().relative_to(NOTEBOOKS.resolve())
    except ValueError:
        return False
    return p.suffix == ".ipynb" and len(rel.parts) == 1  # not notebooks/.ipynb_checkpoints/...


def pre_save_hook(model: dict, path: str, contents_manager=None, **kwargs) -> None:
    """The Jupyter server's ``ContentsManager.pre_save_hook``: clean source notebooks before writing."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    root = getattr(contents_manager, "root_dir", None)
    if is_source_notebook(path.lstrip("/"), root):
        clean(model["content"])


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "rlformal_utils.notebook_hygiene"}]


def _load_jupyter_server_extension(serverapp) -> None:
    """Register :func:`pre_save_hook` with the server's contents manager (once, beside any other hook)."""
    cm = serverapp.contents_manager
    if cm.pre_save_hook is not pre_save_hook and pre_save_hook not in cm._pre_save_hooks:
        cm.register_pre_save_hook(pre_save_hook)
    serverapp.log.info("rlformal_utils.notebook_hygiene: notebooks/ are saved without outputs")


def clean_file(path: str | os.PathLike) -> bool:
    """Clean one notebook file as the hook would; True when it changed."""
    import nbformat
    path = Path(path)
    old = path.read_text(encoding="utf-8")
    nb = clean(nbformat.reads(old, as_version=4))
    new = nbformat.writes(nb) + "\n"
    if new != old:
        path.write_text(new, encoding="utf-8")
    return new != old


if __name__ == "__main__":
    changed = [p for p in sys.argv[1:] if clean_file(p)]
    print("cleaned: " + (" ".join(changed) if changed else "nothing to clean"))
