"""Game synthesis on ludax: fill-in-the-middle data, the playout reward and its worker pool, the LM
(tokenizer, bracket cut, sampling), evaluation and the tables. The notebooks: test_games_notebooks.py.

The engine tests share one ``GameRewarder`` with two worker processes; on 2 cores the whole file
takes a few minutes, most of it compiling the 17 bundled games once.
"""
import ast
import math
import os
import random
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from rlformal_utils.games import evaluate as E
from rlformal_utils.games import fim as F
from rlformal_utils.games import lm as L
from rlformal_utils.games import plots
from rlformal_utils.games import reward as R
from rlformal_utils.games.rewarder import GameRewarder

BUNDLED = F.bundled_games()


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
    examples = F.fim_examples(name, text)
    assert len(examples) == text.count("(") - 1  # every group except the outermost (game ...)
    for ex in examples:
        assert ex.rebuild() == text
        assert ex.middle.startswith("(") and ex.middle.endswith(")") and ex.depth >= 1
        assert F.cut_middle(ex.middle + ' (extra "x"))') == ex.middle  # the cut stops at the balance point
        assert ex.prompt == f"### PRE: {ex.prefix} ### SUF: {ex.suffix} ### MID:"
    assert len({(e.prefix, e.suffix) for e in examples}) == len(examples)


def test_paren_spans_ignore_quoted_brackets():
    assert F.paren_spans('(a "x(y" (b))') == [(0, 13, 0), (9, 12, 1)]


@pytest.mark.parametrize("generated, expected", [
    ("(mover win)) (junk", "(mover win)"),
    ("  (a (b c) d) tail", "(a (b c) d)"),
    ("(a (b", "(a (b"),          # never balances: kept whole, the game will not parse
    ("abc) (x)", "abc"),         # no opening bracket: cut before the unmatched ")"
    ("", ""),
    ('("(" x) y', '("(" x)'),   # brackets inside a string do not count
])
def test_cut_middle(generated, expected):
    assert F.cut_middle(generated) == expected
    end = F.balance_point(generated)  # None exactly when the text is kept whole
    assert (end is None) == (expected == generated.lstrip())
    if end is not None:
        assert generated.lstrip()[:end] == expected


def test_balance_point_is_found_in_the_shortest_prefix_that_reaches_it():
    text = '  (a "(" (b c)) d)'
    end = F.balance_point(text)
    assert end == len('(a "(" (b c))')
    assert all(F.balance_point(text[:k]) is None for k in range(len(text)) if k < 2 + end)
    assert all(F.balance_point(text[:k]) == end for k in range(2 + end, len(text) + 1))


def test_split_is_by_game():
    train, held = F.split_games(list(BUNDLED), ["hex", "yavalax"])
    assert held == ["hex", "yavalax"] and not set(train) & set(held) and len(train) == 15
    with pytest.raises(ValueError, match="unknown held-out games"):
        F.split_games(list(BUNDLED), ["chess"])


def test_make_data_keeps_held_out_games_out_of_training_and_limits_middles():
    data = F.make_data(["hex", "tic_tac_toe"], max_middle_chars=30)
    assert {e.game for e in data.heldout} == {"hex", "tic_tac_toe"}
    assert not {e.game for e in data.train} & {"hex", "tic_tac_toe"} and len(data.train_games) == 15
    assert max(len(e.middle) for e in data.train + data.heldout) <= 30
    everything = F.make_data(["hex", "tic_tac_toe"], max_middle_chars=0)
    assert len(everything.train) > len(data.train)
    assert len(everything.train) == sum(len(F.fim_examples(g, BUNDLED[g])) for g in everything.train_games)


