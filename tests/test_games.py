"""Game synthesis on ludax: fill-in-the-middle data, the playout reward, the LM glue, the notebook.

The engine tests share one ``GameRewarder`` with two worker processes; on 2 cores the whole file
takes a few minutes, most of it compiling the 17 bundled games once.
"""
import math
import os
import random
import threading
import time

import pytest

from rlformal_utils import games as G

BUNDLED = G.bundled_games()
TWO_PLAYER = [n for n, d in BUNDLED.items() if "(players 2" in d]


# ----------------------------------------------------------------------------- data
def test_bundled_games_are_the_seventeen_of_ludax_and_all_two_player():
    assert len(BUNDLED) == 17 and "tic_tac_toe" in BUNDLED and "english_draughts" in BUNDLED
    assert TWO_PLAYER == list(BUNDLED)


def test_normalised_descriptions_parse_to_the_same_tree():
    import ludax
    from lark import Lark
    from ludax import games

    parser = Lark(ludax.grammar, start="game")
    for name in games.__all__:
        original = getattr(games, name)
        assert "\n" not in BUNDLED[name] and "( " not in BUNDLED[name] and " )" not in BUNDLED[name]
        assert parser.parse(original) == parser.parse(BUNDLED[name]), name


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_rebuild_gives_back_the_game_for_every_example(name):
    text = BUNDLED[name]
    examples = G.fim_examples(name, text)
    assert len(examples) == text.count("(") - 1  # every group except the outermost (game ...)
    for ex in examples:
        assert ex.rebuild() == text
        assert ex.middle.startswith("(") and ex.middle.endswith(")") and ex.depth >= 1
        assert G.cut_middle(ex.middle + ' (extra "x"))') == ex.middle  # the cut stops at the balance point
        assert ex.prompt == f"### PRE: {ex.prefix} ### SUF: {ex.suffix} ### MID:"
    assert len({(e.prefix, e.suffix) for e in examples}) == len(examples)


def test_paren_spans_ignore_quoted_brackets():
    assert G.paren_spans('(a "x(y" (b))') == [(0, 13, 0), (9, 12, 1)]


@pytest.mark.parametrize("generated, expected", [
    ("(mover win)) (junk", "(mover win)"),
    ("  (a (b c) d) tail", "(a (b c) d)"),
    ("(a (b", "(a (b"),          # never balances: kept whole, the game will not parse
    ("abc) (x)", "abc"),         # no opening bracket: cut before the unmatched ")"
    ("", ""),
    ('("(" x) y', '("(" x)'),   # brackets inside a string do not count
])
def test_cut_middle(generated, expected):
    assert G.cut_middle(generated) == expected


def test_split_is_by_game():
    train, held = G.split_games(list(BUNDLED), ["hex", "yavalax"])
    assert held == ["hex", "yavalax"] and not set(train) & set(held) and len(train) == 15
    with pytest.raises(ValueError, match="unknown held-out games"):
        G.split_games(list(BUNDLED), ["chess"])


def test_novelty_is_against_every_bundled_game():
    assert not G.novel(BUNDLED["hex"]) and not G.novel(" \n" + BUNDLED["hex"])
    assert G.novel(BUNDLED["hex"].replace("11", "9"))


# ----------------------------------------------------------------------------- reward formula
def test_playout_reward_formula():
    # tic-tac-toe's exact random-play shares: 58.5 / 28.8 / 12.7 %
    r, b, c, d = G.playout_reward(585, 288, 127, 1000)
    assert (b, c, d) == pytest.approx((1 - 0.297, 0.873, 0.873))
    assert r == pytest.approx((0.703 ** (1 / 3) + 2 * 0.873 ** (1 / 3)) / 3)
    assert G.playout_reward(50, 50, 0, 100)[0] == 1.0            # balanced, always decided
    assert G.playout_reward(100, 0, 0, 100)[0] == pytest.approx(2 / 3)  # one-sided
    assert G.playout_reward(0, 0, 100, 100)[0] == pytest.approx(1 / 3)  # always a draw
    assert G.playout_reward(0, 0, 0, 100)[0] == pytest.approx(2 / 3)    # never ends within the limit
    assert G.REWARD_NOT_PLAYABLE == 0.05 and G.REWARD_TIMEOUT == 0.03 and G.REWARD_FAILURE == 0.01


