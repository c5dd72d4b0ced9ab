"""The game reward's speed-ups change no score: exact rewards and playout counts captured before them.

``games_reward_scores.json`` holds 43 descriptions (every bundled game, generated middles spliced into
their games, unplayable and non-compiling ones) with the scores the reward gave them before any
speed-up. The quick test re-scores a fixed subset of QUICK cases in this process with the speed-ups
on and off (about 20 s each on 2 quiet cores); ``RLFORMAL_FULL_REWARD_FIXTURE=1`` re-scores all 43
(minutes). The tables ludax builds from a board's geometry are compared with ludax's own on boards of
every shape, and ``fast=False`` must leave ludax as installed (the benchmark's "before").
"""
import json
import os
from pathlib import Path

import pytest

from rlformal_utils.games import reward as R
from rlformal_utils.games.fim import bundled_games, normalise

FIXTURE = json.loads((Path(__file__).parent / "games_reward_scores.json").read_text())
QUICK = ["bundled:tic_tac_toe", "bundled:yavalath", "bundled:hop_through", "bundled:hex",
         "gen:yavalath:(square 1)", "gen:tic_tac_toe:(square 13)", "gen:yavalath:(square 8)",
         "gen:hex:(P1 P1)", "gen:tic_tac_toe:(mover win)", "gen:tic_tac_toe:(destination (center))",
         "notplayable:ttt_full", "gen:tic_tac_toe:(P1 P2)", "gen:yavalath:(count (actions))",
         "gen:hex:(square direction: white)"]
FIELDS = ("status", "reward", "p1_wins", "p2_wins", "draws", "unfinished", "mean_length")


def description(case: dict) -> str:
    text = normalise(bundled_games()[case["game"]])
    if case["edit"] is None:
        return text
    start, end, middle = case["edit"]
    return text[:start] + middle + text[end:]


def score(case: dict, **options) -> dict:
    r = R.evaluate_in_process(description(case), **FIXTURE["settings"], **options)
    return {k: getattr(r, k) for k in FIELDS if k in case}


def expected(case: dict) -> dict:
    return {k: case[k] for k in FIELDS if k in case}


def test_fixture_covers_every_kind_of_outcome():
    cases = FIXTURE["cases"]
    statuses = {c["status"] for c in cases}
    assert statuses == {"playable", "not_playable", "no_compile"}
    assert {c["game"] for c in cases if c["name"].startswith("bundled:")} == set(bundled_games())
    assert sum(c["name"].startswith("gen:") and c["status"] == "playable" for c in cases) >= 10
    names = [c["name"] for c in cases]
    assert set(QUICK) <= set(names) and len(set(names)) == len(names)
    assert {c["status"] for c in cases if c["name"] in QUICK} == statuses


@pytest.mark.parametrize("fast", [True, False])
def test_quick_subset_scores_exactly_as_captured(fast):
    got = {c["name"]: score(c, fast=fast) for c in FIXTURE["cases"] if c["name"] in QUICK}
    want = {c["name"]: expected(c) for c in FIXTURE["cases"] if c["name"] in QUICK}
    assert got == want


@pytest.mark.skipif(not os.environ.get("RLFORMAL_FULL_REWARD_FIXTURE"), reason="minutes: set RLFORMAL_FULL_REWARD_FIXTURE=1")
@pytest.mark.parametrize("fast", [True, False])
def test_every_fixture_case_scores_exactly_as_captured(fast):
    got = {c["name"]: score(c, fast=fast) for c in FIXTURE["cases"]}
    assert got == {c["name"]: expected(c) for c in FIXTURE["cases"]}


def test_a_bad_board_table_file_is_computed_again(tmp_path):
    case = next(c for c in FIXTURE["cases"] if c["name"] == "bundled:tic_tac_toe")
    try:
        R.set_board_cache(tmp_path)
        R._prepare_ludax()
        import ludax.utils
        info = _board_info(description(case))
        table = ludax.utils._get_adjacency_lookup.uncached(info)
        assert (R._on_disk(ludax.utils._get_adjacency_lookup.uncached, info, ("k",)) == table).all()
        files = list(tmp_path.glob("*.npy"))
        assert len(files) == 1
        def not_called(_):
            raise AssertionError("the table should come from the file")

        not_called.__name__ = ludax.utils._get_adjacency_lookup.uncached.__name__
        again = R._on_disk(not_called, info, ("k",))
        assert again.dtype == table.dtype and (again == table).all()
        files[0].write_bytes(b"not a table")
        assert (R._on_disk(ludax.utils._get_adjacency_lookup.uncached, info, ("k",)) == table).all()
    finally:
        R.set_board_cache(None)


