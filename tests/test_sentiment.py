"""Sentiment alignment: rewards that never fail, the cached classifier, offline hub ids, prompts and
sampling, fluency measures against hand-worked values, eval mode under dropout, the LoRA policy and
its adapter-disabled reference, and the real notebooks through papermill with a tiny budget."""
import json
import math
import re
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import papermill as pm
import pytest
import torch

from rlformal_utils import sentiment as S
from rlformal_utils.sentiment import plots
from rlformal_utils.sentiment import reward as reward_module
from rlformal_utils.pretrain import build_gpt2
from rlformal_utils.runner import sentiment_runs
from rlformal_utils.runs import ParameterError

matplotlib.use("Agg")
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
    monkeypatch.setattr(reward_module, "load_reviews", no_training)
    monkeypatch.setattr(reward_module, "MiniLMEncoder", no_training)
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


# ----------------------------------------------------------------------------- fluency
def test_distinct_n_and_repetition_match_hand_worked_values():
    texts = ["A great, great film!", "a great cast", "", "..."]
    # words: [a great great film] [a great cast]; 1-grams: 7, distinct {a, great, film, cast} = 4
    assert S.distinct_n(texts, 1) == pytest.approx(4 / 7)
    # 2-grams: (a great) (great great) (great film) (a great) (great cast): 5, distinct 4
    assert S.distinct_n(texts, 2) == pytest.approx(4 / 5)
    # 3-grams: (a great great) (great great film) (a great cast): all distinct
    assert S.distinct_n(texts, 3) == 1.0
    assert math.isnan(S.distinct_n(["one", ""], 2))
    # repetition: "a great great film" 1 repeat of 4 words, "a great cast" 0 of 3; texts without words skipped
    assert S.repetition(texts) == pytest.approx((1 / 4 + 0) / 2)
    assert S.repetition(["great great great film"]) == pytest.approx(2 / 4)
    assert S.words("Don't STOP -- it's 2 good") == ["don't", "stop", "it's", "2", "good"]


def test_perplexity_matches_the_language_model_loss(tiny_lm):
    # independent computation: the model's own cross-entropy with labels on the response tokens only
    model, tok, texts = tiny_lm
    prompts = S.make_prompts(tok, texts, 5, seed=6)
    queries = [p["query"] for p in prompts]
    responses = [torch.tensor([9, 8, 7, 6][: 1 + i % 4]) for i in range(5)]
    total, count = 0.0, 0
    for q, r in zip(queries, responses):
        ids = torch.cat([q, r])[None]
        labels = ids.clone()
        labels[0, : len(q)] = -100
        with torch.no_grad():
            total += model(input_ids=ids, labels=labels).loss.item() * len(r)
        count += len(r)
    got = S.perplexity(S.response_nll(model, queries, responses, tok.pad_token_id))
    assert got == pytest.approx(math.exp(total / count), rel=1e-4)


def test_review_likeness_is_the_mean_of_the_k_nearest_cosine_similarities():
    class Encoder:  # unit vectors in 2-d: text "x" at angle x degrees
        def __call__(self, texts, progress=False):
            a = np.radians([float(t) for t in texts])
            return np.stack([np.cos(a), np.sin(a)], axis=1) if len(a) else np.zeros((0, 2))
    like = S.ReviewLikeness(Encoder(), ["0", "90", "180"], k=2)
    # text at 0 degrees: similarities 1, 0, -1 -> the two nearest average 0.5
    assert like(["0"])[0] == pytest.approx(0.5)
    # at 45 degrees: cos 45 = 0.7071 to both 0 and 90
    assert like(["45"])[0] == pytest.approx(math.cos(math.radians(45)))


# ----------------------------------------------------------------------------- eval mode and dropout
class LengthReward:
    """A deterministic stand-in reward: the number of characters."""
    name, threshold = "length", 0.0

    def __call__(self, texts):
        return [float(len(t)) for t in texts]