# ----------------------------------------------------------------------------- engine (in process)
GARBAGE = ["", " ", "garbage", "(", ")", "(game", "(game)", '(game "x" (players 2))', "((((((((((",
           "\x00\xff漢", BUNDLED["tic_tac_toe"].replace("(", "")]


def test_garbage_empty_and_truncated_get_zero_without_raising():
    text = BUNDLED["tic_tac_toe"]
    truncated = [text[:k] for k in (1, 10, 50, len(text) // 2, len(text) - 1)]
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(text, len(text))) for _ in range(3)]
    for d in GARBAGE + truncated + shuffled:
        r = G.evaluate_in_process(d, n_playouts=4, max_turns=20)
        assert r.status == "no_compile" and r.reward == 0.0 and r.error, repr(d)


def test_compiles_but_not_playable_gets_005():
    no_player = BUNDLED["gridworld"].replace('(place "player" P1 (0)) ', "")
    full = BUNDLED["tic_tac_toe"].replace("(rules (play", '(rules (start (place "token" P1 (0 1 2 3 4 5 6 7 8))) (play')
    for d in (no_player, full):
        r = G.evaluate_in_process(d, n_playouts=4, max_turns=20)
        assert r.status == "not_playable" and r.reward == 0.05 and "no legal action" in r.error


def test_tic_tac_toe_random_play_matches_the_known_shares():
    n = 4000
    r = G.evaluate_in_process(BUNDLED["tic_tac_toe"], n_playouts=n, max_turns=20, seed=1)
    assert r.status == "playable" and r.unfinished == 0 and 5 <= r.mean_length <= 9
    for observed, p in ((r.p1_wins, 0.585), (r.p2_wins, 0.288), (r.draws, 0.127)):
        se = math.sqrt(p * (1 - p) / n)
        assert abs(observed / n - p) < 4 * se, (observed / n, p)
    assert r.reward == pytest.approx(G.playout_reward(r.p1_wins, r.p2_wins, r.draws, n)[0])


def test_speedups_do_not_change_the_engine():
    import ludax.utils
    from lark import Lark
    import ludax
    from ludax.game_info import GameInfoExtractor

    G._prepare_ludax()
    tree = Lark(ludax.grammar, start="game").parse(BUNDLED["tic_tac_toe"])
    info, _ = GameInfoExtractor()(tree)
    memo = ludax.utils._get_adjacency_lookup
    assert (memo(info) == memo.uncached(info)).all() and memo(info) is memo(info)


def test_a_valid_game_still_builds_after_many_others_in_the_same_process():
    # ludax keeps its piece-to-shape map as a class attribute; unpatched, the shapes run out after
    # a few games with differently named pieces and wolf_and_sheep fails ("pop from empty list").
    from ludax import LudaxEnvironment

    G._prepare_ludax()
    for name in list(BUNDLED) + ["wolf_and_sheep", "english_draughts"]:
        env = LudaxEnvironment(game_str=BUNDLED[name])
        assert set(env.rendering_info.piece_shape_mapping) == set(env.game_info.piece_names), name


# ----------------------------------------------------------------------------- engine (workers)
@pytest.fixture(scope="module")
def rewarder():
    with G.GameRewarder(workers=2, timeout=600, n_playouts=16, max_turns=150) as r:
        yield r


def test_every_bundled_two_player_game_is_playable_with_reward_above_005(rewarder):
    results = rewarder.evaluate([BUNDLED[n] for n in TWO_PLAYER])
    for name, r in zip(TWO_PLAYER, results):
        assert r.status == "playable" and 0.05 < r.reward <= 1.0, (name, r)
        assert r.p1_wins + r.p2_wins + r.draws + r.unfinished == 16
        assert r.build_seconds >= 0 and r.jit_seconds > 0 and r.play_seconds >= 0  # compile cost reported
    again = rewarder.evaluate([BUNDLED["hex"], BUNDLED["hex"]])
    assert all(r.cached for r in again) and again[0].reward == results[TWO_PLAYER.index("hex")].reward


