"""Game model with LoRA, the SFT curve, the deciding evaluation (temperature chosen on training
prompts, paired bootstrap intervals) and the novelty distance; tiny models and fake rewarders only."""
import math

import numpy as np
import pytest
import torch

from rlformal_utils.games import evaluate as E
from rlformal_utils.games import fim as F
from rlformal_utils.games import lm as L
from rlformal_utils.games import params as P
from rlformal_utils.params import defaults
from rlformal_utils.runs import ParameterError

HELD = ["tic_tac_toe", "yavalath", "hex", "wolf_and_sheep"]


def _config(**over):
    c = defaults(P.PARAMS)
    c.update(model_size="tiny", vocab_size=320, n_positions=256, max_new_tokens=16, sft_steps=30,
             sft_batch_size=8, sft_lr=5e-3, max_middle_chars=30, context_chars=24)
    c.update(over)
    return c


@pytest.fixture(scope="module")
def data():
    return F.make_data(HELD, 30)


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("name,value,words", [("lora_rank", 3, "lora_rank=3"), ("lora_rank", -1, "lora_rank=-1"),
                                              ("model_size", "huge-llm", "model_size")])
def test_bad_model_settings_stop_naming_the_parameter(name, value, words):
    values = dict(defaults(P.PARAMS), **{name: value})
    with pytest.raises(Exception, match=words):  # ParameterError, or OfflineError for an unknown model offline
        P.check(values)


def test_lora_ranks_message_lists_the_allowed_values():
    with pytest.raises(ParameterError, match=r"\[0, 1, 2, 4, 8, 16, 32, 64, 128\]"):
        P.check(dict(defaults(P.PARAMS), lora_rank=5))


# ----------------------------------------------------------------------------- LoRA SFT
def test_curve_steps_are_evenly_spaced_and_end_at_the_budget():
    assert L.curve_steps(30, 3) == [10, 20, 30]
    assert L.curve_steps(10, 4) == [2, 5, 8, 10]  # rounded: 2.5 -> 2, 7.5 -> 8 (banker's rounding)
    assert L.curve_steps(30, 0) == [] and L.curve_steps(0, 3) == []


def test_default_key_is_unchanged_by_the_new_options(data):
    key = L.sft_key(_config(), data)
    assert "lora_rank" not in key and "checkpoints" not in key  # cached full fine-tuning folders stay valid
    assert L.sft_key(_config(lora_rank=4), data)["lora_rank"] == 4


def test_lora_sft_lowers_the_loss_trains_only_adapters_and_is_cached(data, isolated_cache):
    config = _config(lora_rank=8, sft_curve_points=3)
    folder = L.sft_model_dir(config, data)
    losses = [float(x) for x in (folder / "sft_losses.csv").read_text().split()[1:]]
    assert len(losses) == 30 and np.mean(losses[-5:]) < losses[0] - 0.3
    assert (folder / "adapter" / "adapter_config.json").exists() and (folder / "base").exists()
    assert L.sft_info(folder) == dict(model_size="tiny", lora_rank=8, checkpoints=[10, 20, 30])
    # the base is the untouched initial model; the merged model differs from it
    base = L.load_base(folder)
    merged, tok = L.load_sft(folder)
    from rlformal_utils.pretrain import build_gpt2
    fresh = build_gpt2("tiny", tok, n_positions=config["n_positions"], seed=config["sft_seed"])
    for (n, a), b in zip(base.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), n
    changed = [n for n, a in merged.state_dict().items() if not torch.equal(a, base.state_dict()[n])]
    assert changed and all(("attn" in n or "mlp" in n) and n.endswith("weight") for n in changed)
    assert not any("wte" in n or "ln_" in n for n in changed)  # embeddings and norms are frozen
    # the last checkpoint is the final model; an earlier one is a different model
    ids = torch.tensor([L.encode_example(tok, data.train[0], 24)[0]])
    with torch.no_grad():
        final = merged(ids).logits
        assert torch.allclose(L.load_checkpoint(folder, 30)(ids).logits, final, atol=1e-4)
        assert not torch.allclose(L.load_checkpoint(folder, 10)(ids).logits, final, atol=1e-3)
    with pytest.raises(FileNotFoundError, match="saved: \\[10, 20, 30\\]"):
        L.load_checkpoint(folder, 15)
    # a second call builds nothing
    stamp = (folder / "sft_losses.csv").stat().st_mtime_ns
    assert L.sft_model_dir(config, data) == folder and (folder / "sft_losses.csv").stat().st_mtime_ns == stamp