def test_evaluation_runs_in_eval_mode_and_leaves_the_model_in_train_mode(tiny_lm):
    from transformers import GPT2Config, GPT2LMHeadModel
    _, tok, texts = tiny_lm
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.5,
                        embd_pdrop=0.5, attn_pdrop=0.5, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).train()  # large dropout, in train mode as trl's step() leaves it
    prompts = S.make_prompts(tok, texts, 16, seed=5, prepend_bos=True)
    reward = LengthReward()

    def run():
        return S.evaluate(model, model, tok, prompts, reward, reward, seed=3)
    first, second = run(), run()
    assert model.training and all(m.training for m in model.modules())  # the mode it found
    pd.testing.assert_frame_equal(first, second)  # no dropout noise: twice the same
    model.eval()
    expected = run()
    pd.testing.assert_frame_equal(first, expected)  # the eval-mode numbers
    assert not model.training
    # with dropout on, the NLL of the same responses would differ
    model.train()
    with torch.no_grad():
        q, r = prompts[0]["query"], torch.tensor([5, 6, 7])
        ids = torch.cat([q, r])[None]
        noisy = [model(input_ids=ids).logits.sum().item() for _ in range(2)]
    assert noisy[0] != noisy[1]


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, tiny_lm):
    """A randomly initialised 2-layer Llama with the tiny tokenizer: the LoRA path without a download."""
    from transformers import LlamaConfig, LlamaForCausalLM
    _, tok, _ = tiny_lm
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attention_dropout=0.3, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_lora_policy_trains_adapters_only_and_its_reference_is_the_adapter_disabled_base(tiny_llama_dir, tiny_lm):
    from transformers import AutoModelForCausalLM
    _, tok, texts = tiny_lm
    tok = S.load_tokenizer(tiny_llama_dir)
    trainer = S.make_policy_trainer(tiny_llama_dir, tok, lora_rank=4, learning_rate=1e-2, batch_size=4,
                                    mini_batch_size=2, ppo_epochs=1, kl_coef=0.2, seed=0)
    assert trainer.is_peft_model and trainer.ref_model is None  # one model in memory
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "v_head" in n for n in names)
    for layer in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f"{layer}.lora_A" in n for n in names), layer  # all linear layers
    dropouts = [m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p == 0.0 for p in dropouts)  # value head included
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in trainer.model.modules())

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    prompts = S.make_prompts(tok, texts, 4, seed=7, prepend_bos=True)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        responses = S.sample_responses(trainer.model.pretrained_model, tok, [p["query"] for p in prompts],
                                       [4] * 4)
    stats = trainer.step([p["query"] for p in prompts], responses, [torch.tensor(float(i)) for i in range(4)])
    assert math.isfinite(stats["objective/kl"]) and trainer.model.training  # trl leaves train mode
    policy = trainer.model.pretrained_model
    ids = torch.cat([prompts[0]["query"], responses[0]])[None]
    with torch.no_grad():
        adapted = policy(input_ids=ids).logits
        with trainer.optional_peft_ctx():  # what trl uses for the reference log-probs
            reference = policy(input_ids=ids).logits
        untouched = base(input_ids=ids).logits
    assert not torch.allclose(adapted, untouched, atol=1e-5)  # the update moved the adapter
    torch.testing.assert_close(reference, untouched, atol=1e-5, rtol=1e-5)  # base weights frozen
    # the evaluation's perplexity uses the same adapter-disabled base when reference is None
    df = S.evaluate(policy, None, tok, prompts, LengthReward(), LengthReward(), seed=0)
    resp = [torch.tensor(tok.encode(r, add_special_tokens=False)) for r in df["response"]]
    assert trainer.model.training  # evaluation restored the mode
    df_ref = S.evaluate(policy, base, tok, prompts, LengthReward(), LengthReward(), seed=0)
    np.testing.assert_allclose(df["response_nll"], df_ref["response_nll"], rtol=1e-4, atol=1e-4)
    assert len(resp) == 4