def test_no_games_module_imports_another_experiment():
    folder = Path(F.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                assert "arithmetic" not in name and "sentiment" not in name, (path.name, name)


def test_novelty_is_against_every_bundled_game():
    assert not F.novel(BUNDLED["hex"]) and not F.novel(" \n" + BUNDLED["hex"])
    assert F.novel(BUNDLED["hex"].replace("11", "9"))


# ----------------------------------------------------------------------------- reward formula
def test_playout_reward_formula():
    # tic-tac-toe's exact random-play shares: 58.5 / 28.8 / 12.7 %
    r, b, c, d = R.playout_reward(585, 288, 127, 1000)
    assert (b, c, d) == pytest.approx((1 - 0.297, 0.873, 0.873))
    assert r == pytest.approx((0.703 ** (1 / 3) + 2 * 0.873 ** (1 / 3)) / 3)
    assert R.playout_reward(50, 50, 0, 100)[0] == 1.0            # balanced, always decided
    assert R.playout_reward(100, 0, 0, 100)[0] == pytest.approx(2 / 3)  # one-sided
    assert R.playout_reward(0, 0, 100, 100)[0] == pytest.approx(1 / 3)  # always a draw
    assert R.playout_reward(0, 0, 0, 100)[0] == pytest.approx(2 / 3)    # never ends within the limit
    assert R.REWARD_NOT_PLAYABLE == 0.05 and R.REWARD_TIMEOUT == 0.03 and R.REWARD_FAILURE == 0.01


# ----------------------------------------------------------------------------- engine (in process)
GARBAGE = ["", " ", "garbage", "(", ")", "(game", "(game)", '(game "x" (players 2))', "((((((((((",
           "\x00\xff漢", "\ud800", BUNDLED["tic_tac_toe"].replace("(", "")]  # a lone surrogate too


def test_garbage_empty_and_truncated_get_zero_without_raising():
    text = BUNDLED["tic_tac_toe"]
    truncated = [text[:k] for k in (1, 10, 50, len(text) // 2, len(text) - 1)]
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(text, len(text))) for _ in range(3)]
    for d in GARBAGE + truncated + shuffled:
        r = R.evaluate_in_process(d, n_playouts=4, max_turns=20)
        assert r.status == "no_compile" and r.reward == 0.0 and r.error, repr(d)


def test_compiles_but_not_playable_gets_005():
    no_player = BUNDLED["gridworld"].replace('(place "player" P1 (0)) ', "")
    full = BUNDLED["tic_tac_toe"].replace("(rules (play", '(rules (start (place "token" P1 (0 1 2 3 4 5 6 7 8))) (play')
    for d in (no_player, full):
        r = R.evaluate_in_process(d, n_playouts=4, max_turns=20)
        assert r.status == "not_playable" and r.reward == 0.05 and "no legal action" in r.error


def test_tic_tac_toe_random_play_matches_the_known_shares():
    n = 4000
    r = R.evaluate_in_process(BUNDLED["tic_tac_toe"], n_playouts=n, max_turns=20, seed=1)
    assert r.status == "playable" and r.unfinished == 0 and 5 <= r.mean_length <= 9
    for observed, p in ((r.p1_wins, 0.585), (r.p2_wins, 0.288), (r.draws, 0.127)):
        se = math.sqrt(p * (1 - p) / n)
        assert abs(observed / n - p) < 4 * se, (observed / n, p)
    assert r.reward == pytest.approx(R.playout_reward(r.p1_wins, r.p2_wins, r.draws, n)[0])


def test_speedups_do_not_change_the_engine():
    import ludax.utils
    from lark import Lark
    import ludax
    from ludax.game_info import GameInfoExtractor

    R._prepare_ludax()
    tree = Lark(ludax.grammar, start="game").parse(BUNDLED["tic_tac_toe"])
    info, _ = GameInfoExtractor()(tree)
    memo = ludax.utils._get_adjacency_lookup
    assert (memo(info) == memo.uncached(info)).all() and memo(info) is memo(info)


def test_a_valid_game_still_builds_after_many_others_in_the_same_process():
    # ludax keeps its piece-to-shape map as a class attribute; unpatched, the shapes run out after
    # a few games with differently named pieces and wolf_and_sheep fails ("pop from empty list").
    from ludax import LudaxEnvironment

    R._prepare_ludax()
    for name in list(BUNDLED) + ["wolf_and_sheep", "english_draughts"]:
        env = LudaxEnvironment(game_str=BUNDLED[name])
        assert set(env.rendering_info.piece_shape_mapping) == set(env.game_info.piece_names), name


# ----------------------------------------------------------------------------- engine (workers)
@pytest.fixture(scope="module")
def rewarder():
    with GameRewarder(workers=2, timeout=600, n_playouts=16, max_turns=150) as r:
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
    with GameRewarder(workers=1, timeout=1.0, n_playouts=256, max_turns=500) as r:
        t = time.time()
        slow = r.evaluate([BUNDLED["english_draughts"]])[0]
        assert slow.status == "timeout" and slow.reward == 0.03 and time.time() - t < 30
        r.timeout = 600  # a fresh worker takes over
        assert r.evaluate([BUNDLED["tic_tac_toe"]])[0].status == "playable"


def test_a_dying_worker_gives_001_and_the_rewarder_recovers():
    with GameRewarder(workers=1, timeout=600, n_playouts=256, max_turns=500) as r:
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
    with GameRewarder(workers=0, n_playouts=4, max_turns=20, cache_path=path) as r:
        first = r.evaluate(["garbage", BUNDLED["tic_tac_toe"]])
    with GameRewarder(workers=0, n_playouts=4, max_turns=20, cache_path=path) as r:
        second = r.evaluate(["garbage", BUNDLED["tic_tac_toe"]])
        assert all(x.cached for x in second) and [x.reward for x in second] == [x.reward for x in first]
    with GameRewarder(workers=0, n_playouts=5, max_turns=20, cache_path=path) as r:  # other settings: a miss
        assert not r.evaluate(["garbage"])[0].cached


def test_reward_cache_key_changes_with_the_reward_version(monkeypatch, tmp_path):
    """A changed reward must never reuse old cached scores: the code version is part of the key."""
    with GameRewarder(workers=0, n_playouts=4, max_turns=10, cache_path=tmp_path / "r.jsonl") as r:
        before = r.key(BUNDLED["tic_tac_toe"])
        assert r.key(BUNDLED["tic_tac_toe"]) == before and r.key(BUNDLED["hex"]) != before
        monkeypatch.setattr(R, "REWARD_VERSION", R.REWARD_VERSION + 1)
        assert r.key(BUNDLED["tic_tac_toe"]) != before


def test_the_default_reward_cache_follows_rlformal_cache(monkeypatch, tmp_path):
    from rlformal_utils import runs
    from rlformal_utils.games.rewarder import reward_cache_path
    monkeypatch.setattr(runs, "CACHE_DIR", tmp_path)
    assert reward_cache_path() == tmp_path / "games-rewards.jsonl"


# ----------------------------------------------------------------------------- the LM: tokenizer and the bracket cut
@pytest.fixture(scope="module")
def game_tokenizer():
    return L.train_tokenizer(list(BUNDLED.values()), vocab_size=400)


@pytest.fixture(scope="module")
def merging_tokenizer():
    """A plain byte-level BPE, like a pretrained model's: it merges runs such as ")))" into one token."""
    from rlformal_utils.pretrain import train_bpe_tokenizer
    return train_bpe_tokenizer(list(BUNDLED.values()), 600)


def test_tokenizer_keeps_brackets_single_and_round_trips(game_tokenizer):
    tok = game_tokenizer
    for t in tok.get_vocab():
        assert not ("(" in t or ")" in t) or t in ("(", "Ġ(", ")"), t
    ex = F.fim_examples("hex", BUNDLED["hex"])[3]
    ids, mask = L.encode_example(tok, ex)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[1:-1]) == ex.prompt + ex.middle
    assert tok.decode([i for i, m in zip(ids, mask) if m][:-1]) == ex.middle
    mid = tok(ex.middle + ") (x y)", add_special_tokens=False)["input_ids"]
    keep, middle = L.cut_generation(tok, mid)
    assert middle == ex.middle and tok.decode(mid[:keep]) == ex.middle  # single brackets: an exact cut