# ----------------------------------------------------------------------------- bootstrap and paired difference
def test_bootstrap_interval_of_a_toy_matches_the_hand_worked_one():
    # 4 examples, one playable: a resampled mean is Binomial(4, 1/4) / 4; P(0) = 0.32 > 2.5 %,
    # P(>= 3/4) = 0.051 > 2.5 % > P(1) = 0.004, so the 95 % interval is [0, 0.75]
    assert E.bootstrap_mean([0, 0, 0, 1], n_boot=20000) == (0.25, 0.0, 0.75)
    assert E.bootstrap_mean([0.3] * 5) == pytest.approx((0.3, 0.3, 0.3))
    assert E.bootstrap_mean([0, 1], n_boot=20000) == (0.5, 0.0, 1.0)  # means 0, 1/2, 1 with 1/4, 1/2, 1/4


def test_paired_difference_pairs_examples_and_resamples_seeds():
    rng = np.random.default_rng(1)
    sft = rng.uniform(0, 1, size=(3, 40))  # examples differ a lot ...
    d = E.paired_difference(sft + 0.1, sft)  # ... but RL adds exactly 0.1 to each: the interval is a point
    assert (d["diff"], d["low"], d["high"]) == pytest.approx((0.1, 0.1, 0.1))
    assert d["n_seeds"] == 3 and d["n_examples"] == 40
    # one seed, per-example differences 0 and 1: the toy above
    d = E.paired_difference([1, 1], [1, 0], n_boot=20000)
    assert (d["diff"], d["low"], d["high"]) == (0.5, 0.0, 1.0)
    # two seeds that disagree completely, examples alike: only resampling the seeds gives an interval
    d = E.paired_difference([[0, 0], [1, 1]], [0, 0], n_boot=20000)
    assert (d["diff"], d["low"], d["high"]) == (0.5, 0.0, 1.0)


def test_per_example_means_and_arm_summary():
    rows = []
    for ex, (sampled, greedy) in enumerate([([1, 1], 1), ([0, 1], 0), ([0, 0], 0)]):
        for j, p in enumerate(sampled + [greedy]):
            rows.append(dict(example=ex, sample=j, kind="greedy" if j == 2 else "sampled", playable=bool(p),
                             compiles=True, reward=0.5 * p, novel=bool(p) and ex == 1,
                             middle=f"m{ex}{j}" if ex != 2 else "same", description=f"g{ex}{j}"))
    assert list(E.per_example([r for r in rows if r["kind"] == "sampled"])) == [1.0, 0.5, 0.0]
    s = E.arm_summary(rows, n_boot=4000)
    assert s["playable"] == 0.5 and s["compiles"] == 1.0 and s["reward"] == 0.25
    assert s["greedy_playable"] == pytest.approx(1 / 3) and s["n_examples"] == 3 and s["n_samples"] == 2
    assert s["novel_playable_games"] == 1 and s["distinct_middles_per_example"] == pytest.approx(5 / 3)
    assert s["playable_low"] == 0.0 and s["playable_high"] == 1.0


# ----------------------------------------------------------------------------- temperature chosen on training prompts
class _DecodingRewarder:
    """Playable when a training game is decoded at 0.5, or a held-out game at 1.0."""

    def evaluate(self, games):
        from rlformal_utils.games.reward import GameResult
        out = []
        for g in games:
            game, t = g.split("|")
            ok = (game.startswith("train") and float(t) == 0.5) or (game.startswith("held") and float(t) == 1.0)
            out.append(GameResult("playable" if ok else "no_compile", 0.9 if ok else 0.0))
        return out


def test_temperature_is_chosen_on_training_prompts_only(monkeypatch):
    seen = []

    def fake_generate(model, tokenizer, prompts, *, max_new_tokens, temperature=1.0, **kw):
        seen.append((temperature, set(prompts)))
        return [dict(middle=f"{p}|{temperature}") for p in prompts]

    monkeypatch.setattr(E, "encode_prompt", lambda tok, e, c=0: e.game)
    monkeypatch.setattr(E, "generate_middles", fake_generate)
    train = [F.FimExample(f"train{i}", "", "(x)", "", 1) for i in range(3)]
    held = [F.FimExample(f"held{i}", "", "(x)", "", 1) for i in range(2)]
    t, table, rows = E.evaluate_at_best_decoding(None, None, train, held, _DecodingRewarder(), set(),
                                                 dict(context_chars=0, max_new_tokens=8), n_samples=3, arm="sft")
    assert t == 0.5 and [r["temperature"] for r in table] == [0.0, 0.5, 0.7, 1.0]
    assert [r["playable_share"] for r in table] == [0.0, 1.0, 0.0, 0.0]
    sweep_calls = seen[:4]
    assert all(p == {"train0", "train1", "train2"} for _, p in sweep_calls)
    assert {tt for tt, _ in seen[4:]} == {0.5, 0.0}  # held-out: sampled at the chosen one, plus greedy
    assert len(rows) == 2 * 4 and sum(r["kind"] == "greedy" for r in rows) == 2
    assert not any(r["playable"] for r in rows)  # the held-out favourite (1.0) was never looked at