def test_batch_mixes_garbage_and_games_and_deduplicates(rewarder):
    before = rewarder.stats["evaluated"]
    batch = ["", "garbage", BUNDLED["tic_tac_toe"], "garbage", BUNDLED["tic_tac_toe"][:-3]]
    results = rewarder.evaluate(batch)
    assert [r.status for r in results] == ["no_compile", "no_compile", "playable", "no_compile", "no_compile"]
    assert rewarder.rewards(batch)[:2] == [0.0, 0.0]
    assert rewarder.stats["evaluated"] - before <= 4  # "garbage" twice is evaluated once


def test_slow_game_hits_the_timeout_and_the_rewarder_recovers():
    with G.GameRewarder(workers=1, timeout=1.0, n_playouts=256, max_turns=500) as r:
        t = time.time()
        slow = r.evaluate([BUNDLED["english_draughts"]])[0]
        assert slow.status == "timeout" and slow.reward == 0.03 and time.time() - t < 30
        r.timeout = 600  # a fresh worker takes over
        assert r.evaluate([BUNDLED["tic_tac_toe"]])[0].status == "playable"


def test_a_dying_worker_gives_001_and_the_rewarder_recovers():
    with G.GameRewarder(workers=1, timeout=600, n_playouts=256, max_turns=500) as r:
        out = {}
        th = threading.Thread(target=lambda: out.update(res=r.evaluate([BUNDLED["english_draughts_hex"]])[0]))
        th.start()
        deadline = time.time() + 300
        while not r.busy_pids and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        os.kill(next(iter(r.busy_pids)), 9)  # a worker that this test started
        th.join(60)
        assert out["res"].status == "failure" and out["res"].reward == 0.01
        assert r.evaluate(["garbage"])[0].status == "no_compile"


def test_cache_file_survives_a_new_rewarder(tmp_path):
    path = tmp_path / "rewards.jsonl"
    with G.GameRewarder(workers=0, n_playouts=4, max_turns=20, cache_path=path) as r:
        first = r.evaluate(["garbage", BUNDLED["tic_tac_toe"]])
    with G.GameRewarder(workers=0, n_playouts=4, max_turns=20, cache_path=path) as r:
        second = r.evaluate(["garbage", BUNDLED["tic_tac_toe"]])
        assert all(x.cached for x in second) and [x.reward for x in second] == [x.reward for x in first]
    with G.GameRewarder(workers=0, n_playouts=5, max_turns=20, cache_path=path) as r:  # other settings: a miss
        assert not r.evaluate(["garbage"])[0].cached


# ----------------------------------------------------------------------------- LM glue
def test_tokenizer_keeps_brackets_single_and_round_trips():
    from rlformal_utils import games_lm as L

    tok = L.train_tokenizer(list(BUNDLED.values()), vocab_size=400)
    for t in tok.get_vocab():
        assert not ("(" in t or ")" in t) or t in ("(", "Ġ(", ")"), t
    ex = G.fim_examples("hex", BUNDLED["hex"])[3]
    ids, mask = L.encode_example(tok, ex)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[1:-1]) == ex.prompt + ex.middle
    assert tok.decode([i for i, m in zip(ids, mask) if m][:-1]) == ex.middle
    delta = L.bracket_deltas(tok)
    mid = tok(ex.middle + ") (x y)", add_special_tokens=False)["input_ids"]
    assert tok.decode(mid[:L.cut_index(mid, delta, tok.eos_token_id)]) == ex.middle


def test_prompt_window_shows_only_the_local_context():
    ex = G.FimExample("g", prefix="(game (a b) (c ", middle="(d e)", suffix=") (f g))", depth=2)
    assert ex.prompt_window(0) == ex.prompt
    assert ex.prompt_window(5) == "### PRE: ) (c  ### SUF: ) (f  ### MID:"  # last / first 5 characters
    assert ex.prompt_window(1000) == ex.prompt  # a window wider than the game is the whole game
    assert ex.rebuild("(x)") == "(game (a b) (c (x)) (f g))"  # the rebuild always uses all of it


