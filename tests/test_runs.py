"""Run bookkeeping: seeding, parameter checks, atomic outputs, the model cache."""
import json
import random

import numpy as np
import pytest
import torch

from rlformal_utils import runs


def test_one_seed_call_covers_random_numpy_and_torch():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()
    runs.set_seed(5); a = draw()
    runs.set_seed(5); b = draw()
    runs.set_seed(6); c = draw()
    assert a == b and a != c


def test_a_run_looks_complete_only_after_finish(tmp_path):
    log = runs.RunLog(tmp_path / "r", {"seed": 1})
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == {"seed": 1}
    log.log({"step": 1, "reward": torch.tensor(0.5)})
    log.flush()
    assert (tmp_path / "r" / "metrics.partial.csv").exists()
    assert not runs.is_complete(tmp_path / "r")  # killed here: nothing looks complete
    log.log({"step": 2, "reward": 0.7, "extra": np.float32(1.0)})
    log.finish({"final": 0.7})
    assert runs.is_complete(tmp_path / "r")
    assert not (tmp_path / "r" / "metrics.partial.csv").exists()
    lines = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,reward,extra" and lines[1] == "1,0.5," and len(lines) == 3
    runs.RunLog(tmp_path / "r", {"seed": 1})  # a rerun into the same folder starts incomplete
    assert not runs.is_complete(tmp_path / "r")


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    p = tmp_path / "x.json"
    runs.atomic_write_json(p, {"a": 1})
    with pytest.raises(TypeError):
        runs.atomic_write_json(p, {"a": object()})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]  # no temporary file left behind


def test_cache_builds_once_and_never_keeps_a_failed_build(tmp_path):
    calls = []

    def build(d):
        calls.append(d)
        (d / "weights.bin").write_text("w")

    a = runs.cached_dir("m", {"size": 1}, build, cache_dir=tmp_path)
    b = runs.cached_dir("m", {"size": 1}, build, cache_dir=tmp_path)
    c = runs.cached_dir("m", {"size": 2}, build, cache_dir=tmp_path)
    assert a == b != c and len(calls) == 2 and (a / "weights.bin").exists()

    def broken(d):
        (d / "half.bin").write_text("h")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runs.cached_dir("m", {"size": 3}, broken, cache_dir=tmp_path)
    assert not (tmp_path / "m" / runs.config_key({"size": 3})).exists()
    assert not list((tmp_path / "m").glob(".building-*"))


def test_cache_without_waiting_skips_a_folder_another_process_is_building(tmp_path):
    import fcntl
    calls = []

    def build(d):
        calls.append(d)
        (d / "part.bin").write_text("p")

    folder = runs.cache_path("m", {"part": 0}, tmp_path)
    folder.parent.mkdir(parents=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as other:  # another process builds it
        fcntl.flock(other, fcntl.LOCK_EX)
        assert runs.cached_dir("m", {"part": 0}, build, tmp_path, wait=False) is None
        assert not calls and not runs.is_cached(folder)
    # free again: the same call builds it, and a later one only reads it
    assert runs.cached_dir("m", {"part": 0}, build, tmp_path, wait=False) == folder
    assert runs.cached_dir("m", {"part": 0}, build, tmp_path, wait=False) == folder
    assert len(calls) == 1 and runs.is_cached(folder)


def test_runner_passes_small_floats_to_papermill_as_floats():
    import yaml
    from rlformal_utils.executors import yaml_params
    params = {"ppo_lr": 1e-05, "paper_lr": 1.41e-05, "steps": 3, "games": ["hex"], "on": True, "none": None}
    assert yaml.safe_load(yaml_params(params)) == params
    assert isinstance(yaml.safe_load(yaml_params({"x": 1e-05}))["x"], float)


def test_mean_and_sample_sd_as_the_tables_print_them():
    from rlformal_utils.figures import fmt_mean_sd, mean_sd
    m, s, n = mean_sd([0.9, 0.95, 1.0, None])                   # missing values are dropped
    assert (round(m, 10), round(s, 10), n) == (0.95, 0.05, 3)   # sd with ddof=1: sqrt(0.005 / 2)
    assert fmt_mean_sd([0.9, 0.95, 1.0]) == "0.950 ± 0.050 (3)"
    assert fmt_mean_sd([0.9, 0.95, 1.0], 2, count=False) == "0.95 ± 0.05"
    assert fmt_mean_sd([0.5]) == "0.500 (1)" and fmt_mean_sd([]) == "n/a" and fmt_mean_sd([], missing="") == ""