def test_prompt_window_shows_only_the_local_context():
    ex = F.FimExample("g", prefix="(game (a b) (c ", middle="(d e)", suffix=") (f g))", depth=2)
    assert ex.prompt_window(0) == ex.prompt
    assert ex.prompt_window(5) == "### PRE: ) (c  ### SUF: ) (f  ### MID:"  # last / first 5 characters
    assert ex.prompt_window(1000) == ex.prompt  # a window wider than the game is the whole game
    assert ex.rebuild("(x)") == "(game (a b) (c (x)) (f g))"  # the rebuild always uses all of it


def _old_token_cut(tokenizer, ids):
    """The cut this project used before: per-token bracket counts, a token that overshoots dropped."""
    depth = 0
    for i, t in enumerate(ids):
        piece = tokenizer.convert_ids_to_tokens(t)
        delta = piece.count("(") - piece.count(")")
        depth += delta
        if depth < 0:
            return i
        if depth == 0 and delta:
            return i + 1
    return len(ids)


@pytest.mark.parametrize("text, middle", [
    ("(a (b c))) (tail)", "(a (b c))"),        # ")))" closes one bracket more than is open
    ("(mover win))) (x)", "(mover win)"),       # ")))" closes two more
    ("(sites (row 0))) (play", "(sites (row 0))"),
])
def test_cut_by_characters_keeps_a_merged_closing_token(merging_tokenizer, text, middle):
    tok = merging_tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ")))" in tok.convert_ids_to_tokens(ids)  # the tokenizer really merges the brackets
    keep, got = L.cut_generation(tok, ids)
    assert got == middle and tok.convert_ids_to_tokens(ids[keep - 1]) == ")))"
    assert tok.decode(ids[:keep]).startswith(middle) and F.balance_point(tok.decode(ids[:keep - 1])) is None
    assert F.cut_middle(tok.decode(ids[:_old_token_cut(tok, ids)])) != middle  # the old cut lost the ")"


