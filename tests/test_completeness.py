"""When a run counts as complete: only with config.json, metrics.csv and summary.json (and, for the
runner, its executed notebook); ``finish()`` writes summary.json last, so a run killed at any point
before it never looks complete and is run again."""
import json
import re

import pytest

from rlformal_utils import runner, runs

FILES = ("config.json", "metrics.csv", "summary.json")


def _make(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("{}")
    return folder


@pytest.mark.parametrize("missing", FILES)
def test_a_run_without_any_one_of_its_three_files_is_not_complete(tmp_path, missing):
    d = _make(tmp_path / "r", [f for f in FILES if f != missing])
    assert not runs.is_complete(d)
    assert runs.is_complete(_make(d, [missing]))


def test_complete_runs_lists_only_folders_with_metrics_and_summary(tmp_path):
    _make(tmp_path / "done", FILES)
    _make(tmp_path / "no_metrics", ["config.json", "summary.json"])
    _make(tmp_path / "no_summary", ["config.json", "metrics.csv"])
    assert [d.name for d, _ in runs.complete_runs(tmp_path)] == ["done"]


@pytest.mark.parametrize("missing", FILES + ("arithmetic.ipynb",))
def test_the_runner_reruns_a_run_missing_any_of_its_files(tmp_path, capsys, missing):
    results = tmp_path / "results"
    planned = runner.runs_for("arithmetic", "smoke")
    done, half = planned[0], planned[1]
    _make(done.out_dir(results), FILES + ("arithmetic.ipynb",))
    _make(half.out_dir(results), [f for f in FILES + ("arithmetic.ipynb",) if f != missing])
    assert runner.run_complete(done, results) and not runner.run_complete(half, results)
    runner.main(["--profile", "smoke", "--only", "arithmetic", "--dry-run", "--results-dir", str(results)])
    out = capsys.readouterr().out
    n = len(planned)
    assert f"{n} runs in arithmetic; 1 complete (skipped), {n - 1} to run" in out
    assert f"  arithmetic/{half.name}\n" in out and f"  arithmetic/{done.name}\n" not in out
    runner.main(["--profile", "smoke", "--only", "arithmetic", "--dry-run", "--redo", "--results-dir", str(results)])
    assert re.search(rf"; 0 complete \(skipped\), {n} to run", capsys.readouterr().out)


class Killed(Exception):
    pass


def _kill_when_writing(monkeypatch, name):
    real = runs.atomic_write_text

    def write(path, text):
        if path.name == name:
            raise Killed(name)
        real(path, text)

    monkeypatch.setattr(runs, "atomic_write_text", write)


def test_killed_while_writing_the_summary_leaves_metrics_but_not_a_complete_run(tmp_path, monkeypatch):
    log = runs.RunLog(tmp_path / "r", {"seed": 0})
    log.log({"step": 1, "reward": 0.5})
    _kill_when_writing(monkeypatch, "summary.json")
    with pytest.raises(Killed):
        log.finish({"final": 0.5})
    assert (tmp_path / "r" / "metrics.csv").read_text().splitlines() == ["step,reward", "1,0.5"]
    assert not (tmp_path / "r" / "summary.json").exists()
    assert not runs.is_complete(tmp_path / "r")


def test_killed_while_writing_the_metrics_leaves_no_summary(tmp_path, monkeypatch):
    log = runs.RunLog(tmp_path / "r", {"seed": 0})
    log.log({"step": 1, "reward": 0.5})
    _kill_when_writing(monkeypatch, "metrics.csv")
    with pytest.raises(Killed):
        log.finish({"final": 0.5})
    assert not (tmp_path / "r" / "summary.json").exists() and not (tmp_path / "r" / "metrics.csv").exists()
    assert not runs.is_complete(tmp_path / "r")
    monkeypatch.undo()
    log.finish({"final": 0.5})  # the same run finishing normally is complete
    assert runs.is_complete(tmp_path / "r") and json.loads((tmp_path / "r" / "summary.json").read_text()) == {"final": 0.5}
