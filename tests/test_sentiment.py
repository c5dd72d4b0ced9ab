"""Sentiment alignment: rewards that never fail, the cached classifier, offline hub ids, prompts and
sampling, and the real notebooks through papermill with a tiny budget."""
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest
import torch

from rlformal_utils import sentiment as S
from rlformal_utils.pretrain import build_gpt2
from rlformal_utils.runner import sentiment_runs
from rlformal_utils.runs import ParameterError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
SMOKE = sentiment_runs("smoke")[0].params
ODD_STRINGS = ["", " ", "a", "x" * 20_000, "great " * 5_000, "très bien, 漢字 😀 ñ", "\x00\x01\x7f\ufffd",
               "!!!???...", "[PAD][EOS][BOS]", "\n\t\r", "<|endoftext|>", "0" * 300, None]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sentiment-cache")


@pytest.fixture(autouse=True)
def offline(monkeypatch, cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RLFORMAL_CACHE", str(cache))  # for the notebook kernels


@pytest.fixture(scope="module")
def classifier_dir(cache):
    return S.train_classifier(max_train=SMOKE["classifier_max_train"], cache_dir=cache)


# ----------------------------------------------------------------------------- rewards
def _assert_finite_floats(values, n):
    assert len(values) == n
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)


def test_vader_reward_is_a_finite_float_for_any_string():
    reward = S.VaderReward()
    values = reward(ODD_STRINGS)
    _assert_finite_floats(values, len(ODD_STRINGS))
    assert all(-1.0 <= v <= 1.0 for v in values)
    assert reward(["a wonderful, moving film"])[0] > 0.05 > reward(["a dull, painful mess"])[0]


def test_classifier_reward_is_a_finite_float_for_any_string(classifier_dir):
    reward = S.ClassifierReward(classifier_dir)
    _assert_finite_floats(reward(ODD_STRINGS), len(ODD_STRINGS))
    _assert_finite_floats(reward([]), 0)
    # the reward is the classifier's logit: linear in the L2-normalised mean-pooled embedding
    x = reward.encoder(["a fine film"])
    assert np.linalg.norm(x[0]) == pytest.approx(1.0, abs=1e-5)
    assert reward(["a fine film"])[0] == pytest.approx(float(x[0] @ reward.w + reward.b), abs=1e-5)


def test_classifier_is_trained_once_then_reused_from_the_cache(classifier_dir, cache, monkeypatch):
    metrics = json.loads((classifier_dir / "metrics.json").read_text())
    assert metrics["n_train"] == SMOKE["classifier_max_train"] and 0.0 <= metrics["heldout_accuracy"] <= 1.0
    stamp = (classifier_dir / "weights.json").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the classifier was trained again")
    monkeypatch.setattr(S, "load_reviews", no_training)
    monkeypatch.setattr(S, "MiniLMEncoder", no_training)
    again = S.train_classifier(max_train=SMOKE["classifier_max_train"], cache_dir=cache)
    assert again == classifier_dir and (again / "weights.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("load, defaults", [
    (lambda: S.load_reviews("imdb"), "'rotten_tomatoes'"),
    (lambda: S.make_reward("lvwerra/distilbert-imdb"), "'minilm-logreg', 'vader'"),
    (lambda: S.policy_dir("lvwerra/gpt2-imdb"), "'rt-gpt2', 'smollm2-135m'"),
])
def test_offline_hub_ids_fail_fast_naming_the_offline_defaults(load, defaults):
    t = time.time()
    with pytest.raises(S.OfflineError, match="HF_HUB_OFFLINE is set") as err:
        load()
    assert time.time() - t < 10
    assert f"offline defaults: {defaults}" in str(err.value)


def test_parameter_names_are_checked():
    S.check_name("policy", "rt-gpt2", S.OFFLINE_POLICIES, "causal LM")
    for bad in ["", "two words", 3, None]:
        with pytest.raises(ParameterError, match=r"choose one of \['rt-gpt2', 'smollm2-135m'\] or a hub"):
            S.check_name("policy", bad, S.OFFLINE_POLICIES, "causal LM")
    t = time.time()
    with pytest.raises(S.OfflineError, match="offline defaults: 'minilm-logreg', 'vader'"):
        S.check_name("reward", "lvwerra/distilbert-imdb", S.OFFLINE_REWARDS, "sentiment classifier")
    assert time.time() - t < 10


# ----------------------------------------------------------------------------- data, prompts, sampling
def test_split_is_deterministic_and_holds_out_whole_movies():
    a, b = S.load_rotten_tomatoes(), S.load_rotten_tomatoes()
    pd.testing.assert_frame_equal(a, b)
    assert set(a["category"]) == {"fresh", "rotten", "plot"} and len(a) > 13_000
    train_movies = set(a.loc[a["split"] == "train", "movie"])
    assert not train_movies & set(a.loc[a["split"] == "heldout", "movie"])
    assert 0.12 < (a["split"] == "heldout").mean() < 0.28


@pytest.fixture(scope="module")
def tiny_lm():
    texts = S.load_rotten_tomatoes().query("label >= 0")["text"].head(300)
    tok = S.train_tokenizer(texts, 300)
    return build_gpt2("tiny", tok, n_positions=64, seed=0).eval(), tok, list(texts)


