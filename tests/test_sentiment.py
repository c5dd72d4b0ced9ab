"""Sentiment alignment: rewards that never fail, the cached classifier, offline hub ids, the declared
parameters and their rules, prompts and sampling, fluency measures against hand-worked values, eval
mode under dropout, the LoRA policy and its adapter-disabled reference, the run's report and the
figures' rules (the notebooks themselves: test_sentiment_notebooks.py)."""
import json
import math
import time

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from rlformal_utils import sentiment as S
from rlformal_utils.params import defaults
from rlformal_utils.pretrain import build_gpt2, train_bpe_tokenizer
from rlformal_utils.pretrained import OfflineError, check_hub_name, load_tokenizer
from rlformal_utils.sentiment.grid import runs as sentiment_runs
from rlformal_utils.runs import ParameterError
from rlformal_utils.sentiment import params as P
from rlformal_utils.sentiment import plots
from rlformal_utils.sentiment import reward as reward_module

matplotlib.use("Agg")
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


def test_length_sorted_batches_give_each_text_its_own_embedding(classifier_dir):
    """Batches of length-sorted texts come back in input order, equal to embedding each text alone."""
    encoder = S.ClassifierReward(classifier_dir).encoder
    texts = ["a fine film", "", "the plot is thin but the acting, the music and the camera work are superb",
             "dull", None, "a fine film", "it drags"]
    together = encoder(texts, batch_size=3)
    alone = np.concatenate([encoder([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.abs(together[0] - together[2]).max() > 1e-2  # different texts, different rows
    assert encoder([]).shape == (0, 384)


def test_classifier_is_trained_once_then_reused_from_the_cache(classifier_dir, cache, monkeypatch):
    metrics = json.loads((classifier_dir / "metrics.json").read_text())
    assert metrics["n_train"] == SMOKE["classifier_max_train"]
    # the stored held-out accuracy is that of the stored weights on the held-out sample it was measured on
    labelled = S.load_reviews().query("label >= 0")
    held = labelled[labelled["split"] == "heldout"].sample(n=metrics["n_heldout"], random_state=0)
    reward = S.ClassifierReward(classifier_dir)
    predicted = np.asarray(reward(held["text"])) > 0
    assert metrics["heldout_accuracy"] == pytest.approx((predicted == (held["label"] == 1)).mean())
    stamp = (classifier_dir / "weights.json").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the classifier was trained again")
    monkeypatch.setattr(reward_module, "load_reviews", no_training)
    monkeypatch.setattr(reward_module, "MiniLMEncoder", no_training)
    again = S.train_classifier(max_train=SMOKE["classifier_max_train"], cache_dir=cache)
    assert again == classifier_dir and (again / "weights.json").stat().st_mtime_ns == stamp


def test_shared_embeddings_equal_the_encoders_and_parallel_runs_share_out_the_parts(classifier_dir, tmp_path):
    import fcntl
    import threading
    from rlformal_utils.runs import cache_path, is_cached
    encoder = S.ClassifierReward(classifier_dir).encoder
    texts = S.load_reviews()["text"].head(300).tolist()  # 3 batches of 128, so 3 parts
    expected = encoder(texts)
    alone = reward_module.shared_embeddings(encoder, texts, {"t": 1}, tmp_path, parts=3)
    np.testing.assert_array_equal(alone, expected)  # the same batches, so the same numbers

    key = {"t": 2}
    parts = [cache_path("minilm-embeddings", dict(key, n=300, part=i, parts=3, version=1), tmp_path) for i in range(3)]
    parts[0].parent.mkdir(parents=True, exist_ok=True)
    result = {}
    with open(parts[0].parent / f"{parts[0].name}.lock", "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX)  # another run is embedding part 0
        run = threading.Thread(target=lambda: result.update(
            x=reward_module.shared_embeddings(encoder, texts, key, tmp_path, parts=3)))
        run.start()
        deadline = time.time() + 60
        while not (is_cached(parts[1]) and is_cached(parts[2])) and time.time() < deadline:
            time.sleep(0.05)
        assert is_cached(parts[1]) and is_cached(parts[2])  # it took the free parts first
        time.sleep(0.3)
        assert run.is_alive() and not is_cached(parts[0])  # and then waits for part 0
    run.join(60)  # the other run gave up part 0 unfinished: this one embeds it
    assert is_cached(parts[0])
    np.testing.assert_array_equal(result["x"], expected)


def test_classifier_gives_no_weight_to_embedding_dimensions_that_never_move(classifier_dir):
    """Three MiniLM dimensions stay within ~1e-8 of zero on every text; standardised, they got weights
    up to 1e31 and moved the reward by up to 1.5 logits (before this test)."""
    reward = S.ClassifierReward(classifier_dir)
    x = reward.encoder(S.load_reviews()["text"].head(500))
    still = np.abs(x).max(axis=0) < 1e-6
    assert still.sum() >= 1 and np.all(reward.w[still] == 0)
    assert np.abs(reward.w).max() < 1e3
    assert json.loads((classifier_dir / "metrics.json").read_text())["features"] == 384 - still.sum()


@pytest.mark.parametrize("load, defaults", [
    (lambda: S.load_reviews("imdb"), "'rotten_tomatoes'"),
    (lambda: S.make_reward("lvwerra/distilbert-imdb"), "'minilm-logreg', 'vader'"),
    (lambda: S.policy_dir("lvwerra/gpt2-imdb"), "'rt-gpt2', 'smollm2-135m'"),
])
def test_offline_hub_ids_fail_fast_naming_the_offline_defaults(load, defaults):
    t = time.time()
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE is set") as err:
        load()
    assert time.time() - t < 10
    assert f"offline defaults: {defaults}" in str(err.value)


def test_parameter_names_are_checked():
    check_hub_name("policy", "rt-gpt2", S.OFFLINE_POLICIES, "causal LM")
    for bad in ["", "two words", 3, None]:
        with pytest.raises(ParameterError, match=r"is not allowed: it must be one of \['rt-gpt2', 'smollm2-135m'\] "
                                                 r"or a hub causal LM id"):
            check_hub_name("policy", bad, S.OFFLINE_POLICIES, "causal LM")
    t = time.time()
    with pytest.raises(OfflineError, match="offline defaults: 'minilm-logreg', 'vader'"):
        check_hub_name("reward", "lvwerra/distilbert-imdb", S.OFFLINE_REWARDS, "sentiment classifier")
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
    tok = train_bpe_tokenizer(texts, 300, padding_side_in_config=True)
    return build_gpt2("tiny", tok, n_positions=64, seed=0).eval(), tok, list(texts)


def test_rt_gpt2_tokenizer_files_are_those_of_the_cached_policy(tmp_path):
    """The rt-gpt2 cache key does not hash the tokenizer code: a changed tokenizer would sit beside
    old cached models. Vocabulary and merges are pinned (sha256 of the former sentiment trainer's,
    on the same texts), and the saved config keeps its padding side and no extra special tokens."""
    import hashlib
    df = S.load_rotten_tomatoes()
    tok = train_bpe_tokenizer(df.loc[df["split"] == "train", "text"].head(300), 300, padding_side_in_config=True)
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    digest = hashlib.sha256(json.dumps([model["vocab"], model["merges"]], sort_keys=True).encode()).hexdigest()
    assert digest[:16] == "6e0452d3305d991b"
    tok.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert saved == {"backend": "tokenizers", "bos_token": "[BOS]", "eos_token": "[EOS]", "pad_token": "[PAD]",
                     "padding_side": "right", "model_max_length": saved["model_max_length"],
                     "tokenizer_class": "TokenizersBackend"}
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)


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


@pytest.mark.parametrize("batch_size", [64, 2])  # one batch; several, sorted by length
def test_response_nll_matches_a_token_by_token_computation(tiny_lm, batch_size):
    model, tok, texts = tiny_lm
    prompts = S.make_prompts(tok, texts, 6, seed=3)
    queries = [p["query"] for p in prompts]
    responses = [torch.tensor([5, 6, 7][: 1 + i % 3]) for i in range(6)]
    got = S.response_nll(model, queries, responses, tok.pad_token_id, batch_size=batch_size)
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
    tok = load_tokenizer(tiny_llama_dir)
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
    assert trainer.model.training  # evaluation restored the mode
    df_ref = S.evaluate(policy, base, tok, prompts, LengthReward(), LengthReward(), seed=0)
    np.testing.assert_allclose(df["response_nll"], df_ref["response_nll"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_lean_forward_passes_give_trls_numbers(tiny_llama_dir, tiny_lm, padding_side):
    """The sentiment trainer's lean forward passes (logits only where a response token is predicted,
    no-grad passes in one chunk, the policy's log-probs and values read off the sampling pass)
    against trl 0.11.4's own batched_forward_pass and step, on a LoRA policy."""
    _, _, texts = tiny_lm
    tok = load_tokenizer(tiny_llama_dir)
    tok.padding_side = padding_side  # trl pads query + response on this side

    def trainer(lean):
        return S.make_policy_trainer(tiny_llama_dir, tok, lora_rank=4, learning_rate=1e-2, batch_size=6,
                                     mini_batch_size=2, ppo_epochs=1, kl_coef=0.2, seed=0, lean_forward=lean)
    lean, plain = trainer(True), trainer(False)
    prompts = S.make_prompts(tok, texts, 6, seed=7, prompt_min=2, prompt_max=7, prepend_bos=True)
    queries = [p["query"] for p in prompts]
    assert len({len(q) for q in queries}) > 1  # ragged, so padding matters
    torch.manual_seed(1)
    responses, logprobs, hidden = S.sample_responses(lean.model.pretrained_model, tok, queries, [3, 6, 4, 5, 2, 6],
                                                     rollout=True)
    inputs = plain.prepare_model_inputs(queries, responses)

    def masked(out):
        m = out[3].bool()
        return out[0][m], out[2][m]
    with torch.no_grad():
        want = plain.batched_forward_pass(plain.model, queries, responses, inputs)
        got = lean.batched_forward_pass(lean.model, queries, responses, inputs)
        assert torch.equal(got[3], want[3]) and want[3].sum() == sum(len(r) for r in responses)
        for a, b in zip(masked(got), masked(want)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        lean.rollout = (logprobs, hidden)  # read off sampling, token by token with a KV cache
        read_off = lean.batched_forward_pass(lean.model, queries, responses, inputs)
        assert lean.rollout is None  # used once
        for a, b in zip(masked(read_off), masked(want)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        with plain.optional_peft_ctx():  # the reference: the adapter-disabled base
            want_ref = plain.batched_forward_pass(plain.model, queries, responses, inputs)
        with lean.optional_peft_ctx():
            got_ref = lean.batched_forward_pass(lean.model, queries, responses, inputs)
        torch.testing.assert_close(masked(got_ref)[0], masked(want_ref)[0], atol=1e-6, rtol=1e-6)

    # with gradients, on a mini-batch: the logits where they count, and the gradients
    mini = {k: v[:2] for k, v in inputs.items()}
    outs = [t.batched_forward_pass(t.model, queries[:2], responses[:2], mini, return_logits=True) for t in (plain, lean)]
    m = outs[0][3].bool()
    torch.testing.assert_close(outs[1][1][m], outs[0][1][m], atol=1e-5, rtol=1e-5)
    grads = []
    for t, (lp, logits, values, mask) in zip((plain, lean), outs):
        t.model.zero_grad()
        ((lp * mask).sum() + (values * mask).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)

    # a whole PPO step, the lean one reading the policy's numbers off sampling
    for t in (plain, lean):
        t.model.zero_grad()
    scores = [torch.tensor(float(i) - 2.5) for i in range(6)]
    stats = []
    for t in (plain, lean):
        t.rollout = (logprobs, hidden) if t is lean else None
        np.random.seed(5)  # trl's mini-batch order
        stats.append(t.step(queries, responses, scores))
    for key in ("objective/kl", "ppo/loss/policy", "ppo/loss/value", "ppo/policy/approxkl", "ppo/returns/mean"):
        np.testing.assert_allclose(stats[1][key], stats[0][key], rtol=1e-4, atol=1e-5, err_msg=key)
    after = [dict(t.model.named_parameters()) for t in (plain, lean)]
    for name, p in after[0].items():
        if "lora_" in name:
            torch.testing.assert_close(after[1][name], p, atol=1e-5, rtol=1e-4)


def test_a_fresh_lora_adapter_leaves_the_held_out_evaluation_unchanged(tiny_llama_dir, tiny_lm):
    """The premise of caching the 'before' evaluation across RL seeds: whatever the seed (LoRA and
    value-head init), the untrained LoRA policy samples and scores exactly as the base model."""
    from transformers import AutoModelForCausalLM
    _, tok, texts = tiny_lm
    tok = load_tokenizer(tiny_llama_dir)
    prompts = S.make_prompts(tok, texts, 6, seed=3, prepend_bos=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    expected = S.evaluate(base, base, tok, prompts, LengthReward(), LengthReward(), seed=0)
    for seed in (0, 1):
        trainer = S.make_policy_trainer(tiny_llama_dir, tok, lora_rank=4, learning_rate=1e-2, batch_size=4,
                                        mini_batch_size=2, ppo_epochs=1, kl_coef=0.2, seed=seed)
        got = S.evaluate(trainer.model.pretrained_model, None, tok, prompts, LengthReward(), LengthReward(), seed=0)
        pd.testing.assert_frame_equal(got, expected)


def test_the_before_evaluation_is_computed_once_per_configuration(tmp_path):
    calls = []

    def evaluate_fn():
        calls.append(1)
        return pd.DataFrame(dict(prompt=["a", 'b "quoted",\nline'], reward=[0.1 + 0.2, -1e-17]))

    config = P.check(defaults(P.PARAMS))
    first = S.evaluate_before(config, evaluate_fn, tmp_path)
    again = S.evaluate_before(dict(config, seed=5, kl_coef=0.0, ppo_steps=3), evaluate_fn, tmp_path)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(again, first)  # bit for bit, text included
    assert first["reward"][0] == 0.1 + 0.2
    S.evaluate_before(dict(config, n_heldout=7), evaluate_fn, tmp_path)  # other prompts: evaluated anew
    S.evaluate_before(dict(config, lora_rank=0), evaluate_fn, tmp_path)  # another policy: anew
    assert len(calls) == 3


def test_the_declaration_checks_each_value_and_the_rules_between_them():
    good = defaults(P.PARAMS)
    assert P.check(good)["lora_rank"] == 16 and "output_dir" not in P.check(good)
    P.check(dict(good, prompt_format="chat"))  # SmolLM2 has a chat template
    for bad, message in [
        (dict(lora_rank=3), r"lora_rank=3 is not allowed: it must be one of \[0, 1, 2, 4, 8, 16, 32, 64, 128\]"),
        (dict(lora_rank=True), r"lora_rank=True is not allowed"),  # True == 1, but not a rank
        (dict(kl_coef=-0.1), r"kl_coef=-0.1 is not allowed: it must be a number in \[0.0, 10.0\]"),
        (dict(kl_coef=11), r"kl_coef=11 is not allowed: it must be a number in \[0.0, 10.0\]"),
        (dict(kl_mode="policy"), r"kl_mode='policy' is not allowed with lora_rank > 0"),
        (dict(policy="nonsense policy"), r"policy='nonsense policy' is not allowed: it must be one of "
                                         r"\['rt-gpt2', 'smollm2-135m'\] or a hub causal LM id"),
        (dict(policy="rt-gpt2", prompt_format="chat"),
         r"prompt_format='chat' is not allowed for policy='rt-gpt2'; choose one of \['plain', 'instruction'\]"),
        (dict(judge="minilm-logreg"), r"judge='minilm-logreg' must differ from reward='minilm-logreg'"),
        (dict(ppo_batch_size=16, ppo_mini_batch_size=6), r"ppo_mini_batch_size=6 must divide ppo_batch_size=16"),
        (dict(ppo_batch_size=4, ppo_mini_batch_size=8), r"ppo_mini_batch_size=8 must divide ppo_batch_size=4"),
        (dict(prompt_min_tokens=5, prompt_max_tokens=3), r"prompt_max_tokens=3 is not allowed: it must be an "
                                                         r"integer in \[5, 64\]"),
        (dict(response_max_tokens=2), r"response_max_tokens=2 is not allowed: it must be an integer in \[4, 256\]"),
        (dict(likeness_bank=4, likeness_k=5), r"likeness_k=5 is not allowed: it must be an integer in \[1, 4\]"),
        (dict(heldout_fraction=0.95), r"heldout_fraction=0.95 is not allowed: it must be a number in \[0.01, 0.9\]"),
        (dict(top_p=0.0), r"top_p=0.0 is not allowed"), (dict(n_heldout=0), r"n_heldout=0 is not allowed"),
    ]:
        with pytest.raises(ParameterError, match=message):
            P.check(dict(good, **bad))
    t = time.time()
    with pytest.raises(OfflineError, match="offline defaults: 'rotten_tomatoes'"):
        P.check(dict(good, data="imdb"))
    assert time.time() - t < 10


def test_every_profile_run_is_a_valid_set_of_declared_parameters():
    """The runner's grid uses only declared names, and every run passes the notebook's check."""
    declared = {p.name for p in P.PARAMS}
    for profile in ("smoke", "quick", "long", "classroom", "paper"):
        for run in sentiment_runs(profile):
            assert set(run.params) <= declared, set(run.params) - declared
            P.check(dict(defaults(P.PARAMS), **run.params))


def test_prompt_formats_put_the_review_start_last_and_the_reward_reads_only_the_review(tiny_lm):
    _, tok, texts = tiny_lm
    prefix = S.prompt_prefix(tok, "instruction")
    assert tok.decode(prefix) == S.INSTRUCTION + "\n"
    prompts = S.make_prompts(tok, texts, 3, seed=8, prefix=prefix)
    for p in prompts:
        assert p["query"][: len(prefix)].tolist() == prefix and torch.equal(p["query"][len(prefix):], p["review"])
    full, resp = S.decode_pairs(tok, [p["review"] for p in prompts], [torch.tensor([5, 6])] * 3)
    response = tok.decode([5, 6], skip_special_tokens=True)
    assert response and resp == [response] * 3
    assert full == [p["query_text"] + response for p in prompts]  # review start + response, no instruction
    assert all(S.INSTRUCTION not in f for f in full)
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        S.prompt_prefix(tok, "chat")


# ----------------------------------------------------------------------------- profiles, report, figures
def test_quick_profile_runs_the_lora_policy_with_three_seeds_of_each_algorithm_and_long_holds_the_sweeps():
    from rlformal_utils.sentiment.grid import runs as runs_of
    quick = runs_of("quick")
    assert all(r.params["policy"] == "smollm2-135m" and r.params["lora_rank"] == 16 for r in quick)
    for algorithm in ("ppo", "group"):
        arm = [r for r in quick if r.params.get("algorithm", "ppo") == algorithm]
        assert len({r.params["seed"] for r in arm}) == len(arm) >= 3, algorithm
        assert len({r.params["kl_coef"] for r in arm}) == 1, algorithm
    assert {r.params["n_heldout"] for r in quick} == {256} and len({r.name for r in quick}) == len(quick)
    long = runs_of("long")
    ppo_kl = {r.params["kl_coef"] for r in quick + long if r.params.get("algorithm", "ppo") == "ppo"}
    assert len(ppo_kl) >= 3 and len({r.name for r in long}) == len(long)


def _summary(before_reward, after_reward, before_ppl, after_ppl, reward="minilm-logreg"):
    side = dict(reward_median=0.0, reward_sd=1.0, reward_positive_share=0.5, judge_mean=0.1, response_tokens_mean=9.0,
                distinct_1=0.9, distinct_2=0.95, repetition=0.01, n=64)
    before = dict(side, reward_mean=before_reward, judge_positive_share=0.25, perplexity=before_ppl,
                  review_similarity=0.4)
    after = dict(side, reward_mean=after_reward, judge_positive_share=0.75, perplexity=after_ppl,
                 review_similarity=0.375)
    config = dict(defaults(P.PARAMS), reward=reward, kl_coef=0.2, seed=3, ppo_steps=24, ppo_batch_size=16)
    return dict(config=config, policy_label="smollm2-135m+lora16", judge="vader", before=before, after=after,
                train_seconds=300.0, real_review_similarity=0.44)


def test_the_closing_statement_reads_its_numbers_from_the_summary():
    text = S.result_text(_summary(0.5, 3.0, 40.0, 50.0))
    for part in ["smollm2-135m+lora16, KL 0.2, seed 3, 24 PPO steps of 16 prompts, 5.0 min of PPO", "on 64 held-out",
                 "from 0.50 to 3.00 (+2.50 logits", "(vader) from 0.25 to 0.75", "from 40.0 to 50.0 (1.25x",
                 "from 0.400 to 0.375", "real held-out reviews: 0.440"]:
        assert part in text, part
    assert "-1.00 VADER compound" in S.result_text(_summary(0.5, -0.5, 40.0, 50.0, reward="vader"))
    table = S.before_after_table(_summary(0.5, 3.0, 40.0, 50.0))
    assert table.loc["mean reward (minilm-logreg)", "after PPO"] == 3.0 and "n" not in table.index
    assert table.loc["perplexity under the frozen base model"].tolist() == [40.0, 50.0]


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
    # gains 5.7 and 5.8: mean 5.75, sample sd 0.0707, t(0.975, 1) = 12.706 -> 5.75 ± 0.64; a share stops at 1
    assert "reward gain +5.75 [+5.11, +6.39] (target >= 2: 2/2 seeds)" in line
    assert "judge positive share 0.93 [0.61, 1.00] (target >= 0.8: 2/2 seeds)" in line
    assert "perplexity ratio 5.20 [5.20, 5.20] (target <= 1.5: 0/2 seeds)" in line
    assert "target" not in next(l for l in text.splitlines() if "reward vader, KL 0.2" in l)  # no targets for VADER


def test_the_committed_quick_runs_are_what_the_profile_and_the_declaration_give():
    """results/sentiment/<run>/config.json of every quick-profile run equals the declaration's defaults
    with the profile's values, so ./run_all.sh skips exactly the committed runs and reruns give them."""
    from rlformal_utils.runs import REPO_ROOT
    for run in sentiment_runs("quick"):
        committed = REPO_ROOT / "results" / "sentiment" / run.name / "config.json"
        assert json.loads(committed.read_text()) == P.check(dict(defaults(P.PARAMS), **run.params)), run.name
