"""End to end: the real arithmetic notebooks through papermill with tiny budgets, the parameter
declarations and checks, and the runner that ./run_all.sh calls (smoke profile)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

from notebook_runs import assert_stops_in_first_cells, run_notebook
from rlformal_utils.arithmetic.params import PARAMS

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
TINY = dict(model_size="tiny", pretrain_examples=32, steps=6, prompts_per_step=8, k=4, n_heldout=16, n_evals=3)
TIMING = {"wall_seconds", "cpu_seconds", "train_seconds", "train_cpu_seconds"}


def test_source_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"
        tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one parameters cell"


def test_parameters_cell_is_the_declaration_and_papermill_reads_every_line():
    """One declaration per parameter: the notebook's cell lists exactly the declared names and
    defaults, in order, and papermill parses each line (no 'Unable to parse line')."""
    found = pm.inspect_notebook(str(NOTEBOOKS / "arithmetic.ipynb"))
    assert list(found) == [p.name for p in PARAMS]
    for p in PARAMS:
        assert eval(found[p.name]["default"]) == p.default, p.name
        assert found[p.name]["help"], p.name
        assert found[p.name]["inferred_type_name"] == (p.kind or type(p.default)).__name__, p.name  # typed


def _metrics(out):
    return pd.read_csv(out / "metrics.csv")


def test_group_run_tiny_budget(tmp_path):
    out = tmp_path / "run"
    nb = run_notebook("arithmetic.ipynb", tmp_path / "executed.ipynb", output_dir=str(out), seed=3, **TINY)
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 3 and config["steps"] == 6 and config["algorithm"] == "group"
    assert not {"output_dir", "torch_threads", "device"} & set(config)
    m = _metrics(out)
    assert list(m["step"]) == list(range(7)) and list(m["answers_seen"]) == [32 * s for s in range(7)]
    evals = m.dropna(subset=["heldout_greedy_exact_match"])["step"].tolist()
    assert m.dropna(subset=["unseen_greedy_exact_match"])["step"].tolist() == evals
    assert evals == [0, 1, 2, 6]  # step 0, then 3 points spaced in log(step), always the last
    for col in ["reward", "rollout_max_share", "rollout_mutual_information", "train_batch_entropy", "loss_policy",
                "banned_mass"]:
        assert m[col].iloc[1:].notna().all(), col
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answers_seen"] == 6 * 8 * 4 and sum(summary["final"]["heldout"]["sampled_answers"].values()) == 16
    assert 0.6 < summary["naive_reward"] < 0.9
    assert not (out / "metrics.partial.csv").exists()
    closing = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert "held-out exact match" in closing and "answers seen" in closing  # the run states its result


def test_same_seed_same_numbers(tmp_path):
    """Every column of metrics.csv and every value of summary.json agree, timing aside."""
    for name in ("a", "b"):
        run_notebook("arithmetic.ipynb", tmp_path / f"{name}.ipynb", output_dir=str(tmp_path / name),
                     **dict(TINY, algorithm="ppo", regulariser="both", kl_reference="frozen"))
    a, b = (_metrics(tmp_path / n) for n in ("a", "b"))
    cols = [c for c in a.columns if c not in TIMING]
    assert len(cols) > 30 and list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a[cols], b[cols])
    sa, sb = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("a", "b"))
    for s in (sa, sb):
        for key in TIMING:
            s.pop(key, None)
    assert sa == sb


@pytest.mark.parametrize("algorithm, engine", [("ppo", "trl"), ("supervised", "fast"), ("none", "fast")])
def test_other_algorithms_and_the_trl_engine_run(tmp_path, algorithm, engine):
    out = tmp_path / "run"
    nb = run_notebook("arithmetic.ipynb", tmp_path / "x.ipynb", output_dir=str(out),
                      **dict(TINY, algorithm=algorithm, engine=engine, steps=3))
    warnings = [o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not warnings, warnings  # JupyterLab would show each as a pink box
    m, summary = _metrics(out), json.loads((out / "summary.json").read_text())
    expected_steps = 0 if algorithm == "none" else 3
    assert m["step"].max() == expected_steps and summary["answers_seen"] == expected_steps * 8
    if engine == "trl":
        assert m["value_var_explained"].iloc[1:].notna().all() and (m["kl"].iloc[1:] == 0).all()


@pytest.mark.parametrize("params, message", [
    (dict(algorithm="grpo"), r"algorithm='grpo' is not allowed: it must be one of \['group', 'ppo', 'supervised', 'none'\]"),
    (dict(regulariser="entropy"), r"regulariser='entropy' is not allowed: it must be one of \['none', 'token', 'batch', 'both'\]"),
    (dict(k=1), r"k=1 is not allowed: it must be an integer in \[2, 1024\]"),
    (dict(steps=-5), r"steps=-5 is not allowed: it must be an integer in \[0, 10000000\]"),
    (dict(rl_lr=0.0), r"rl_lr=0.0 is not allowed: it must be a number in \[1e-08, 1.0\]"),
    (dict(engine="trl", algorithm="group"), r"engine='trl' needs algorithm='ppo'"),
    (dict(algorithm="ppo", mini_batch_size=3), r"mini_batch_size=3 must divide prompts_per_step=8"),
])
def test_bad_parameters_stop_in_the_first_cells(tmp_path, params, message):
    assert_stops_in_first_cells("arithmetic.ipynb", tmp_path, dict(TINY, **params), message)


def test_runner_smoke_profile_end_to_end(tmp_path):
    """What ./run_all.sh does, on the seconds-long smoke profile: runs, skips, figures, tables."""
    results, figures = tmp_path / "results", tmp_path / "figures"
    cmd = [sys.executable, "-m", "rlformal_utils.runner", "--profile", "smoke", "--jobs", "2", "--only", "arithmetic",
           "--results-dir", str(results), "--figures-dir", str(figures)]
    first = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs = sorted(p.parent.name for p in (results / "arithmetic").glob("*/summary.json"))
    assert len(runs) == 8
    for name in ["learning_curves", "collapse", "histograms", "reward", "competent_start", "ppo_diagnostics"]:
        assert (figures / f"arithmetic_{name}.png").exists() and (figures / f"arithmetic_{name}.pdf").exists(), name
    timing = pd.read_csv(results / "timings.csv")  # one row per training invocation of the runner
    assert len(timing) == 1 and timing["runs"].iloc[0] == 8 and timing["profile"].iloc[0] == "smoke"
    assert timing["wall_seconds"].iloc[0] > 0 and timing["cache_empty"].iloc[0] in (True, False)
    table = pd.read_csv(results / "arithmetic_runs.csv")
    assert len(table) == 8 and set(table["algorithm"]) == {"none", "group", "ppo", "supervised"}
    for col in ["algorithm", "regulariser", "kl_reference", "pretrain_chains", "seed", "answers_seen",
                "heldout_exact_match", "unseen_pairs_exact_match", "heldout_reward", "max_share", "wall_seconds"]:
        assert col in table, col
    executed = nbformat.read(results / "arithmetic" / runs[0] / "arithmetic.ipynb", as_version=4)
    assert str(REPO) not in nbformat.writes(executed)  # relative paths only, and no timing metadata
    assert not os.path.isabs(executed.metadata.papermill["parameters"]["output_dir"])
    assert "start_time" not in executed.metadata.papermill and "duration" not in executed.metadata.papermill

    # a run killed before its last write does not count as complete and is rerun; the rest are skipped
    (results / "arithmetic" / runs[0] / "summary.json").unlink()
    second = subprocess.run(cmd + ["--no-figures"], capture_output=True, text=True, env=os.environ)
    assert second.returncode == 0
    assert "7 complete (skipped), 1 to run" in second.stdout
    assert len(pd.read_csv(results / "timings.csv")) == 2
