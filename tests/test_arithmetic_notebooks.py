"""End to end: the real arithmetic notebooks through papermill with tiny budgets, the parameter
checks, and the runner that ./run_all.sh calls (smoke profile)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
TINY = dict(model_size="tiny", pretrain_examples=64, ppo_steps=4, ppo_batch_size=8, ppo_mini_batch_size=4,
            ppo_epochs=2, n_heldout=32, eval_every=2, kl_mode="policy", batch_entropy_coef=0.3)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RLFORMAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run_notebook(name, out, **params):
    return pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=params, cwd=str(NOTEBOOKS),
                               progress_bar=False, start_timeout=300)


def test_source_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"
        tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one parameters cell"


def test_arithmetic_notebook_tiny_budget(tmp_path):
    out = tmp_path / "run"
    run_notebook("arithmetic.ipynb", tmp_path / "executed.ipynb", output_dir=str(out), seed=3, **TINY)
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 3 and config["ppo_steps"] == 4 and config["kl_mode"] == "policy"
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["step"]) == [0, 1, 2, 3, 4]
    assert metrics["reward"].dropna().between(0, 1).all()
    assert metrics["heldout_greedy_exact_match"].notna().sum() == 3  # steps 0, 2, 4
    for col in ["rollout_batch_entropy", "rollout_sample_entropy", "rollout_max_share", "train_batch_entropy", "kl"]:
        assert metrics[col].iloc[1:].notna().all(), col
    assert (metrics["kl"].iloc[1:] == 0).all()  # reference = policy
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["after"]["sampled_answers"].values()) == 32
    assert 0.6 < summary["naive_reward"] < 0.9
    assert (out / "run.png").exists() and not (out / "metrics.partial.csv").exists()


def test_same_seed_same_numbers(tmp_path):
    for name in ("a", "b"):
        run_notebook("arithmetic.ipynb", tmp_path / f"{name}.ipynb", output_dir=str(tmp_path / name), **TINY)
    cols = ["reward", "rollout_batch_entropy", "heldout_greedy_exact_match", "loss_policy"]
    a, b = (pd.read_csv(tmp_path / n / "metrics.csv")[cols] for n in ("a", "b"))
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("params, message", [
    (dict(kl_mode="none"), r"kl_mode='none' is not allowed; choose one of \['frozen', 'policy'\]"),
    (dict(model_size="huge"), r"model_size='huge' is not allowed; choose one of \['tiny', 'small', 'medium', 'gpt2-small'\]"),
    (dict(ppo_mini_batch_size=3), r"ppo_mini_batch_size=3 must divide ppo_batch_size=8"),
    (dict(ppo_lr=-1.0), r"ppo_lr=-1.0 must be a number in \[0.0, 1.0\]"),
])
def test_bad_parameters_stop_in_the_first_cells(tmp_path, params, message):
    out = tmp_path / "run"
    with pytest.raises(pm.PapermillExecutionError, match=message) as err:
        run_notebook("arithmetic.ipynb", tmp_path / "executed.ipynb", output_dir=str(out), **dict(TINY, **params))
    assert err.value.exec_count <= 3  # the parameter-check cell, before any work
    assert not out.exists()


def test_runner_smoke_profile_end_to_end(tmp_path):
    """What ./run_all.sh does, on the seconds-long smoke profile: runs, skips, figures, table."""
    results, figures = tmp_path / "results", tmp_path / "figures"
    cmd = [sys.executable, "-m", "rlformal_utils.runner", "--profile", "smoke", "--jobs", "2", "--only", "arithmetic",
           "--results-dir", str(results), "--figures-dir", str(figures)]
    first = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs = sorted(p.parent.name for p in (results / "arithmetic").glob("*/summary.json"))
    assert len(runs) == 12
    for name in ["reward", "heldout_exact_match", "entropy", "histograms_kl-policy", "kl_ablation", "pretraining_size"]:
        assert (figures / f"arithmetic_{name}.png").exists() and (figures / f"arithmetic_{name}.pdf").exists()
    table = pd.read_csv(results / "arithmetic_summary.csv")
    assert len(table) == 8 + 4 and (table["seeds"] == 1).all()
    assert (results / "arithmetic_figures.ipynb").exists()

    # a run killed before its last write does not count as complete and is rerun; the rest are skipped
    (results / "arithmetic" / runs[0] / "summary.json").unlink()
    second = subprocess.run(cmd + ["--no-figures"], capture_output=True, text=True, env=os.environ)
    assert second.returncode == 0
    assert "11 complete (skipped), 1 to run" in second.stdout
