"""The repository's promises: pinned environments agree, CI calls the README's test command."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _pins(lines):
    return {m.group(1).lower(): m.group(2) for m in (re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", l) for l in lines) if m}


def test_environment_yml_mirrors_the_pip_pins():
    req = _pins((REPO / "requirements.txt").read_text().splitlines())
    env = _pins((REPO / "environment.yml").read_text().splitlines())
    assert req and req == env


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "./run_all.sh --tests" in readme and "./run_all.sh --tests" in (REPO / ".ci" / "run").read_text()


def test_nothing_big_or_cached_is_tracked():
    """What git tracks (not what .gitignore says): no venv, cache, scratch run, checkpoint or big file."""
    import subprocess
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = [f for f in files.split("\0") if f]
    assert "README.md" in files and "rlformal_utils/one_token.py" in files
    for f in files:
        assert not f.startswith((".venv/", ".cache/", "scratch/")), f
        assert not f.endswith((".safetensors", ".bin", ".pt", ".ckpt", ".gguf", ".partial.ipynb")), f
        path = REPO / f
        if path.exists():
            assert path.stat().st_size < 2_000_000, f"{f} is {path.stat().st_size} bytes"