@pytest.mark.parametrize("args, message", [
    (("smollm2-135m", 3, "frozen", 0.1), r"lora_rank=3 is not allowed; choose one of \[0, 1, 2, 4, 8, 16, 32, 64, 128\]"),
    (("smollm2-135m", 16, "frozen", -0.1), r"kl_coef=-0.1 must be a number in \[0, 10\]"),
    (("smollm2-135m", 16, "frozen", 11), r"kl_coef=11 must be a number in \[0, 10\]"),
    (("smollm2-135m", 16, "policy", 0.1), r"kl_mode='policy' is not allowed with lora_rank > 0"),
    (("nonsense policy", 16, "frozen", 0.1), r"policy='nonsense policy' is not allowed; choose one of \['rt-gpt2', 'smollm2-135m'\]"),
])
def test_policy_parameters_are_checked(args, message):
    with pytest.raises(ParameterError, match=message):
        S.check_policy(*args)
    S.check_policy("smollm2-135m", 16, "frozen", 0.1, "chat")  # the defaults pass
    with pytest.raises(ParameterError, match=r"prompt_format='chat' is not allowed for policy='rt-gpt2'; choose one of \['plain', 'instruction'\]"):
        S.check_policy("rt-gpt2", 0, "frozen", 0.1, "chat")


def test_prompt_formats_put_the_review_start_last_and_the_reward_reads_only_the_review(tiny_lm):
    _, tok, texts = tiny_lm
    prefix = S.prompt_prefix(tok, "instruction")
    assert tok.decode(prefix) == S.INSTRUCTION + "\n"
    prompts = S.make_prompts(tok, texts, 3, seed=8, prefix=prefix)
    for p in prompts:
        assert p["query"][: len(prefix)].tolist() == prefix and torch.equal(p["query"][len(prefix):], p["review"])
    full, resp = S.decode_pairs(tok, [p["review"] for p in prompts], [torch.tensor([5, 6])] * 3)
    assert all(S.INSTRUCTION not in f and f.startswith(p["query_text"]) for f, p in zip(full, prompts))
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        S.prompt_prefix(tok, "chat")


# ----------------------------------------------------------------------------- notebooks
def run_notebook(name, out, **params):
    return pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=params, cwd=str(NOTEBOOKS),
                               progress_bar=False, start_timeout=300)


def test_notebooks_tiny_budget_write_their_files_and_figures(tmp_path, classifier_dir):
    results = tmp_path / "results" / "sentiment"
    run = results / "s0"
    run_notebook("sentiment.ipynb", tmp_path / "executed.ipynb", output_dir=str(run),
                 **dict(SMOKE, eval_every=1, format_probe_prompts=4))
    config = json.loads((run / "config.json").read_text())
    assert config["ppo_steps"] == 2 and config["policy"] == "rt-gpt2" and config["top_k"] == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["step"]) == [0, 1, 2]
    assert metrics["heldout_reward_mean"].notna().all() and metrics["reward"].iloc[1:].notna().all()
    assert metrics["kl"].iloc[1:].notna().all() and np.isfinite(metrics["heldout_perplexity"]).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["judge"] == "vader" and summary["before"]["n"] == SMOKE["n_heldout"]
    assert summary["classifier"]["n_train"] == SMOKE["classifier_max_train"]
    assert set(summary["format_probe"]) == {"plain", "instruction"}  # rt-gpt2's tokenizer has no chat template
    samples = pd.read_csv(run / "eval_samples.csv")
    assert len(samples) == SMOKE["n_heldout"] and {"reward_before", "reward_after", "response_after"} <= set(samples)
    # the summary's numbers are those of the saved samples
    assert summary["after"]["reward_mean"] == pytest.approx(samples["reward_after"].mean())
    assert summary["after"]["distinct_2"] == pytest.approx(S.distinct_n(samples["response_after"].fillna(""), 2))
    assert (run / "run.png").exists() and not (run / "metrics.partial.csv").exists()
    outputs = json.dumps([c.get("outputs", []) for c in json.loads((tmp_path / "executed.ipynb").read_text())["cells"]])
    assert not re.search(r"(?<!\.\.)" + re.escape(str(tmp_path)), outputs)  # only relative paths are shown
    assert "IProgress not found" not in outputs

    # a second KL coefficient, so that the sweep figure has something to draw
    run_notebook("sentiment.ipynb", tmp_path / "executed2.ipynb", output_dir=str(results / "s0-kl0"),
                 **dict(SMOKE, kl_coef=0.0, ppo_steps=1))
    figures = tmp_path / "figures"
    run_notebook("sentiment_figures.ipynb", tmp_path / "figures.ipynb", results_dir=str(results),
                 figures_dir=str(figures), profile="smoke")
    for name in ["reward", "kl", "distributions", "judge_perplexity", "kl_sweep", "tradeoff"]:
        assert (figures / f"sentiment_{name}.png").exists() and (figures / f"sentiment_{name}.pdf").exists()
    runs = pd.read_csv(tmp_path / "results" / "sentiment_runs.csv")
    required = ["policy", "kl_coef", "seed", "steps", "reward_before", "reward_after", "judge_positive_before",
                "judge_positive_after", "perplexity_before", "perplexity_after", "wall_seconds"]
    assert set(required) <= set(runs) and len(runs) == 2
    assert sorted(runs["kl_coef"]) == [0.0, 0.2] and sorted(runs["steps"]) == [1, 2]
    row = runs[runs["kl_coef"] == 0.2].iloc[0]
    assert row["reward_after"] == pytest.approx(summary["after"]["reward_mean"], rel=1e-5)
    assert row["perplexity_ratio"] == pytest.approx(summary["after"]["perplexity"] / summary["before"]["perplexity"], rel=1e-4)
    table = pd.read_csv(tmp_path / "results" / "sentiment_summary.csv")
    assert len(table) == 2 and set(table["seeds"]) == {1}
    assert "mean reward before" in (tmp_path / "results" / "sentiment_summary.md").read_text()
    assert "response_after" in (tmp_path / "results" / "sentiment_examples.md").read_text()