def test_sample_middles_repeats_the_greedy_middle(monkeypatch):
    calls = []

    def fake_generate(model, tokenizer, prompts, *, max_new_tokens, temperature=1.0, **kw):
        calls.append(len(prompts))
        return [dict(middle=f"{p}{i}") for i, p in enumerate(prompts)]

    monkeypatch.setattr(E, "encode_prompt", lambda tok, e, c=0: e.game)
    monkeypatch.setattr(E, "generate_middles", fake_generate)
    ex = [F.FimExample(g, "", "(x)", "", 1) for g in "ab"]
    assert E.sample_middles(None, None, ex, dict(context_chars=0, max_new_tokens=8), 0.0, 3) == [["a0"] * 3, ["b1"] * 3]
    assert E.sample_middles(None, None, ex, dict(context_chars=0, max_new_tokens=8), 0.7, 2) == [["a0", "a1"], ["b2", "b3"]]
    assert calls == [2, 4]


def test_generate_middles_temperature_zero_is_greedy(data):
    from rlformal_utils.pretrain import build_gpt2
    tok = L.train_tokenizer([data.games[g] for g in data.train_games], 320)
    model = build_gpt2("tiny", tok, n_positions=256, seed=0)
    prompts = [L.encode_prompt(tok, e, 24) for e in data.heldout[:3]]
    torch.manual_seed(0)
    a = [g["middle"] for g in L.generate_middles(model, tok, prompts, max_new_tokens=8, temperature=0)]
    torch.manual_seed(1)
    b = [g["middle"] for g in L.generate_middles(model, tok, prompts, max_new_tokens=8, greedy=True)]
    assert a == b


# ----------------------------------------------------------------------------- novelty distance
def test_edit_distances_are_the_known_ones():
    from rlformal_utils.games import novelty as N
    assert N.edit_distance("kitten", "sitting") == 3 and N.edit_distance("", "ab") == 2
    assert N.edit_distance("flaw", "lawn") == 2 and N.edit_distance(list("abc"), list("abc")) == 0
    assert N.rule_tokens('(game "x y"\n  (a b))') == ["(", "game", '"x y"', "(", "a", "b", ")", ")"]
    a, b = N.rule_tokens("(g (a b) (c d))"), N.rule_tokens("(g (a x) (c d e))")
    assert N.edit_distance(a, b) == 2  # rename b -> x, insert e
    assert N.edit_distance(a, b, bound=0) > 0


def test_nearest_training_game_and_the_most_different():
    from rlformal_utils.games import novelty as N
    training = {k: v for k, v in F.bundled_games().items() if k not in HELD}
    g = training["connect_four"]
    i = g.index("(", 10)
    one_token = g.replace("connect_four", "connect_fourx", 1) if "connect_four" in g else g[:i] + "(zzz)" + g[i:]
    assert N.nearest_game(g, training) == ("connect_four", 0)
    name, d = N.nearest_game(one_token, training)
    assert name == "connect_four" and 1 <= d <= 3
    hex_game = F.bundled_games()["hex"]
    brute = min((N.edit_distance(N.rule_tokens(hex_game), N.rule_tokens(t)), n) for n, t in training.items())
    assert N.nearest_game(hex_game, training) == (brute[1], brute[0])  # the early stop changes nothing
    top = N.most_different([g, one_token, hex_game, g], training, k=2)
    assert [r["description"] for r in top] == [F.normalise(hex_game), F.normalise(one_token)]
    assert top[0]["distance"] == brute[0] and top[0]["nearest_training_game"] == brute[1]


# ----------------------------------------------------------------------------- results/games_runs.csv
def test_committed_runs_still_load_with_the_new_columns():
    from pathlib import Path

    from rlformal_utils.games import plots
    results = Path(__file__).resolve().parents[1] / "results" / "games"
    _, heldout, _ = plots.load_runs(results)
    table = plots.runs_table(heldout)
    assert list(table.columns[1:1 + len(plots.RUN_COLUMNS)]) == plots.RUN_COLUMNS and table.columns[0] == "run"
    row = table.iloc[0]
    assert row["model"] == "small" and row["algorithm"] == "ppo" and row["n_heldout_samples"] == 1
    assert row["rl_minus_sft"] == pytest.approx(row["ppo_playable_share"] - row["sft_playable_share"])
    assert math.isnan(row["rl_minus_sft_low"]) and row["rl_steps"] == row["ppo_steps"]
    assert row["reward_seconds"] > 0 and row["seconds_per_rl_step"] == row["seconds_per_step"]


