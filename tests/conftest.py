"""Shared by every test: an isolated, offline environment (models and rewards cached in a temporary
folder, never the repository's .cache), the arithmetic tokenizer and a tiny untrained GPT-2 on disk.
The checkout these tests belong to comes first on the import path, whatever the .venv's editable
install points at (notebook kernels get the same: notebook_runs.py, executors.execute)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402

from rlformal_utils.arithmetic import task  # noqa: E402
from rlformal_utils.pretrain import build_gpt2  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Session-wide, so that module-scoped fixtures (e.g. reward workers) and every notebook kernel
    and runner subprocess see it too."""
    from rlformal_utils import runs
    cache = tmp_path_factory.getbasetemp() / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLFORMAL_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("RLFORMAL_PROGRESS", "lines")
        mp.setattr(runs, "CACHE_DIR", cache)
        yield cache


@pytest.fixture(scope="session")
def tok():
    return task.make_tokenizer()


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("tiny")
    build_gpt2("tiny", tok, seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    return d