@pytest.mark.parametrize("params, message", [
    (dict(kl_mode="none"), r"kl_mode='none' is not allowed; choose one of \['frozen', 'policy'\]"),
    (dict(reward="two words"), r"reward='two words' is not allowed; choose one of \['minilm-logreg', 'vader'\] or a hub"),
    (dict(policy="lvwerra/gpt2-imdb"), r"not in the local cache.*offline defaults: 'rt-gpt2', 'smollm2-135m'"),
    (dict(response_max_tokens=2), r"response_max_tokens=2 must be an integer in \[4, 256\]"),
    (dict(policy="smollm2-135m", lora_rank=5), r"lora_rank=5 is not allowed; choose one of \[0, 1, 2, 4, 8, 16"),
    (dict(kl_coef=50.0), r"kl_coef=50.0 must be a number in \[0, 10\]"),
    (dict(prompt_format="poem"), r"prompt_format='poem' is not allowed for policy='rt-gpt2'; choose one of \['plain', 'instruction'\]"),
])
def test_bad_parameters_stop_in_the_first_cells(tmp_path, params, message):
    out = tmp_path / "run"
    with pytest.raises(pm.PapermillExecutionError, match=message) as err:
        run_notebook("sentiment.ipynb", tmp_path / "executed.ipynb", output_dir=str(out), **dict(SMOKE, **params))
    assert err.value.exec_count <= 3  # the parameter-check cell, before any work
    assert not out.exists()


def test_source_notebooks_are_committed_without_outputs():
    for name in ("sentiment.ipynb", "sentiment_figures.ipynb"):
        nb = json.loads((NOTEBOOKS / name).read_text())
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb["cells"] if c["cell_type"] == "code"), name


def test_quick_profile_runs_the_lora_policy_with_three_seeds_and_a_kl_sweep():
    from rlformal_utils.runner import sentiment_runs as runs_of
    quick = runs_of("quick")
    main = [r for r in quick if r.params["kl_coef"] == quick[0].params["kl_coef"]]
    assert all(r.params["policy"] == "smollm2-135m" and r.params["lora_rank"] == 16 for r in quick)
    assert len({r.params["seed"] for r in main}) >= 3 and len({r.params["kl_coef"] for r in quick}) >= 3
    assert len({r.name for r in quick}) == len(quick)


def test_short_labels_keep_what_differs():
    short, common = plots.short_labels(["p, reward r, KL 0", "p, reward r, KL 0.2 adaptive", "p, reward v, KL 0"])
    assert short == {"p, reward r, KL 0": "reward r, KL 0", "p, reward r, KL 0.2 adaptive": "reward r, KL 0.2 adaptive",
                     "p, reward v, KL 0": "reward v, KL 0"} and common == "p"
    assert plots.short_labels(["p, KL 0"]) == ({"p, KL 0": "p, KL 0"}, "")