def test_a_run_with_the_deciding_evaluation_fills_its_columns():
    from rlformal_utils.games import plots
    arm = dict(n=4, compile_share=0.5, playable_share=0.5, mean_reward=0.3, exact_share=0.0,
               novel_playable_share=0.25, novel_playable_games=1)
    summary = dict(config=dict(seed=2, model_size="smollm2-135m", lora_rank=16, sft_steps=144, ppo_steps=10),
                   heldout=dict(original=arm, sft=arm, ppo=arm), seconds_per_step=50.0, train_seconds=500.0,
                   reward_stats=dict(seconds=120.0),
                   decision=dict(n_heldout_samples=4, sft=dict(playable=0.4, novel=0.2), rl=dict(playable=0.45, novel=0.1),
                                 rl_minus_sft=0.05, rl_minus_sft_low=-0.02, rl_minus_sft_high=0.12))
    f = plots.run_fields(summary)
    assert f == dict(model="smollm2-135m+lora16", algorithm="ppo", sft_steps=144, rl_steps=10, seconds_per_rl_step=50.0,
                     reward_seconds=120.0, n_heldout_samples=4, sft_playable=0.4, rl_playable=0.45, rl_minus_sft=0.05,
                     rl_minus_sft_low=-0.02, rl_minus_sft_high=0.12, sft_novel_playable=0.2, rl_novel_playable=0.1)


def test_decision_over_seeds_takes_per_run_per_example_arrays():
    import pandas as pd
    rows = []
    for run, shift in (("a", 0.0), ("b", 1.0)):
        for ex in range(2):
            for arm, p in (("sft_best", 0), ("rl_best", shift)):
                rows.append(dict(run=run, arm=arm, kind="sampled", example=ex, playable=p))
                rows.append(dict(run=run, arm=arm, kind="greedy", example=ex, playable=1 - p))
    d = E.decision_over_seeds(pd.DataFrame(rows), seed=0)
    assert (d["diff"], d["n_seeds"], d["n_examples"]) == (0.5, 2, 2)
    assert (d["low"], d["high"]) == (0.0, 1.0)  # the two runs disagree completely


# ----------------------------------------------------------------------------- group-relative RL
@pytest.mark.parametrize("over,words", [(dict(algorithm="group", group_size=5), "group_size=5 is not allowed"),
                                        (dict(algorithm="group", group_size=1), "group_size=1"),
                                        (dict(algorithm="grpo"), "algorithm='grpo'")])
def test_bad_group_settings_stop_naming_the_parameter(over, words):
    with pytest.raises(ParameterError, match=words):
        P.check(dict(defaults(P.PARAMS), **over))


class _LengthRewarder:
    """Scores a game by its length (so a group's middles differ in reward); counts like a GameRewarder."""
    stats = dict(cache_hits=0)

    def evaluate(self, games):
        from rlformal_utils.games.reward import GameResult
        return [GameResult("playable", (len(g) % 7) / 7) for g in games]


class _Log:
    def __init__(self):
        self.rows = []

    def log(self, row):
        self.rows.append(row)

    def flush(self):
        pass


def test_group_update_keeps_the_frozen_sft_adapter_as_reference(data):
    from rlformal_utils.games import train as T
    config = _config(lora_rank=8, sft_curve_points=3, algorithm="group", group_size=2, ppo_batch_size=4,
                     ppo_mini_batch_size=4, ppo_steps=3, ppo_lr=1e-2, kl_coef=0.1)
    folder = L.sft_model_dir(config, data)  # cached by the LoRA test above, or built now
    merged, tok = L.load_sft(folder)
    trainer = T.make_trainer(config, folder, tok)
    model = trainer.model
    ids = torch.tensor([L.encode_example(tok, data.train[3], 24)[0]])

    def logits(context=None):
        with torch.no_grad():
            if context is None:
                return model(input_ids=ids).logits
            with context:
                return model(input_ids=ids).logits

    with torch.no_grad():
        sft = merged(input_ids=ids).logits
        base = L.load_base(folder)(input_ids=ids).logits
    assert torch.allclose(logits(trainer.reference()), sft, atol=1e-4)
    assert not torch.allclose(logits(trainer.reference()), base, atol=1e-2)  # not the adapter-disabled base
    trained = {id(p) for p in trainer.params}
    assert trained and all(".default." in n for n, p in model.named_parameters() if id(p) in trained)
    log = _Log()
    prompts = T.ppo_prompts(L.fitting(tok, data.train, config), [])
    T.train(config, trainer, tok, prompts, _LengthRewarder(), set(), log)
    assert [r["step"] for r in log.rows] == [1, 2, 3]
    assert abs(log.rows[0]["kl"]) < 1e-5  # the policy starts as its reference
    assert all(k in log.rows[0] for k in ("reward", "playable_share", "kl", "time_reward", "zero_advantage_groups"))
    assert not torch.allclose(logits(), sft, atol=1e-3)  # the policy moved ...
    assert torch.allclose(logits(trainer.reference()), sft, atol=1e-4)  # ... its reference did not
    assert all(".default." in n for n, p in model.named_parameters() if p.requires_grad)