def test_cut_stops_at_eos_and_keeps_at_least_one_token(game_tokenizer):
    tok = game_tokenizer
    ids = tok("(a (b", add_special_tokens=False)["input_ids"]
    assert L.cut_generation(tok, ids + [tok.eos_token_id] + ids) == (len(ids), "(a (b")  # never past [EOS]
    assert L.cut_generation(tok, [tok.eos_token_id, *ids]) == (1, "")                  # PPO needs a response
    assert L.cut_generation(tok, ids) == (len(ids), "(a (b")                            # never balances: all of it


def test_stopping_rule_stops_at_the_merged_token(merging_tokenizer):
    import torch
    tok = merging_tokenizer
    prompt = tok("### MID:", add_special_tokens=False)["input_ids"]
    gen = tok("(a (b c))) (tail)", add_special_tokens=False)["input_ids"]
    stop = L._BalancedStop(tok, len(prompt))
    merged = tok.convert_ids_to_tokens(gen).index(")))")
    decisions = [bool(stop(torch.tensor([prompt + gen[:k]]), None)[0]) for k in range(1, len(gen) + 1)]
    assert decisions == [k > merged for k in range(1, len(gen) + 1)]


def test_generate_middles_cuts_where_brackets_balance(game_tokenizer, merging_tokenizer):
    import torch
    from rlformal_utils.pretrain import build_gpt2

    for tok in (game_tokenizer, merging_tokenizer):
        model = build_gpt2("tiny", tok, n_positions=512, seed=0).eval()
        examples = F.fim_examples("tic_tac_toe", BUNDLED["tic_tac_toe"])[:6]
        torch.manual_seed(0)
        out = L.generate_middles(model, tok, [L.encode_prompt(tok, e) for e in examples], max_new_tokens=24)
        assert len(out) == 6
        for o in out:
            raw, kept = o["raw_ids"], o["ids"].tolist()
            assert 1 <= len(kept) <= len(raw) <= 24 and raw[:len(kept)] == kept
            keep, middle = L.cut_generation(tok, raw)
            assert kept == raw[:keep] and o["middle"] == middle == F.cut_middle(middle)
            if F.balance_point(tok.decode(kept)) is not None:  # balanced: the last kept token reached it
                assert F.balance_point(tok.decode(kept[:-1])) is None