def _runs_and_table():
    """Two rewards of different scales, two KL coefficients, two seeds each."""
    rows = []
    for reward, judge, scale in [("minilm-logreg", "vader", 3.0), ("vader", "minilm-logreg", 0.3)]:
        for kl in (0.0, 0.2):
            for seed in (0, 1):
                after = scale * (2 - 4 * kl) + 0.1 * seed
                rows.append(dict(run=f"{reward}_{kl}_{seed}", setting=f"p, reward {reward}, KL {kl:g}", seed=seed,
                                 reward_name=reward, judge_name=judge, policy="p", lora_rank=16,
                                 prompt_format="plain", kl_coef=kl, adaptive_kl=False, steps=4, batch_size=4,
                                 ppo_epochs=1, ppo_lr=1e-3, train_seconds=1.0, seconds_per_step=0.25,
                                 notebook_seconds=60.0 + seed, final_kl=1.0, real_review_similarity=0.44,
                                 classifier_heldout_accuracy=0.7, before_n=8, before_reward_mean=0.1 * scale,
                                 after_reward_mean=after, before_judge_positive_share=0.4,
                                 after_judge_positive_share=0.5 + 0.4 * (kl == 0) + 0.05 * seed,
                                 before_perplexity=40.0, after_perplexity=40.0 * (1.2 + 4 * (kl == 0)),
                                 before_review_similarity=0.4, after_review_similarity=0.41,
                                 before_distinct_2=0.9, after_distinct_2=0.8, before_repetition=0.0,
                                 after_repetition=0.1, before_reward_median=0.0, after_reward_median=after,
                                 before_reward_positive_share=0.5, after_reward_positive_share=0.9))
    runs = pd.DataFrame(rows)
    return runs, plots.runs_table(runs)


def test_rewards_of_different_scales_never_share_an_axis():
    runs, table = _runs_and_table()
    fig = plots.fig_judge_perplexity(runs)
    reward_axes = [a for a in fig.axes if a.get_title().startswith("held-out mean reward")]
    assert len(reward_axes) == 2  # one panel per reward
    for a, reward in zip(reward_axes, ["minilm-logreg", "vader"]):
        heights = sorted(round(p.get_height(), 6) for p in a.patches)
        expected = runs[runs["reward_name"] == reward].groupby("setting")[["before_reward_mean", "after_reward_mean"]]
        assert reward in a.get_title() and heights == sorted(round(v, 6) for v in expected.mean().to_numpy().ravel())
    sweep = plots.fig_kl_sweep(table, dict(zip(runs["reward_name"], runs["judge_name"])))
    gains = [a for a in sweep.axes if a.get_ylabel().startswith("held-out reward gain")]
    assert [a.get_ylabel().split("(")[1] for a in gains] == ["minilm-logreg)", "vader)"]
    tradeoff = plots.fig_tradeoff(table)
    assert sorted(a.get_xlabel() for a in tradeoff.axes) == ["held-out reward gain (minilm-logreg)"] * 2 + \
        ["held-out reward gain (vader)"] * 2


def test_summary_and_findings_use_the_sample_sd_over_seeds():
    runs, table = _runs_and_table()
    summary = plots.summary_table(runs).set_index("setting")
    # seeds 0 and 1 after KL 0, classifier reward: 6.0 and 6.1 -> mean 6.05, sample sd 0.0707 (population: 0.05)
    assert summary.loc["p, reward minilm-logreg, KL 0", "mean reward after"] == "6.05 ± 0.07"
    assert summary.loc["p, reward minilm-logreg, KL 0", "minutes / run"] == "1.0 ± 0.0"
    text = plots.findings(table)
    line = next(l for l in text.splitlines() if "reward minilm-logreg, KL 0 " in l)
    assert "reward gain +5.75 ± 0.07 (target >= 2: 2/2 seeds)" in line
    assert "judge positive share 0.93 ± 0.04 (target >= 0.8: 2/2 seeds)" in line
    assert "perplexity ratio 5.20 (target <= 1.5: 0/2 seeds)" not in line and "perplexity ratio 5.20 ± 0.00" in line
    assert "target" not in next(l for l in text.splitlines() if "reward vader, KL 0.2" in l)  # no targets for VADER
