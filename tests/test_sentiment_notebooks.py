"""End to end: the real sentiment notebooks through papermill with the smoke budget (the tiny rt-gpt2
policy): the parameters cell is the declaration, a run writes its files and states its result, the
same seed gives the same numbers, bad parameters stop in the first cells, and the figure notebook
draws from the runs' files."""
import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

from notebook_runs import assert_stops_in_first_cells, run_notebook
from rlformal_utils.sentiment.grid import runs as sentiment_runs
from rlformal_utils.sentiment import distinct_n
from rlformal_utils.sentiment.params import PARAMS

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
SMOKE = dict(sentiment_runs("smoke")[0].params, eval_every=1, format_probe_prompts=4)
TIMING_COLUMNS = {"time_generate", "time_reward", "time_ppo_step"}                  # metrics.csv
TIMING_KEYS = {"timings", "train_seconds", "seconds_per_step", "notebook_seconds"}  # summary.json


def outputs_text(nb, cells=None) -> str:
    chosen = nb.cells if cells is None else [nb.cells[i] for i in cells]
    return json.dumps([c.get("outputs", []) for c in chosen], ensure_ascii=False)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run (held-out evaluation every step, the prompt-format probe) in a results folder."""
    results = tmp_path_factory.mktemp("results") / "sentiment"
    run = results / "s0"
    nb = run_notebook("sentiment.ipynb", results.parent / "executed.ipynb", output_dir=str(run), **SMOKE)
    return run, nb


def test_parameters_cell_is_the_declaration_and_papermill_reads_every_line():
    found = pm.inspect_notebook(str(NOTEBOOKS / "sentiment.ipynb"))
    assert list(found) == [p.name for p in PARAMS]  # every line parsed, in the declared order
    for p in PARAMS:
        assert eval(found[p.name]["default"]) == p.default and type(eval(found[p.name]["default"])) is type(p.default)
        assert found[p.name]["help"] == p.help, p.name


def test_notebooks_look_as_jupyterlab_writes_them():
    """Opening a notebook in Lab changes nothing: Lab's kernelspec and language_info, nbformat's layout."""
    lab = nbformat.read(NOTEBOOKS / "arithmetic.ipynb", as_version=4).metadata
    for name in ("sentiment.ipynb", "sentiment_figures.ipynb"):
        text = (NOTEBOOKS / name).read_text()
        nb = nbformat.reads(text, as_version=4)
        assert nb.metadata == lab and lab.kernelspec.display_name == "Python 3 (ipykernel)", name
        assert nbformat.writes(nb) + "\n" == text, name
        assert len(pm.inspect_notebook(str(NOTEBOOKS / name))) == sum(
            "=" in line and not line.lstrip().startswith("#")
            for c in nb.cells if "parameters" in c.metadata.get("tags", []) for line in c.source.splitlines())


def test_smoke_run_writes_its_files_and_states_its_result(smoke_run):
    run, nb = smoke_run
    config = json.loads((run / "config.json").read_text())
    assert config["ppo_steps"] == 2 and config["policy"] == "rt-gpt2" and config["top_k"] == 0
    assert not {"output_dir", "torch_threads", "device"} & set(config)
    assert set(config) == {p.name for p in PARAMS if p.config}
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["step"]) == [0, 1, 2]
    assert metrics["heldout_reward_mean"].notna().all() and metrics["reward"].iloc[1:].notna().all()
    assert metrics["kl"].iloc[1:].notna().all() and (metrics["heldout_perplexity"] > 1).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["judge"] == "vader" and summary["before"]["n"] == SMOKE["n_heldout"]
    assert summary["classifier"]["n_train"] == SMOKE["classifier_max_train"]
    assert set(summary["format_probe"]) == {"plain", "instruction"}  # rt-gpt2's tokenizer has no chat template
    samples = pd.read_csv(run / "eval_samples.csv")
    assert len(samples) == SMOKE["n_heldout"] and {"reward_before", "reward_after", "response_after"} <= set(samples)
    # the summary's numbers are those of the saved samples, and the last metrics row carries them
    assert summary["after"]["reward_mean"] == pytest.approx(samples["reward_after"].mean())
    assert summary["after"]["distinct_2"] == pytest.approx(distinct_n(samples["response_after"].fillna(""), 2))
    assert metrics["heldout_reward_mean"].iloc[-1] == pytest.approx(summary["after"]["reward_mean"])
    assert (run / "run.png").exists() and not (run / "metrics.partial.csv").exists()
    outputs = outputs_text(nb)
    assert not re.search(r"(?<!\.\.)" + re.escape(str(run.parent.parent)), outputs)  # only relative paths
    assert "IProgress not found" not in outputs and "Warning" not in outputs
    closing = outputs_text(nb, [-1])
    b, a = summary["before"], summary["after"]
    assert "Result of this run" in closing
    assert f"from {b['reward_mean']:.2f} to {a['reward_mean']:.2f}" in closing
    assert f"from {b['perplexity']:.1f} to {a['perplexity']:.1f} ({a['perplexity'] / b['perplexity']:.2f}x" in closing


def test_same_seed_same_numbers(smoke_run, tmp_path):
    """Every column of metrics.csv and eval_samples.csv and every value of summary.json agree for two
    runs with the same seed; only the timing columns and keys (by name) may differ."""
    first, _ = smoke_run
    second = tmp_path / "again"
    run_notebook("sentiment.ipynb", tmp_path / "again.ipynb", output_dir=str(second), **SMOKE)
    a, b = (pd.read_csv(d / "metrics.csv") for d in (first, second))
    assert list(a.columns) == list(b.columns) and TIMING_COLUMNS <= set(a.columns)
    columns = [c for c in a.columns if c not in TIMING_COLUMNS]
    assert len(columns) >= 25
    pd.testing.assert_frame_equal(a[columns], b[columns], check_exact=True)
    pd.testing.assert_frame_equal(*(pd.read_csv(d / "eval_samples.csv") for d in (first, second)), check_exact=True)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (first, second))
    for s in (sa, sb):
        assert TIMING_KEYS <= set(s)
        for key in TIMING_KEYS:
            s.pop(key)
        for fmt in s["format_probe"].values():
            fmt.pop("seconds")
    assert sa == sb
    assert (first / "config.json").read_text() == (second / "config.json").read_text()


@pytest.mark.parametrize("params, message", [
    (dict(kl_mode="none"), r"kl_mode='none' is not allowed: it must be one of \['frozen', 'policy'\]"),
    (dict(reward="two words"), r"reward='two words' is not allowed: it must be one of \['minilm-logreg', 'vader'\] or a hub"),
    (dict(policy="lvwerra/gpt2-imdb"), r"not in the local cache.*offline defaults: 'rt-gpt2', 'smollm2-135m'"),
    (dict(data="imdb"), r"data='imdb' is a hub dataset id that is not in the local cache.*offline defaults: "
                        r"'rotten_tomatoes'"),
    (dict(response_max_tokens=2), r"response_max_tokens=2 is not allowed: it must be an integer in \[4, 256\]"),
    (dict(policy="smollm2-135m", lora_rank=5), r"lora_rank=5 is not allowed: it must be one of \[0, 1, 2, 4, 8, 16"),
    (dict(kl_coef=50.0), r"kl_coef=50.0 is not allowed: it must be a number in \[0.0, 10.0\]"),
    (dict(prompt_format="poem"), r"prompt_format='poem' is not allowed: it must be one of \['plain', 'instruction', 'chat'\]"),
    (dict(prompt_format="chat"), r"prompt_format='chat' is not allowed for policy='rt-gpt2'; choose one of \['plain', 'instruction'\]"),
])
def test_bad_parameters_stop_in_the_first_cells(tmp_path, params, message):
    assert_stops_in_first_cells("sentiment.ipynb", tmp_path, dict(SMOKE, **params), message)


def test_figure_notebook_draws_every_figure_and_table_from_the_runs(smoke_run):
    run, _ = smoke_run
    results = run.parent
    # a second KL coefficient, so that the sweep figures have something to draw
    run_notebook("sentiment.ipynb", results.parent / "executed2.ipynb", output_dir=str(results / "s0-kl0"),
                 **dict(SMOKE, kl_coef=0.0, ppo_steps=1, eval_every=0, format_probe_prompts=0))
    figures = results.parent / "figures"
    nb = run_notebook("sentiment_figures.ipynb", results.parent / "figures.ipynb", results_dir=str(results),
                      figures_dir=str(figures), profile="smoke")
    for name in ["reward", "kl", "distributions", "judge_perplexity", "kl_sweep", "tradeoff"]:
        assert (figures / f"sentiment_{name}.png").exists() and (figures / f"sentiment_{name}.pdf").exists(), name
    out = results.parent
    runs = pd.read_csv(out / "sentiment_runs.csv")
    required = ["policy", "kl_coef", "seed", "steps", "reward_before", "reward_after", "judge_positive_before",
                "judge_positive_after", "perplexity_before", "perplexity_after", "wall_seconds"]
    assert set(required) <= set(runs) and len(runs) == 2
    assert sorted(runs["kl_coef"]) == [0.0, 0.2] and sorted(runs["steps"]) == [1, 2]
    summary = json.loads((run / "summary.json").read_text())
    row = runs[runs["kl_coef"] == 0.2].iloc[0]
    assert row["reward_after"] == pytest.approx(summary["after"]["reward_mean"], rel=1e-5)
    assert row["perplexity_ratio"] == pytest.approx(summary["after"]["perplexity"] / summary["before"]["perplexity"],
                                                    rel=1e-4)
    table = pd.read_csv(out / "sentiment_summary.csv")
    assert len(table) == 2 and set(table["seeds"]) == {1}
    assert "mean reward before" in (out / "sentiment_summary.md").read_text()
    examples = (out / "sentiment_examples.md").read_text()
    assert "response_after" in examples  # a tie in seeds: the first setting, KL 0, its seed 0
    assert examples.splitlines()[0] == "Setting: rt-gpt2 (tiny), reward minilm-logreg, KL 0, seed 0."
    closing = outputs_text(nb, [-1])
    assert f"KL 0.2 (1 seed; 95 % bootstrap over prompts): reward gain {row['reward_gain']:+.2f} [" in closing
    assert "Warning" not in outputs_text(nb) and str(REPO) not in outputs_text(nb)