def test_bracket_deltas_count_brackets_in_any_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rlformal_utils import games_lm as L

    ours = L.train_tokenizer(list(BUNDLED.values()), vocab_size=400)
    delta = L.bracket_deltas(ours)
    expected = {ours.convert_tokens_to_ids(t): d for t, d in (("(", 1), ("Ġ(", 1), (")", -1))}
    assert {i: int(d) for i, d in enumerate(delta) if d} == expected

    # a plain byte-level BPE (like a pretrained model's) merges runs such as "))" into one token
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(list(BUNDLED.values()), trainers.BpeTrainer(
        vocab_size=600, special_tokens=["[EOS]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    merged = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="[EOS]")
    delta = L.bracket_deltas(merged)
    closing = merged.convert_tokens_to_ids("))")
    assert closing != merged.unk_token_id and int(delta[closing]) == -2
    ids = merged("(a (b c)) (tail)", add_special_tokens=False)["input_ids"]
    kept = merged.decode(ids[:L.cut_index(ids, delta, merged.eos_token_id)])
    assert kept.startswith("(a (b c))") and G.cut_middle(kept) == "(a (b c))"


def test_generate_middles_cuts_where_brackets_balance():
    import torch
    from rlformal_utils import games_lm as L
    from rlformal_utils.pretrain import build_gpt2

    tok = L.train_tokenizer(list(BUNDLED.values()), vocab_size=400)
    model = build_gpt2("tiny", tok, n_positions=512, seed=0).eval()
    examples = G.fim_examples("tic_tac_toe", BUNDLED["tic_tac_toe"])[:6]
    torch.manual_seed(0)
    out = L.generate_middles(model, tok, [L.encode_prompt(tok, e) for e in examples], max_new_tokens=24)
    delta = L.bracket_deltas(tok)
    for o in out:
        assert len(o["ids"]) >= 1 and len(o["raw_ids"]) <= 24
        assert o["middle"] == G.cut_middle(o["middle"])
        depth = delta[o["ids"]].cumsum(0)
        assert (depth >= 0).all() or len(o["ids"]) == 1


# ----------------------------------------------------------------------------- notebook
def test_games_notebook_runs_through_papermill_with_a_tiny_budget(tmp_path):
    from rlformal_utils.runs import REPO_ROOT

    nb = REPO_ROOT / "notebooks" / "games.ipynb"
    import json
    import subprocess
    import sys

    from rlformal_utils.runner import games_runs

    params = dict(games_runs("smoke")[0].params, output_dir=str(tmp_path / "run"), torch_threads=1)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "papermill", str(nb), str(tmp_path / "out.ipynb"), "--cwd", str(nb.parent),
           "--no-progress-bar", "-y", json.dumps(params)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for f in ("config.json", "metrics.csv", "summary.json", "samples.jsonl"):
        assert (tmp_path / "run" / f).exists(), f
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for arm in ("sft", "ppo", "original"):
        assert 0 <= summary["heldout"][arm]["compile_share"] <= 1


@pytest.mark.parametrize("bad, error", [
    (dict(heldout_games=["chess"]), "ParameterError"),
    (dict(context_chars=-1), "ParameterError"),
    (dict(model_size="no-such-org/no-such-model"), "OfflineError"),  # a hub id, offline: fails at once
])
def test_games_notebook_rejects_a_bad_parameter_before_any_work(tmp_path, bad, error):
    import json
    import subprocess
    import sys

    from rlformal_utils.runs import REPO_ROOT

    nb = REPO_ROOT / "notebooks" / "games.ipynb"
    params = dict(output_dir=str(tmp_path / "run"), **bad)
    cmd = [sys.executable, "-m", "papermill", str(nb), str(tmp_path / "out.ipynb"), "--cwd", str(nb.parent),
           "--no-progress-bar", "-y", json.dumps(params)]
    proc = subprocess.run(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert error in proc.stderr and next(iter(bad)) in proc.stderr
    assert not (tmp_path / "run").exists()  # stopped before writing anything


def test_reward_cache_key_changes_with_the_reward_version(monkeypatch, tmp_path):
    """A changed reward must never reuse old cached scores: the code version is part of the key."""
    with G.GameRewarder(workers=0, n_playouts=4, max_turns=10, cache_path=tmp_path / "r.jsonl") as r:
        before = r.key(BUNDLED["tic_tac_toe"])
        assert r.key(BUNDLED["tic_tac_toe"]) == before and r.key(BUNDLED["hex"]) != before
        monkeypatch.setattr(G, "REWARD_VERSION", G.REWARD_VERSION + 1)
        assert r.key(BUNDLED["tic_tac_toe"]) != before