def test_prompts_have_the_asked_lengths_and_are_seeded(tiny_lm):
    _, tok, texts = tiny_lm
    prompts = S.make_prompts(tok, texts, 200, seed=1, prepend_bos=True)
    assert prompts[0]["query"][0] == tok.bos_token_id
    assert {len(p["query"]) - 1 for p in prompts} == set(range(2, 8))
    assert {p["response_length"] for p in prompts} == set(range(4, 16))
    again = S.make_prompts(tok, texts, 200, seed=1, prepend_bos=True)
    assert all(torch.equal(p["query"], q["query"]) for p, q in zip(prompts, again))
    assert tok.decode(prompts[0]["query"][1:]) == prompts[0]["query_text"]


def test_sampling_respects_each_length_and_stops_after_eos(tiny_lm):
    model, tok, texts = tiny_lm
    prompts = S.make_prompts(tok, texts, 40, seed=2)
    lengths = [p["response_length"] for p in prompts]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        responses = S.sample_responses(model, tok, [p["query"] for p in prompts], lengths)
    for r, n in zip(responses, lengths):
        assert 1 <= len(r) <= n
        eos = (r == tok.eos_token_id).nonzero()
        assert len(eos) == 0 or eos[0, 0] == len(r) - 1
        assert tok.pad_token_id not in r.tolist()


def test_left_padded_batch_sampling_matches_one_prompt_at_a_time(tiny_lm):
    # top_k=1 makes sampling deterministic: padding and position ids must not change the tokens
    model, tok, texts = tiny_lm
    prompts = S.make_prompts(tok, texts, 12, seed=4, prepend_bos=True)
    queries, lengths = [p["query"] for p in prompts], [p["response_length"] for p in prompts]
    batched = S.sample_responses(model, tok, queries, lengths, top_k=1)
    for q, n, r in zip(queries, lengths, batched):
        assert torch.equal(S.sample_responses(model, tok, [q], [n], top_k=1)[0], r)


def test_response_nll_matches_a_token_by_token_computation(tiny_lm):
    model, tok, texts = tiny_lm
    prompts = S.make_prompts(tok, texts, 6, seed=3)
    queries = [p["query"] for p in prompts]
    responses = [torch.tensor([5, 6, 7][: 1 + i % 3]) for i in range(6)]
    got = S.response_nll(model, queries, responses, tok.pad_token_id)
    for (nll, n), q, r in zip(got, queries, responses):
        expected = 0.0
        for j in range(len(r)):  # one unpadded forward pass per response token
            logits = model(input_ids=torch.cat([q, r[:j]])[None]).logits[0, -1]
            expected -= torch.log_softmax(logits, -1)[r[j]].item()
        assert n == len(r) and nll == pytest.approx(expected, rel=1e-4, abs=1e-4)


# ----------------------------------------------------------------------------- notebooks
def run_notebook(name, out, **params):
    return pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=params, cwd=str(NOTEBOOKS),
                               progress_bar=False, start_timeout=300)


def test_notebooks_tiny_budget_write_their_files_and_figures(tmp_path, classifier_dir):
    run = tmp_path / "results" / "sentiment" / "s0"
    run_notebook("sentiment.ipynb", tmp_path / "executed.ipynb", output_dir=str(run), **dict(SMOKE, eval_every=1))
    config = json.loads((run / "config.json").read_text())
    assert config["ppo_steps"] == 2 and config["policy"] == "rt-gpt2" and config["top_k"] == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["step"]) == [0, 1, 2]
    assert metrics["heldout_reward_mean"].notna().all() and metrics["reward"].iloc[1:].notna().all()
    assert metrics["kl"].iloc[1:].notna().all() and np.isfinite(metrics["heldout_perplexity"]).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["judge"] == "vader" and summary["before"]["n"] == SMOKE["n_heldout"]
    assert summary["classifier"]["n_train"] == SMOKE["classifier_max_train"]
    samples = pd.read_csv(run / "eval_samples.csv")
    assert len(samples) == SMOKE["n_heldout"] and {"reward_before", "reward_after", "response_after"} <= set(samples)
    assert (run / "run.png").exists() and not (run / "metrics.partial.csv").exists()

    figures = tmp_path / "figures"
    run_notebook("sentiment_figures.ipynb", tmp_path / "figures.ipynb", results_dir=str(run.parent),
                 figures_dir=str(figures), profile="smoke")
    for name in ["reward", "kl", "distributions", "judge_perplexity"]:
        assert (figures / f"sentiment_{name}.png").exists() and (figures / f"sentiment_{name}.pdf").exists()
    table = pd.read_csv(tmp_path / "results" / "sentiment_summary.csv")
    assert len(table) == 1 and table["seeds"].iloc[0] == 1
    assert "mean reward before" in (tmp_path / "results" / "sentiment_summary.md").read_text()


@pytest.mark.parametrize("params, message", [
    (dict(kl_mode="none"), r"kl_mode='none' is not allowed; choose one of \['frozen', 'policy'\]"),
    (dict(reward="two words"), r"reward='two words' is not allowed; choose one of \['minilm-logreg', 'vader'\] or a hub"),
    (dict(policy="lvwerra/gpt2-imdb"), r"not in the local cache.*offline defaults: 'rt-gpt2', 'smollm2-135m'"),
    (dict(response_max_tokens=2), r"response_max_tokens=2 must be an integer in \[4, 256\]"),
])
def test_bad_parameters_stop_in_the_first_cells(tmp_path, params, message):
    out = tmp_path / "run"
    with pytest.raises(pm.PapermillExecutionError, match=message) as err:
        run_notebook("sentiment.ipynb", tmp_path / "executed.ipynb", output_dir=str(out), **dict(SMOKE, **params))
    assert err.value.exec_count <= 3  # the parameter-check cell, before any work
    assert not out.exists()