# ----------------------------------------------------------------------------- evaluation and tables
class _FixedRewarder:
    """Scores a description by a lookup, as the tests of the summaries need no engine."""

    def __init__(self, statuses: dict):
        self.statuses = statuses

    def evaluate(self, games):
        values = {"playable": 0.9, "not_playable": 0.05, "no_compile": 0.0}
        return [R.GameResult(self.statuses.get(g, "no_compile"), values[self.statuses.get(g, "no_compile")])
                for g in games]


def test_score_middles_counts_compiles_playable_copies_and_novel_games():
    ex = F.fim_examples("hex", BUNDLED["hex"])[:4]
    middles = [ex[0].middle, "(x)", "(y)", "(y)"]
    games = [e.rebuild(m) for e, m in zip(ex, middles)]
    rewarder = _FixedRewarder({games[0]: "playable", games[1]: "not_playable", games[2]: "playable",
                               games[3]: "playable"})
    summary, rows = E.score_middles(rewarder, ex, middles, set(BUNDLED.values()))
    assert summary == dict(n=4, compile_share=1.0, playable_share=0.75, mean_reward=pytest.approx((0.9 * 3 + 0.05) / 4),
                           exact_share=0.25, novel_playable_share=0.5, novel_playable_games=2)
    assert [r["novel"] for r in rows] == [False, False, True, True]  # the copy rebuilds hex itself


def _summary(sft_playable, ppo_playable, seed=0):
    arm = lambda p: dict(n=48, compile_share=p, playable_share=p, mean_reward=p / 2, exact_share=0.1,
                         novel_playable_share=0.0, novel_playable_games=1)
    return dict(config=dict(seed=seed, ppo_steps=80), n_ppo_prompts=120, seconds_per_step=12.0,
                heldout=dict(original=arm(1.0), sft=arm(sft_playable), ppo=arm(ppo_playable)))


def test_run_result_states_the_run_from_its_own_numbers():
    text = E.run_result(_summary(0.125, 0.25), [0.1, 0.2, 0.2, 0.3, 0.3, 0.3])
    assert "PPO wrote more playable games than the SFT model" in text
    assert "playable 0.125 (SFT) -> 0.250 (PPO)" in text and "0.167 (mean of the first 3 steps) -> 0.300" in text
    assert "fewer playable games" in E.run_result(_summary(0.25, 0.125), [])
    assert "as many playable games as" in E.run_result(_summary(0.2, 0.2), [])
    assert "within sampling noise" in text  # 0.125 -> 0.250 over 48 middles: sd of the difference ~0.079
    assert "larger than twice its sampling sd" in E.run_result(_summary(0.1, 0.6), [])


def _heldout_frame():
    rows = []
    for seed, (sft, ppo) in enumerate([(0.1, 0.3), (0.2, 0.1)]):
        for arm, p in (("original", 1.0), ("sft", sft), ("ppo", ppo)):
            rows.append(dict(n=48, compile_share=p, playable_share=p, mean_reward=p, exact_share=0.0,
                             novel_playable_share=0.0, novel_playable_games=seed + 1, run=f"r{seed}", seed=seed,
                             arm=arm, ppo_steps=80, seconds_per_step=12.0, train_seconds=960.0))
    return pd.DataFrame(rows)


def test_tables_use_the_sample_sd_and_one_row_per_run():
    heldout = _heldout_frame()
    table = plots.summary_table(heldout).set_index("middles from")
    assert table.loc["SFT model", "playable"] == "0.150 ± 0.071 (2)"  # ddof=1: sd of (0.1, 0.2) is 0.0707
    assert table.loc["PPO model", "playable"] == "0.200 ± 0.141 (2)"
    assert table.loc["PPO model", "novel playable games (sum)"] == 3
    runs = plots.runs_table(heldout)
    assert list(runs["run"]) == ["r0", "r1"] and list(runs["ppo_playable_share"]) == [0.3, 0.1]
    metrics = pd.DataFrame([dict(run=f"r{s}", step=k, reward=0.1 * s + 0.01 * k) for s in (0, 1) for k in range(1, 41)])
    text = plots.findings(heldout, metrics)
    assert "seed 0: 0.100 -> 0.300, seed 1: 0.200 -> 0.100" in text and "above SFT in 1 of 2 seeds, below in 1" in text