def test_figures_state_the_decision_only_when_runs_have_it():
    import pandas as pd
    from pathlib import Path

    from rlformal_utils.games import plots
    results = Path(__file__).resolve().parents[1] / "results" / "games"
    _, _, samples = plots.load_runs(results)
    assert plots.decision_text(samples) == "" and plots.most_different_markdown(results) == ""
    rows = [dict(run=run, arm=arm, kind="sampled", example=ex, playable=p)
            for run in ("a", "b") for ex in range(2) for arm, p in (("sft_best", 0), ("rl_best", ex))]
    text = plots.decision_text(pd.DataFrame(rows))
    assert "+0.500, 95 % interval [+0.000, +1.000]" in text and "over 2 examples, then over 2 runs" in text


def test_most_different_games_over_runs(tmp_path):
    import json

    from rlformal_utils.games import plots
    for run, rows in (("r0", [("(a)", 3, "hex"), ("(b)", 9, "gomoku")]), ("r1", [("(c)", 5, "hex"), ("(b)", 9, "gomoku")])):
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.csv").write_text("step\n")
        most = [dict(description=d, distance=n, relative_distance=n / 10, nearest_training_game=g) for d, n, g in rows]
        (tmp_path / run / "summary.json").write_text(json.dumps(dict(most_different=most)))
    text = plots.most_different_markdown(tmp_path, k=2)
    assert text.splitlines()[2:] == ["- 9 edits (90% of its tokens) from `gomoku` (run r1): `(b)`",
                                     "- 5 edits (50% of its tokens) from `hex` (run r1): `(c)`"]


def test_run_result_names_the_group_update():
    arm = lambda p: dict(n=48, compile_share=p, playable_share=p, mean_reward=p / 2, exact_share=0.1,
                         novel_playable_share=0.0, novel_playable_games=1)
    summary = dict(config=dict(seed=0, ppo_steps=5, algorithm="group"), n_ppo_prompts=120, seconds_per_step=12.0,
                   heldout=dict(original=arm(1.0), sft=arm(0.1), ppo=arm(0.12)))
    text = E.run_result(summary, [])
    assert "5 group RL steps (seed 0)" in text and "group RL wrote more playable games" in text
    assert "does not show that group RL helps" in text and "PPO" not in text


def test_lora_ppo_trains_fresh_adapters_on_the_merged_sft_model(data):
    from rlformal_utils.games import train as T
    config = _config(lora_rank=8, sft_curve_points=3, ppo_batch_size=4, ppo_mini_batch_size=2, ppo_epochs=1,
                     ppo_steps=2, ppo_lr=1e-2)
    folder = L.sft_model_dir(config, data)
    merged, tok = L.load_sft(folder)
    trainer = T.make_trainer(config, folder, tok)
    assert trainer.is_peft_model and trainer.ref_model is None  # trl's reference: the adapter-disabled model
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "v_head" in n for n in names)
    ids = torch.tensor([L.encode_example(tok, data.train[3], 24)[0]])
    with torch.no_grad():
        sft = merged(input_ids=ids).logits
        assert torch.allclose(trainer.model(input_ids=ids)[0], sft, atol=1e-4)  # LoRA B starts at 0
    log = _Log()
    T.train(config, trainer, tok, T.ppo_prompts(L.fitting(tok, data.train, config), []), _LengthRewarder(), set(), log)
    assert [r["step"] for r in log.rows] == [1, 2]
    with torch.no_grad():
        assert not torch.allclose(trainer.model(input_ids=ids)[0], sft, atol=1e-3)  # the policy moved ...
        with trainer.optional_peft_ctx():
            assert torch.allclose(trainer.model(input_ids=ids)[0], sft, atol=1e-4)  # ... its reference is the SFT model