def _board_info(text: str):
    import ludax
    from lark import Lark
    from ludax.game_info import GameInfoExtractor
    return GameInfoExtractor()(Lark(ludax.grammar, start="game").parse(text))[0]


BOARDS = ["(square 1)", "(square 3)", "(square 4)", "(rectangle 2 5)", "(hexagon 3)", "(hexagon 5)",
          "(hex_rectangle 3 4)", "(hex_rectangle 1 3)"]


def _info(board: str):
    case = next(c for c in FIXTURE["cases"] if c["name"] == "bundled:tic_tac_toe")
    text = description(case)
    assert "(board (square 3))" in text
    return _board_info(text.replace("(board (square 3))", f"(board {board})"))


def _arrays(out):
    import numpy as np
    return [(a.shape, str(a.dtype), getattr(a, "weak_type", None), np.asarray(a).tolist())
            for a in (out if isinstance(out, tuple) else (out,))]


def test_whole_board_adjacency_is_ludax_per_cell_table():
    R._prepare_ludax()
    import ludax.utils
    per_cell = ludax.utils._get_adjacency_lookup.uncached
    whole = R._whole_board_adjacency(per_cell)
    for board in BOARDS:
        info = _info(board)
        assert _arrays(whole(info)) == _arrays(per_cell(info)), board
    table = whole(_info("(square 3)")).tolist()  # 8 directions, opposite ones at c and 7 - c; cells row by row
    centre = [[j for j in range(9) if table[c][4][j]] for c in range(8)]
    assert sorted(sum(centre, [])) == [0, 1, 2, 3, 5, 6, 7, 8] and all(len(n) == 1 for n in centre)
    assert all(centre[c][0] + centre[7 - c][0] == 8 for c in range(8))  # opposite directions, mirrored cells
    assert sum(table[c][0][j] for c in range(8) for j in range(9)) == 3  # a corner has three neighbours


def test_index_tables_built_with_numpy_are_ludax_tables():
    R._prepare_ludax()
    import numpy as np
    import ludax.utils as U
    from ludax.config import EdgeTypes, Orientations
    calls = []
    for board in BOARDS:
        info = _info(board)
        calls += [("_get_line_indices", (info, n, o)) for n in (2, 3, 4) for o in Orientations]
        calls += [("_get_custodial_indices", (info, n, o)) for n in (1, 2) for o in ("any", "horizontal")]
        calls += [("_get_edge_indices", (info, e)) for e in EdgeTypes]
        calls += [("_get_row_indices", (info, 0)), ("_get_column_indices", (info, 1)), ("_get_corner_indices", (info,))]
    for name, args in calls:
        ludax_fn = getattr(U, name).jax_only
        runs = []

        def counted(*a):
            runs.append(U.jnp is np)
            return ludax_fn(*a)

        got = R._with_numpy(counted)(*args)
        assert runs == [True], (name, args[1:])  # built once, with numpy, no fallback
        assert _arrays(got) == _arrays(ludax_fn(*args)), (name, args[1:])
    assert R._with_numpy(lambda: [1, 2])() == [1, 2]  # not an array: ludax's own result


def test_without_speedups_ludax_runs_as_installed(monkeypatch):
    R._prepare_ludax()
    import ludax
    import ludax.environment
    import ludax.utils as U
    import numpy as np
    info = _info("(square 3)")
    runs = []

    def table():
        runs.append(U.jnp is np)
        return np.zeros(2)

    monkeypatch.setitem(R._SPEEDUPS, "on", False)
    assert U._get_adjacency_lookup(info) is not U._get_adjacency_lookup(info)  # no memo
    assert ludax.environment.Lark(ludax.grammar, start="game") is not ludax.environment.Lark(ludax.grammar, start="game")
    R._with_numpy(table)()
    monkeypatch.setitem(R._SPEEDUPS, "on", True)
    assert U._get_adjacency_lookup(info) is U._get_adjacency_lookup(info)
    assert ludax.environment.Lark(ludax.grammar, start="game") is ludax.environment.Lark(ludax.grammar, start="game")
    R._with_numpy(table)()
    assert runs == [False, True]
    assert R.evaluate_in_process("(game", fast=False).status == "no_compile" and R._SPEEDUPS["on"]
