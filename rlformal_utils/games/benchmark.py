"""What one game-reward evaluation costs, with the score-neutral speed-ups of ``reward.py`` off and on.

    python -m rlformal_utils.games.benchmark                   # 16 generated playable games, 32 playouts
    python -m rlformal_utils.games.benchmark --cases all --max-tasks 1

The descriptions are the playable ones of ``tests/games_reward_scores.json`` (generated middles
spliced into their games; ``--cases bundled``: the bundled games), each new to both rewarders (no reward cache). Two
``GameRewarder`` workers, one per setting, score the same description one after the other, taking
turns at going first, so that the machine's load weighs on both alike: "before" is ludax as
installed (``fast=False``), "after" every speed-up of ``reward.py``. ``--max-tasks 1`` restarts
each worker after every description (a worker's in-memory board tables are lost; the fast one
keeps them on disk, in a fresh temporary folder). Prints numbers; exits with an error if the two
settings score any description differently.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from .fim import bundled_games, normalise
from .rewarder import GameRewarder

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "games_reward_scores.json"
PREFIX = {"generated": "gen:", "bundled": "bundled:"}  # how the fixture names each kind of case


def playable_cases(limit: int = 0, kind: str = "generated") -> list[tuple[str, str]]:
    games = {n: normalise(t) for n, t in bundled_games().items()}
    out = []
    for case in json.loads(FIXTURE.read_text())["cases"]:
        if case["status"] != "playable" or (kind != "all" and not case["name"].startswith(PREFIX[kind])):
            continue
        text = games[case["game"]]
        if case["edit"] is not None:
            start, end, middle = case["edit"]
            text = text[:start] + middle + text[end:]
        out.append((case["name"], text))
    return out[:limit] if limit else out


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", choices=("generated", "bundled", "all"), default="generated",
                    help="generated middles spliced into their games (the default), the bundled games, or both")
    ap.add_argument("--limit", type=int, default=0, help="first N playable cases (0: all)")
    ap.add_argument("--n-playouts", type=int, default=32)
    ap.add_argument("--max-turns", type=int, default=500)
    ap.add_argument("--max-tasks", type=int, default=40, help="descriptions per worker before it restarts")
    args = ap.parse_args(argv)
    cases = playable_cases(args.limit, args.cases)
    print(f"{len(cases)} playable descriptions, {args.n_playouts} playouts of at most {args.max_turns} turns, "
          f"a worker restarts every {args.max_tasks} descriptions")
    print("load before:", load())
    rows = {False: [], True: []}
    differ = []
    with tempfile.TemporaryDirectory() as boards:
        common = dict(workers=1, timeout=600, n_playouts=args.n_playouts, max_turns=args.max_turns,
                      max_tasks_per_worker=args.max_tasks)
        rewarders = {False: GameRewarder(fast=False, board_cache_dir=None, **common),
                     True: GameRewarder(fast=True, board_cache_dir=boards, **common)}
        try:
            for r in rewarders.values():  # start and warm up both workers before any clock runs
                r.evaluate(["(warm up)"])
            for i, (name, text) in enumerate(cases):
                scores = {}
                for fast in ((False, True) if i % 2 == 0 else (True, False)):
                    t0 = time.perf_counter()
                    r = rewarders[fast].evaluate([text])[0]
                    wall = time.perf_counter() - t0
                    rows[fast].append(dict(name=name, wall=wall, build=r.build_seconds, jit=r.jit_seconds,
                                           play=r.play_seconds, inside=r.seconds))
                    scores[fast] = (r.status, r.reward, r.p1_wins, r.p2_wins, r.draws)
                same = "same score" if scores[False] == scores[True] else f"SCORES DIFFER {scores}"
                if scores[False] != scores[True]:
                    differ.append(name)
                print(f"{name:48s} before {rows[False][-1]['wall']:6.2f} s   after {rows[True][-1]['wall']:6.2f} s"
                      f"   {same}", flush=True)
        finally:
            for r in rewarders.values():
                r.close()
    print("load after: ", load())
    print(f"\nmedian seconds per new playable description ({len(cases)} descriptions; a worker's wall "
          "time from the parent; inside = the evaluation in the worker, build = parse + ludax rules, "
          "jit = first-position check + trace + XLA compile)")
    print(f"{'':8s} {'total':>7s} {'inside':>7s} {'build':>7s} {'jit':>7s} {'play':>7s}")
    med = {}
    for fast in (False, True):
        med[fast] = {k: statistics.median(row[k] for row in rows[fast]) for k in ("wall", "inside", "build", "jit", "play")}
        m = med[fast]
        print(f"{'after' if fast else 'before':8s} {m['wall']:7.2f} {m['inside']:7.2f} {m['build']:7.2f} "
              f"{m['jit']:7.2f} {m['play']:7.2f}")
    ratios = sorted(b["wall"] / a["wall"] for a, b in zip(rows[True], rows[False]))
    print(f"median cost before / after: {med[False]['wall'] / med[True]['wall']:.2f}x "
          f"(per description: median {statistics.median(ratios):.2f}x, range {ratios[0]:.2f}x-{ratios[-1]:.2f}x); "
          f"total {sum(r['wall'] for r in rows[False]):.0f} s -> {sum(r['wall'] for r in rows[True]):.0f} s")
    if differ:
        raise SystemExit(f"the two settings scored {len(differ)} descriptions differently: {', '.join(differ)}")


if __name__ == "__main__":
    main()
