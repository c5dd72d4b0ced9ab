"""End to end: the games notebooks through papermill on the smoke profile (the run notebook, the figure
notebook, a redraw, the same seed twice), the parameter declaration and its checks."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

from notebook_runs import assert_stops_in_first_cells, run_notebook
from rlformal_utils.games import params as P
from rlformal_utils.params import ParameterError, defaults, reference
from rlformal_utils.pretrained import OfflineError
from rlformal_utils.games.grid import runs as games_runs

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
SMOKE = games_runs("smoke")[0]
TIMING = {"time_generate", "time_reward", "time_ppo_step", "train_seconds", "seconds_per_step"}
BOOKKEEPING = {"reward_cache_hits", "reward_stats"}  # the second run finds every game in the reward cache


# ----------------------------------------------------------------------------- the declaration
def test_the_games_declaration_is_consistent():
    names = [p.name for p in P.PARAMS]
    assert len(names) == len(set(names))
    config = P.check(defaults(P.PARAMS))  # the defaults pass, and so does every profile of the runner
    assert not {"output_dir", "torch_threads", "device"} & set(config) and len(config) == len(names) - 3
    for profile in ("quick", "smoke", "paper"):
        for run in games_runs(profile):
            P.check(dict(defaults(P.PARAMS), **run.params))
    table = reference(P.PARAMS)
    assert table.count("\n") == len(P.PARAMS) + 1 and "`heldout_games`" in table and "bundled game names" in table


@pytest.mark.parametrize("bad, error, message", [
    (dict(heldout_games=["chess"]), ParameterError, r"heldout_games=\['chess'\] is not allowed: it must be a non-empty list of bundled game names"),
    (dict(heldout_games=[]), ParameterError, r"heldout_games=\[\] is not allowed"),
    (dict(heldout_games="hex"), ParameterError, r"heldout_games='hex' is not allowed: it must be a non-empty list"),
    (dict(ppo_games=["hex"]), ParameterError, r"ppo_games=\['hex'\] is not allowed: it must list training games only"),
    (dict(ppo_mini_batch_size=5), ParameterError, r"ppo_mini_batch_size=5 must divide ppo_batch_size=12"),
    (dict(max_new_tokens=300), ParameterError, r"max_new_tokens=300 must be at most n_positions / 2 = 256"),
    (dict(kl_mode="none"), ParameterError, r"kl_mode='none' is not allowed: it must be one of \['frozen', 'policy'\]"),
    (dict(context_chars=-1), ParameterError, r"context_chars=-1 is not allowed: it must be an integer in \[0, 100000\]"),
    (dict(model_size="two words"), ParameterError, r"model_size='two words' is not allowed: it must be one of \['tiny'"),
    (dict(model_size="no-such-org/no-such-model"), OfflineError, r"model_size='no-such-org/no-such-model' is a hub causal-LM id that is not in the local cache"),
])
def test_check_names_the_parameter_and_what_is_allowed(bad, error, message):
    with pytest.raises(error, match=message):
        P.check(dict(defaults(P.PARAMS), **bad))


def test_heldout_games_must_leave_two_training_games():
    from rlformal_utils.games.fim import bundled_games
    games = sorted(bundled_games())
    P.check(dict(defaults(P.PARAMS), heldout_games=games[:-2], ppo_games=[]))  # PPO on every training game
    with pytest.raises(ParameterError, match="leaves at least two games for training"):
        P.check(dict(defaults(P.PARAMS), heldout_games=games[:-1], ppo_games=[]))


def test_parameters_cell_is_the_declaration_and_papermill_reads_every_line(caplog):
    with caplog.at_level(logging.WARNING, logger="papermill"):
        found = pm.inspect_notebook(str(NOTEBOOKS / "games.ipynb"))
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert list(found) == [p.name for p in P.PARAMS]
    for p in P.PARAMS:
        assert eval(found[p.name]["default"]) == p.default, p.name
        assert found[p.name]["help"], p.name


@pytest.mark.parametrize("params, message", [
    (dict(heldout_games=["chess"]), r"heldout_games=\['chess'\] is not allowed"),
    (dict(ppo_mini_batch_size=5), r"ppo_mini_batch_size=5 must divide ppo_batch_size=12"),
    (dict(model_size="no-such-org/no-such-model"), r"OfflineError.*model_size='no-such-org/no-such-model'"),
    (dict(lora_rank=3), r"lora_rank=3 is not allowed: it must be one of \[0, 1, 2, 4, 8, 16, 32, 64, 128\]"),
    (dict(algorithm="group", group_size=5), r"group_size=5 is not allowed: it must be an integer in \[2, 256\] that divides"),
    (dict(algorithm="group", group_size=1), r"group_size=1 is not allowed"),
])
def test_bad_parameters_stop_the_notebook_in_its_first_cells(tmp_path, params, message):
    assert_stops_in_first_cells("games.ipynb", tmp_path, params, message)


# ----------------------------------------------------------------------------- the smoke profile, end to end
def _runner(results: Path, figures: Path, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rlformal_utils.runner", "--profile", "smoke", "--jobs", "2", "--only", "games",
           "--results-dir", str(results), "--figures-dir", str(figures)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """What ./run_all.sh --only games does, on the smoke profile: one run, then the figure notebook."""
    root = tmp_path_factory.mktemp("games_smoke")
    env = dict(os.environ, RLFORMAL_CACHE=str(tmp_path_factory.getbasetemp() / "cache"), HF_HUB_OFFLINE="1")
    proc = _runner(root / "results", root / "figures", env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(results=root / "results", figures=root / "figures", env=env, run=root / "results" / "games" / SMOKE.name)


def _outputs(nb, kind: str) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("name") == kind)


def test_the_smoke_run_writes_a_complete_run(smoke):
    run = smoke["run"]
    config = json.loads((run / "config.json").read_text())
    assert config == {k: v for k, v in dict(defaults(P.PARAMS), **SMOKE.params).items()
                      if k not in ("output_dir", "torch_threads", "device")}
    summary = json.loads((run / "summary.json").read_text())
    original = summary["heldout"]["original"]  # the original middles rebuild the bundled held-out games
    assert original["n"] == 4 and original["compile_share"] == original["playable_share"] == original["exact_share"] == 1.0
    assert summary["heldout"]["sft"]["n"] == summary["heldout"]["ppo"]["n"] == 4
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["step"]) == [1, 2] and metrics[["reward", "kl", "loss_policy"]].notna().all().all()
    samples = pd.read_json(run / "samples.jsonl", lines=True)
    assert len(samples) == 12 and sorted(samples["arm"].unique()) == ["original", "ppo", "sft"]
    executed = nbformat.read(run / "games.ipynb", as_version=4)
    text = nbformat.writes(executed)
    assert str(REPO) not in text and f'"{smoke["results"]}' not in text  # relative paths only
    assert not os.path.isabs(executed.metadata.papermill["parameters"]["output_dir"])
    assert "start_time" not in executed.metadata.papermill and "duration" not in executed.metadata.papermill
    assert not _outputs(executed, "stderr"), _outputs(executed, "stderr")[:2000]  # no warning boxes
    closing = "".join(o.get("text", "") for o in executed.cells[-1].outputs)
    assert "2 PPO steps (seed 0)" in closing and "On 4 held-out examples PPO wrote" in closing


def test_the_figure_notebook_draws_from_the_smoke_run(smoke):
    results, figures = smoke["results"], smoke["figures"]
    for name in ("games_reward", "games_heldout"):
        assert (figures / f"{name}.png").stat().st_size > 0 and (figures / f"{name}.pdf").exists(), name
    runs = pd.read_csv(results / "games_runs.csv")
    assert list(runs["run"]) == [SMOKE.name] and runs["original_playable_share"].iloc[0] == 1.0
    assert "| original middles |" in (results / "games_summary.md").read_text()
    assert "Synthesized games (profile `smoke`)" in (results / "games_samples.md").read_text()
    executed = nbformat.read(results / "games_figures.ipynb", as_version=4)
    assert "Held-out playable share, SFT -> PPO: seed 0:" in "".join(o.get("text", "") for o in executed.cells[-1].outputs)
    assert not _outputs(executed, "stderr")


def test_a_redraw_changes_no_file(smoke):
    """./run_all.sh without --redo skips the complete run and redraws: every byte stays the same."""
    files = lambda: {p: p.read_bytes() for d in (smoke["results"], smoke["figures"]) for p in d.rglob("*") if p.is_file()}
    before = files()
    proc = _runner(smoke["results"], smoke["figures"], smoke["env"])
    assert proc.returncode == 0 and "1 complete (skipped), 0 to run" in proc.stdout
    after = files()
    assert sorted(after) == sorted(before)
    assert [p.name for p in before if before[p] != after[p]] == []


def test_same_seed_same_numbers(smoke, tmp_path):
    """A second run with the same parameters: every column of metrics.csv, every value of summary.json
    and every sample agree, timing and reward-cache bookkeeping aside."""
    out = tmp_path / "b"  # the kernel inherits RLFORMAL_CACHE: the SFT model and the rewards come from the cache
    run_notebook("games.ipynb", tmp_path / "b.ipynb", **dict(SMOKE.params, output_dir=str(out), torch_threads=1))
    a, b = (pd.read_csv(d / "metrics.csv") for d in (smoke["run"], out))
    cols = [c for c in a.columns if c not in TIMING | BOOKKEEPING]
    assert len(cols) >= 14 and list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a[cols], b[cols])
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (smoke["run"], out))
    for s in (sa, sb):
        for key in TIMING | BOOKKEEPING:
            s.pop(key, None)
    assert sa == sb
    assert (smoke["run"] / "samples.jsonl").read_text() == (out / "samples.jsonl").read_text()
