"""The findings at a glance and the experiments' headline numbers, computed from the files the runs
and the figure notebooks write, and pasted into the README and docs/.

    python -m rlformal_utils.findings              # writes results/findings.md, refreshes the blocks
    python -m rlformal_utils.findings --check      # exit 1 if a block in README.md or docs/ is stale

A generated block in a Markdown file sits between two markers that name its source:

    <!-- BEGIN results/arithmetic_summary.md -->      the whole file
    <!-- BEGIN results/findings.md#glance -->         one block of results/findings.md
    ...
    <!-- END results/findings.md#glance -->

Everything between the markers is replaced; nothing else in the file is touched, and a file is only
written when its text changes (a redraw on unchanged results leaves git clean).
Sources: ``results/<experiment>/<run>/summary.json`` (arithmetic, both profiles),
``results/sentiment_runs.csv``, ``results/games_runs.csv`` and ``results/timings.csv``.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

from .runs import REPO_ROOT

TRL_SENTIMENT_GAIN = 2.24  # TRL's gpt2-sentiment notebook: mean reward 0.24 -> 2.48 on held-out queries
DOCS = ["README.md", "docs/arithmetic.md", "docs/sentiment.md", "docs/games.md", "docs/performance.md",
        "docs/cluster.md"]
MARKER = re.compile(r"(<!-- BEGIN (?P<src>[^ ]+) -->\n)(?P<body>.*?)(<!-- END (?P=src) -->)", re.S)


# ----------------------------------------------------------------------------- statistics
def mean_sd(values) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if x == x], dtype=float)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v)


def pm(values, digits: int = 3, n: bool = True, unit: str = "") -> str:
    """``0.938 ± 0.027 (n=3)``; one value alone has no spread: ``0.920 (n=1)``."""
    m, s, k = mean_sd(values)
    if not k:
        return "not run"
    text = f"{m:.{digits}f}{unit}" if k == 1 else f"{m:.{digits}f} ± {s:.{digits}f}{unit}"
    return f"{text} (n={k})" if n else text


def mean(values, digits: int = 2) -> str:
    """The mean alone (for a number every seed shares, such as the score before training)."""
    m, _, k = mean_sd(values)
    return f"{m:.{digits}f}" if k else "n/a"


# ----------------------------------------------------------------------------- the data
def seedless(run: str) -> str:
    """A run's arm: its name without the ``_s<seed>`` suffix."""
    return re.sub(r"_s\d+$", "", run)


def arithmetic_runs(results: Path) -> dict[str, list[dict]]:
    """Every complete arithmetic run of the quick and long profiles, grouped by arm (run name
    without its seed), each as {run, profile, config, heldout, unseen, answers_seen, cpu_seconds}."""
    arms: dict[str, list[dict]] = {}
    for profile, sub in [("quick", results / "arithmetic"), ("long", results / "long" / "arithmetic")]:
        for path in sorted(sub.glob("*/summary.json")):
            if not (path.parent / "metrics.csv").exists():
                continue
            s = json.loads(path.read_text())
            final = s.get("final", {})
            arms.setdefault(f"{profile}:{seedless(path.parent.name)}", []).append(dict(
                run=path.parent.name, profile=profile, config=s.get("config", {}),
                heldout=final.get("heldout", {}), unseen=final.get("unseen", {}),
                answers_seen=s.get("answers_seen"), cpu_seconds=s.get("train_cpu_seconds"),
                naive_reward=s.get("naive_reward"), dir=path.parent))
    return arms


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.exists() else []


def num(rows: list[dict], col: str) -> list[float]:
    return [float(r[col]) for r in rows if r.get(col) not in (None, "")]


class Data:
    """What the findings read, loaded once."""

    def __init__(self, root: Path = REPO_ROOT):
        self.root = Path(root)
        results = self.root / "results"
        self.arith = arithmetic_runs(results)
        self.sentiment = [dict(r, profile="quick") for r in read_csv(results / "sentiment_runs.csv")]
        self.sentiment_long = [dict(r, profile="long") for r in read_csv(results / "long" / "sentiment_runs.csv")]
        self.games = read_csv(results / "games_runs.csv")
        self.timings = read_csv(results / "timings.csv")
        self.long_timings = read_csv(results / "long" / "timings.csv")
        self.runner_log = read_csv(results / "runner_log.csv")
        self.long_runner_log = read_csv(results / "long" / "runner_log.csv")

    def arm(self, name: str) -> list[dict]:
        return self.arith.get(name, [])

    def exact(self, name: str, split: str = "heldout") -> list[float]:
        return [r[split].get("greedy_exact_match", float("nan")) for r in self.arm(name)]

    def max_share(self, name: str) -> list[float]:
        return [r["heldout"].get("eval_max_share", float("nan")) for r in self.arm(name)]

    def sentiment_rows(self, kl: float, algorithm: str = "ppo", long: bool = False) -> list[dict]:
        """The quick (or ``long``) profile's sentiment runs of one KL coefficient and algorithm with
        the algorithm's other settings at their defaults (a run that names no algorithm is PPO)."""
        return [r for r in (self.sentiment_long if long else self.sentiment)
                if float(r["kl_coef"]) == kl and sentiment_algorithm(r) == algorithm
                and sentiment_update(r) == sentiment_update(dict(kl_coef=kl, algorithm=algorithm))]

    def sentiment_pick(self, kl: float, algorithm: str = "ppo") -> tuple[list[dict], str]:
        """The runs of a setting from the quick profile, else from the long one: (runs, where)."""
        rows = self.sentiment_rows(kl, algorithm)
        if rows:
            return rows, ""
        rows = self.sentiment_rows(kl, algorithm, long=True)
        return rows, " (long profile)" if rows else ""


def sentiment_algorithm(row: dict) -> str:
    return row.get("algorithm") or "ppo"


def sentiment_update(row: dict) -> str:
    """A run's update settings (``sentiment_runs.csv``'s ``update``; for older rows its KL coefficient)."""
    if row.get("update"):
        return row["update"]
    from .sentiment.plots import update_label
    return update_label(dict(kl_coef=float(row["kl_coef"]), adaptive_kl=False, algorithm=sentiment_algorithm(row)))


SENTIMENT_ALGORITHMS = {"ppo": "PPO", "group": "group-relative"}


# Arms the findings read (quick unless prefixed long:).
GROUP_BATCH = "quick:group_batch_kl-policy_pre256"
GROUP_NONE = "quick:group_none_kl-policy_pre256"
PPO_NONE = "quick:ppo_none_kl-policy_pre256"
PPO_TOKEN = "quick:ppo_token_kl-policy_pre256"
PPO_BATCH = "quick:ppo_batch_kl-policy_pre256"
PPO_BOTH = "long:ppo_both_kl-policy_pre256"
PPO_FROZEN = "long:ppo_none_kl-frozen_pre256"
PPO_FIXED = "long:ppo_none_kl-frozen-fixed0.03_pre256"
SUPERVISED = "long:supervised_pre256"
BASE = "quick:none_pre256"


def judged(d: Data):
    """Every arithmetic run (quick and long) judged by the one collapse criterion of
    ``rlformal_utils.arithmetic.stability``, loaded once."""
    if not hasattr(d, "_judged"):
        from .arithmetic import stability as S
        try:
            d._judged = S.load(S.profile_dirs(d.root / "results" / "arithmetic", "quick"))
        except FileNotFoundError:
            d._judged = None
    return d._judged


def collapsed(d: Data, name: str) -> tuple[int, int]:
    """(runs of the arm that collapsed, runs judged), by the stability criterion."""
    j = judged(d)
    if j is None:
        return 0, 0
    runs = j[j["run"].isin([r["run"] for r in d.arm(name)]) & j["judged"]]
    return int(runs["collapsed"].sum()), len(runs)


def collapse_definition() -> str:
    from .arithmetic import stability as S
    return S.DEFINITION.split(" = ", 1)[1]


def batch_entropy_verdict(d: Data) -> str:
    """The paper's "batch entropy aids exploration, although training is not yet entirely stable", for
    PPO with KL 0: it helps if its mean beats no entropy term's by more than the larger seed sd; the
    benefit is specific if token entropy's mean is not within that margin; unstable if its seeds spread
    widest of the PPO arms or one of its runs collapsed."""
    none, token, batch = d.exact(PPO_NONE), d.exact(PPO_TOKEN), d.exact(PPO_BATCH)
    if len(batch) < 2 or len(none) < 2:
        return "not tested here"
    (mb, sb, _), (mn, sn, _) = mean_sd(batch), mean_sd(none)
    helps = mb - mn > max(sb, sn)
    specific = True
    if len(token) > 1:
        mt, st, _ = mean_sd(token)
        specific = abs(mb - mt) > max(sb, st)
    others = [mean_sd(v)[1] for v in (none, token) if len(v) > 1]
    unstable = all(sb > s for s in others) or collapsed(d, PPO_BATCH)[0] > 0
    if not helps:
        return "contradicted"
    return "supported" if specific and unstable else "partly"


def stability_claim(d: Data) -> str:
    """The stability analysis' paragraph on the paper's claim, computed from every arithmetic run."""
    from .arithmetic import stability as S
    j = judged(d)
    return S.claim(j) if j is not None else "No arithmetic runs in results/."


def seeds_text(values, digits: int = 3) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


# ----------------------------------------------------------------------------- the blocks
def _link(text: str, path: str) -> str:
    return f"[{text}]({path})"


def sentiment_verdict(rows: list[dict]) -> str:
    """Supported when the main setting meets our three acceptance targets on average, partly when the
    reward gain does but the judge or the fluency target does not, contradicted when the gain does not."""
    if not rows:
        return "not tested here"
    gain, judge, ratio = (mean_sd(num(rows, c))[0] for c in ("reward_gain", "judge_positive_after", "perplexity_ratio"))
    if gain < 2.0:
        return "contradicted"
    return "supported" if judge >= 0.8 and ratio <= 1.5 else "partly"


def glance(d: Data) -> str:
    """The findings-at-a-glance table: the paper's claims, then ours."""
    rows = []
    base = d.exact(BASE)
    base_txt = f"{base[0]:.3f}" if base else "n/a"
    c, n = collapsed(d, PPO_NONE)
    # 1. PPO learns from a programmed reward
    rows.append(("PPO trains an LM directly from a programmed reward",
                 f"arithmetic, held-out exact match from {base_txt}: PPO + token entropy {pm(d.exact(PPO_TOKEN))}; "
                 f"PPO, frozen reference (trl's default) {pm(d.exact(PPO_FROZEN))}",
                 ("supported" if max(mean_sd(d.exact(PPO_TOKEN))[0], mean_sd(d.exact(PPO_FROZEN))[0]) > 0.5 else
                  "partly" if d.exact(PPO_TOKEN) else "not tested here"),
                 "arithmetic_learning_curves.png", "arithmetic.ipynb"))
    # 2. sentiment validates the setup
    main, group = d.sentiment_rows(0.2), quick_group(d)
    rows.append(("Sentiment alignment validates the setup",
                 f"PPO, KL 0.2: reward gain {pm(num(main, 'reward_gain'), 2, unit=' logits')} (TRL's GPT-2 run: "
                 f"+{TRL_SENTIMENT_GAIN}); judge's positive share {mean(num(main, 'judge_positive_before'))} -> "
                 f"{pm(num(main, 'judge_positive_after'), 2, False)}; perplexity "
                 f"{pm(num(main, 'perplexity_ratio'), 2, False, unit='x')} the base model's"
                 + (f"; review share {mean(num(main, 'review_share_before'))} -> "
                    f"{pm(num(main, 'review_share_after'), 2, False)}" if num(main, "review_share_after") else ""),
                 sentiment_verdict(main), "sentiment_frontier.png", "sentiment.ipynb"))
    # 3. arithmetic collapses onto a naive answer
    rows.append(("Arithmetic: pure RL collapses onto a naive answer",
                 f"PPO, KL 0, no entropy term: {pm(d.exact(PPO_NONE))}, share of the most common answer "
                 f"{pm(d.max_share(PPO_NONE), 2, False)}; collapsed in {c}/{n} seeds (rolling max p̄ > 0.3)",
                 "supported" if n and 2 * c > n else ("partly" if c else ("contradicted" if n else "not tested here")),
                 "arithmetic_collapse.png", "arithmetic.ipynb"))
    # 4. batch entropy helps but training is not entirely stable
    batch = d.exact(PPO_BATCH)
    cb, nb = collapsed(d, PPO_BATCH)
    rows.append(("Batch entropy aids exploration, training not entirely stable",
                 f"PPO, KL 0: batch entropy {pm(batch)} (seeds {seeds_text(batch)}; collapsed {cb}/{nb}), token "
                 f"entropy {pm(d.exact(PPO_TOKEN), n=False)}, none {pm(d.exact(PPO_NONE), n=False)}; group-relative "
                 f"update {pm(d.exact(GROUP_BATCH), n=False)} with, {pm(d.exact(GROUP_NONE), n=False)} without",
                 batch_entropy_verdict(d), "arithmetic_learning_curves.png", "arithmetic_figures.ipynb"))
    # 5. direct RL suits small changes better than new tasks
    sup = d.exact(SUPERVISED)
    fewer = (f" on {d.arm(GROUP_BATCH)[0]['answers_seen'] / d.arm(SUPERVISED)[0]['answers_seen']:.0f}x fewer answers"
             if sup and d.arm(GROUP_BATCH) else "")
    g = d.games[0] if d.games else None
    games_txt = (f"; games, one seed: playable {float(g['sft_playable_share']):.3f} (SFT) -> "
                 f"{float(g['ppo_playable_share']):.3f} (PPO), within noise" if g else "")
    both = main + group
    small_txt = (f"; small change (sentiment, PPO and group-relative, {len(both)} seeds): all three targets in "
                 f"{sum(all_targets(r) for r in both)}/{len(both)}, perplexity ratio "
                 f"{min(num(both, 'perplexity_ratio')):.2f}-{max(num(both, 'perplexity_ratio')):.2f}x" if both else "")
    rows.append(("Direct RL suits small changes better than learning new tasks",
                 f"new task (arithmetic from scratch): group-relative {pm(d.exact(GROUP_BATCH))}, supervised "
                 f"{pm(sup)}{fewer}{games_txt}{small_txt}",
                 "partly", "arithmetic_learning_curves.png", "games.ipynb"))
    # ours
    rows.append(("*Ours:* group-relative update with batch entropy",
                 f"{pm(d.exact(GROUP_BATCH))} with batch entropy, {pm(d.exact(GROUP_NONE))} without, 1.0M answers",
                 "new here", "arithmetic_learning_curves.png", "arithmetic.ipynb"))
    if group and main:
        rows.append(("*Ours:* the group-relative update carries over to sentiment",
                     f"{group_setting_text(group)}, same sampled responses as PPO: gain {pm(num(group, 'reward_gain'), 2)} vs "
                     f"{pm(num(main, 'reward_gain'), 2, False)} ({difference_text(group, main, 'reward_gain')}); judge "
                     f"{pm(num(group, 'judge_positive_after'), 2, False)} vs {pm(num(main, 'judge_positive_after'), 2, False)} "
                     f"({difference_text(group, main, 'judge_positive_after')}); perplexity ratio "
                     f"{pm(num(group, 'perplexity_ratio'), 2, False, unit='x')} vs "
                     f"{pm(num(main, 'perplexity_ratio'), 2, False, unit='x')}; training "
                     f"{mean(num(group, 'train_seconds'), 0)} vs {mean(num(main, 'train_seconds'), 0)} s per run",
                     "new here", "sentiment_frontier.png", "sentiment_figures.ipynb"))
    rows.append(("*Ours:* it learns addition, not a table",
                 f"unseen additions {pm(d.exact(GROUP_BATCH, 'unseen'))} vs held-out "
                 f"{pm(d.exact(GROUP_BATCH), n=False)}",
                 "new here", "arithmetic_learning_curves.png", "arithmetic.ipynb"))
    rows.append(("*Ours:* trl's KL controller fights a one-token task",
                 f"PPO, frozen reference: trl's adaptive KL {pm(d.exact(PPO_FROZEN))}, fixed KL 0.03 "
                 f"{pm(d.exact(PPO_FIXED))} ({kl_coef_text(d)})",
                 "new here", "long/arithmetic_ppo_diagnostics.png", "arithmetic_figures.ipynb"))
    out = ["| claim | our number (mean ± sd, n seeds) | verdict | figure | notebook |", "|---|---|---|---|---|"]
    for claim_, number, verdict, fig, nb in rows:
        out.append(f"| {claim_} | {number} | **{verdict}** | {_link('figure', 'figures/' + fig)} | "
                   f"{_link(nb.replace('.ipynb', ''), 'notebooks/' + nb)} |")
    return "\n".join(out)


def quick_group(d: Data) -> list[dict]:
    """The quick profile's group-relative sentiment runs (its one setting)."""
    return next((rows for p, a, _, rows in sentiment_settings(d) if p == "quick" and a == "group"), [])


def group_setting_text(rows: list[dict]) -> str:
    """``group-relative (k = 8, KL 0.1)`` from the runs' settings."""
    r = rows[0]
    k = f"k = {int(float(r['group_size']))}, " if r.get("group_size") else ""
    return f"group-relative ({k}KL {float(r['kl_coef']):g})"


def difference_text(a: list[dict], b: list[dict], col: str) -> str:
    """``difference +1.65 [+0.62, +2.68]``: Welch's 95 % t-interval of the difference of the means,
    said to be inside the noise when it holds 0."""
    from .sentiment.intervals import difference_interval, fmt_interval
    diff, lo, hi = difference_interval(num(a, col), num(b, col))
    noise = f", inside the noise of {len(a)} + {len(b)} seeds" if lo <= 0 <= hi else ""
    return "difference " + fmt_interval(diff, lo, hi, digits=2, signed=True) + noise


def kl_coef_text(d: Data) -> str:
    """How far trl's adaptive controller drives the KL coefficient in the frozen-reference runs."""
    import pandas as pd
    ends = []
    for r in d.arm(PPO_FROZEN):
        m = pd.read_csv(r["dir"] / "metrics.csv", usecols=["kl_coef"]).dropna()
        if len(m):
            ends.append((m["kl_coef"].iloc[0], m["kl_coef"].iloc[-1]))
    if not ends:
        return "no KL coefficient logged"
    lo, hi = min(e for _, e in ends), max(e for _, e in ends)
    return f"trl's coefficient {ends[0][0]:.2f} -> {lo:.3f}" + (f"-{hi:.3f}" if f"{hi:.3f}" != f"{lo:.3f}" else "")


def timings(d: Data) -> str:
    """Per profile, the latest ./run_all.sh that trained all of the profile's experiments
    (results/timings.csv), with the run-slot seconds per experiment of that invocation (its runs are
    the last rows of results/runner_log.csv)."""
    out = ["| profile | runs | wall minutes | run-slot seconds per experiment | jobs x threads | load at start | "
           "empty cache |", "|---|---|---|---|---|---|---|"]
    for profile, rows, log in [("quick", d.timings, d.runner_log), ("long", d.long_timings, d.long_runner_log)]:
        if not rows:
            continue
        widest = max(len(r["experiments"].split()) for r in rows)
        r = [r for r in rows if len(r["experiments"].split()) == widest][-1]
        slots = ""
        if r is rows[-1] and len(log) >= int(r["runs"]):  # its runs are the log's last rows
            per: dict[str, float] = {}
            for row in log[-int(r["runs"]):]:
                per[row["experiment"]] = per.get(row["experiment"], 0.0) + float(row["wall_seconds"])
            slots = ", ".join(f"{e} {s:,.0f}" for e, s in per.items())
        out.append(f"| {profile} ({r['experiments']}) | {r['runs']} | {float(r['wall_seconds']) / 60:.1f} | {slots} | "
                   f"{r['jobs']} x {r['threads_per_job']} | {float(r['load_average_start']):.2f} | {r['cache_empty']} |")
    return "\n".join(out)


def _answers(r: dict) -> str:
    """A run's most common greedy held-out answers: ``20 (179), 30 (160)``."""
    counts = sorted(r["heldout"].get("greedy_answers", {}).items(), key=lambda kv: -kv[1])
    return ", ".join(f"{a} ({c})" for a, c in counts[:2]) + f" of {sum(c for _, c in counts)}"


def arithmetic(d: Data) -> str:
    """The arithmetic findings, in words, every number read from the runs."""
    out = []
    gb, gn = d.arm(GROUP_BATCH), d.arm(GROUP_NONE)
    if gb:
        c, n = collapsed(d, GROUP_BATCH)
        out.append(f"- **RL from the programmed reward teaches addition, with the right update.** The group-relative "
                   f"update with batch entropy takes the base model ({pm(d.exact(BASE), n=False)}) to "
                   f"{pm(d.exact(GROUP_BATCH))} held-out exact match and {pm(d.exact(GROUP_BATCH, 'unseen'), n=False)} "
                   f"on unseen additions after {gb[0]['answers_seen']:,} sampled answers; {c} of {n} seeds collapse.")
    if gn:
        out.append(f"- **Batch entropy is what makes it work.** Without it the same update ends at "
                   f"{pm(d.exact(GROUP_NONE))}, its answers piled on a few values (max p̄ "
                   f"{pm(d.max_share(GROUP_NONE), 2, False)}). Once all 8 answers to a prompt agree, every advantage "
                   f"of that group is 0 and the prompt teaches nothing; batch entropy spreads the answers again.")
    pn = d.arm(PPO_NONE)
    if pn:
        c, n = collapsed(d, PPO_NONE)
        out.append(f"- **The paper's setting collapses.** PPO with KL 0 and no entropy term ends at {pm(d.exact(PPO_NONE))} "
                   f"with {pm(d.max_share(PPO_NONE), 2, False)} of its held-out answers on one number; it collapsed in "
                   f"{c}/{n} seeds ({collapse_definition()}) (seed {pn[0]['config'].get('seed', 0)}'s most common answers: "
                   f"{_answers(pn[0])}).")
    pt, pb = d.arm(PPO_TOKEN), d.arm(PPO_BATCH)
    if pt or pb:
        steady = mean_sd(d.exact(PPO_BATCH))[1] > mean_sd(d.exact(PPO_TOKEN))[1]
        out.append(f"- **Either entropy term rescues PPO{', batch entropy less steadily' if steady else ''}.** Token entropy "
                   f"{pm(d.exact(PPO_TOKEN))} (seeds {seeds_text(d.exact(PPO_TOKEN))}), batch entropy "
                   f"{pm(d.exact(PPO_BATCH))} (seeds {seeds_text(d.exact(PPO_BATCH))}), after "
                   f"{(pt or pb)[0]['answers_seen']:,} answers.")
    sup = d.arm(SUPERVISED)
    if sup and gb:
        ratio = gb[0]["answers_seen"] / sup[0]["answers_seen"]
        out.append(f"- **Supervised training is still better and cheaper** (`long` profile): cross-entropy on the true "
                   f"answer reaches {pm(d.exact(SUPERVISED))} ({pm(d.exact(SUPERVISED, 'unseen'), n=False)} unseen) "
                   f"on {ratio:.0f}x fewer answers than the group-relative update.")
    return "\n".join(out) if out else "No arithmetic runs in results/."


def ci(rows: list[dict], col: str, digits: int = 2, signed: bool = False, unit: str = "") -> str:
    """The mean over seeds with its 95 % t-interval; one seed: its 95 % bootstrap interval over the
    held-out prompts (``<col>_lo`` / ``_hi`` of sentiment_runs.csv) when it has one."""
    from .sentiment.intervals import BOUNDS, fmt_interval, t_interval
    m, lo, hi, n = t_interval(num(rows, col), bounds=BOUNDS.get(col, (-np.inf, np.inf)))
    if not n:
        return "n/a"
    if n == 1 and num(rows, f"{col}_lo") and num(rows, f"{col}_hi"):
        lo, hi = num(rows, f"{col}_lo")[0], num(rows, f"{col}_hi")[0]
    return fmt_interval(m, lo, hi, digits, signed, unit)


def sentiment_settings(d: Data) -> list[tuple[str, str, str, list[dict]]]:
    """(profile, algorithm, update settings, runs) of every sentiment setting: the quick profile's,
    then the long one's; PPO first, then by KL coefficient."""
    out = []
    for profile, rows in (("quick", d.sentiment), ("long", d.sentiment_long)):
        keys = {(sentiment_algorithm(r), sentiment_update(r)): float(r["kl_coef"]) for r in rows}
        for (algorithm, update), kl in sorted(keys.items(), key=lambda kv: (kv[0][0] != "ppo", kv[0][0], kv[1], kv[0][1])):
            out.append((profile, algorithm, update, [r for r in rows if (sentiment_algorithm(r), sentiment_update(r))
                                                     == (algorithm, update)]))
    return out


def _algorithm_name(algorithm: str) -> str:
    return SENTIMENT_ALGORITHMS.get(algorithm, algorithm)


def _setting_name(algorithm: str, update: str) -> str:
    """``KL 0.05, k4, entropy 0.1``: the update settings without the algorithm's name."""
    return update.replace(f", {_algorithm_name(algorithm)} ", ", ")


def sentiment_table(d: Data) -> str:
    """One row per profile, algorithm and setting: each after-training number as the mean over seeds
    with its 95 % interval, and how many seeds meet each target."""
    out = ["| profile | update | setting | seeds | reward gain | judge positive before -> after | perplexity ratio | "
           "review share before -> after | distinct-2 after | KL at the end (nats) | seeds meeting gain / judge / "
           "ratio / all |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for profile, algorithm, update, rows in sentiment_settings(d):
        if profile == "long" and algorithm != "ppo":
            continue  # the group-relative sweep: results/long/sentiment_summary.md
        met = [sum(float(r["reward_gain"]) >= 2.0 for r in rows), sum(float(r["judge_positive_after"]) >= 0.8 for r in rows),
               sum(float(r["perplexity_ratio"]) <= 1.5 for r in rows), sum(all_targets(r) for r in rows)]
        review = (f"{mean(num(rows, 'review_share_before'))} -> {ci(rows, 'review_share_after')}"
                  if num(rows, "review_share_after") else "n/a")
        out.append(f"| {profile} | {_algorithm_name(algorithm)} | {_setting_name(algorithm, update)} | {len(rows)} | "
                   f"{ci(rows, 'reward_gain', signed=True)} | {mean(num(rows, 'judge_positive_before'))} -> "
                   f"{ci(rows, 'judge_positive_after')} | {ci(rows, 'perplexity_ratio', unit='x')} | {review} | "
                   f"{pm(num(rows, 'distinct_2_after'), 2, False)} (before {mean(num(rows, 'distinct_2_before'))}) | "
                   f"{pm(num(rows, 'final_kl'), 1, False)} | {' / '.join(f'{m}/{len(rows)}' for m in met)} |")
    out.append("")
    out.append("Intervals: 95 % t-interval of the mean over seeds; for one seed, 95 % paired bootstrap over its "
               "held-out prompts (1000 resamples). Targets: gain >= +2.0, judge >= 0.8, perplexity ratio <= 1.5x. "
               "The group-relative sweep (long profile): `results/long/sentiment_summary.md`.")
    return "\n".join(out)


def all_targets(r: dict) -> bool:
    """Our acceptance targets: reward gain >= +2.0 logits, judge >= 0.8 positive, perplexity ratio <= 1.5x."""
    return (float(r["reward_gain"]) >= 2.0 and float(r["judge_positive_after"]) >= 0.8
            and float(r["perplexity_ratio"]) <= 1.5)


def _meets(values, ok) -> str:
    return f"{sum(bool(ok(v)) for v in values)} of {len(values)} seeds ({seeds_text(values, 2)})"


def sentiment(d: Data) -> str:
    """The sentiment findings in words, against our acceptance targets; every verdict word is computed."""
    out = []
    (zero, zero_at), (main, _), (high, high_at) = d.sentiment_pick(0.0), d.sentiment_pick(0.2), d.sentiment_pick(0.6)
    if zero:
        hacking = mean_sd(num(zero, "perplexity_ratio"))[0] > 1.5
        review = (f"; review share {ci(zero, 'review_share_after')} (base model "
                  f"{mean(num(zero, 'review_share_before'))})" if num(zero, "review_share_after") else "")
        out.append(f"- **KL 0 (the paper's effective setting){zero_at} {'is reward hacking' if hacking else 'stays fluent'}**: "
                   f"gain {pm(num(zero, 'reward_gain'), 2, False)}, judge {pm(num(zero, 'judge_positive_after'), 2, False)}, "
                   f"perplexity {pm(num(zero, 'perplexity_ratio'), 2, False)}x and distinct-2 "
                   f"{pm(num(zero, 'distinct_2_after'), 2, False)} (base model {mean(num(zero, 'distinct_2_before'))}){review}.")
    if main:
        gain, ratio = mean_sd(num(main, "reward_gain"))[0], mean_sd(num(main, "perplexity_ratio"))[0]
        moves = "as much as TRL's run" if gain >= TRL_SENTIMENT_GAIN - 0.1 else "less than TRL's run"
        drifts = "and drifts" if ratio > 1.5 else "within the perplexity target"
        every = d.sentiment + d.sentiment_long
        out.append(f"- **PPO at KL 0.2 moves the reward {moves} (+{TRL_SENTIMENT_GAIN}), {drifts}.** Gain >= +2.0 in "
                   f"{_meets(num(main, 'reward_gain'), lambda v: v >= 2.0)}; judge >= 0.8 in "
                   f"{_meets(num(main, 'judge_positive_after'), lambda v: v >= 0.8)}; perplexity ratio <= 1.5x in "
                   f"{_meets(num(main, 'perplexity_ratio'), lambda v: v <= 1.5)}; all three targets in "
                   f"{sum(all_targets(r) for r in every)} of {len(every)} runs. The mean gain over {len(main)} seed"
                   f"{'s' if len(main) > 1 else ''} is {ci(main, 'reward_gain', signed=True)} (95 % interval).")
    if high:
        barely = mean_sd(num(high, "reward_gain"))[0] < 1.0
        steps = num(high, "steps")
        out.append(f"- **KL 0.6{high_at} {'barely moves' if barely else 'moves'}**"
                   f"{f' in {int(steps[0])} steps' if steps else ''}: gain {pm(num(high, 'reward_gain'), 2, False)}, "
                   f"judge {pm(num(high, 'judge_positive_after'), 2, False)}.")
    for profile, algorithm, update, rows in sentiment_settings(d):
        if algorithm == "ppo" or profile == "long":  # the long profile's sweep: in the table above
            continue
        name = _algorithm_name(algorithm)
        out.append(f"- **{name[0].upper() + name[1:]} update, {_setting_name(algorithm, update)}**"
                   f"{' (long profile)' if profile == 'long' else ''} ({len(rows)} seed{'s' if len(rows) > 1 else ''}): "
                   f"gain {ci(rows, 'reward_gain', signed=True)}, judge {ci(rows, 'judge_positive_after')}, perplexity "
                   f"ratio {ci(rows, 'perplexity_ratio', unit='x')}, review share {ci(rows, 'review_share_after')}; "
                   f"all three targets in {sum(all_targets(r) for r in rows)} of {len(rows)} seeds.")
    sims = num(d.sentiment, "review_similarity_after")
    if sims:
        out.append(f"- **Review-likeness does not see the drift** (MiniLM similarity to real snippets: "
                   f"{min(sims):.2f}-{max(sims):.2f} in every run); perplexity and distinct-2 do.")
    if num(d.sentiment, "review_share_after"):
        per = "; ".join(f"{_algorithm_name(a)} at {_setting_name(a, u)}{' (long profile)' if p == 'long' else ''} "
                        f"{seeds_text(num(rows, 'review_share_after'), 2)}"
                        for p, a, u, rows in sentiment_settings(d) if num(rows, "review_share_after")
                        and (p == "quick" or float(rows[0]["kl_coef"]) == 0))
        out.append(f"- **Still reviews?** The review-vs-other classifier judges {mean(num(d.sentiment, 'review_share_before'))} "
                   f"of the base model's held-out texts (review start + response) to be reviews; after training: {per} "
                   f"(one number per seed; every setting in `results/sentiment_summary.md` and `results/long/`).")
    return "\n".join(out) if out else "No sentiment runs in results/."


def games(d: Data) -> str:
    """PPO against SFT on held-out games, with the noise of 48 sampled middles in words."""
    out = []
    for g in d.games:
        n = int(float(g["n"]))
        sft, ppo = float(g["sft_playable_share"]), float(g["ppo_playable_share"])
        noise = float(np.sqrt(sft * (1 - sft) / n + ppo * (1 - ppo) / n))
        verdict = ("within the sampling noise of one seed" if abs(ppo - sft) < 2 * noise
                   else "larger than the sampling noise of one seed")
        out.append(f"- **PPO against SFT on unseen games (seed {g['seed']}):** playable share {sft:.3f} -> {ppo:.3f} "
                   f"over {n} held-out middles. The difference ({ppo - sft:+.3f}) is {verdict} (sd of the "
                   f"difference ~{noise:.3f}), so one run does not show that PPO helps on unseen games.")
        out.append(f"- **Far from the ceiling:** {1 - float(g['ppo_compile_share']):.0%} (PPO) and "
                   f"{1 - float(g['sft_compile_share']):.0%} (SFT) of the middles written for unseen games do not compile.")
    return "\n".join(out) if out else "No games runs in results/."


def sentiment_setup(d: Data) -> str:
    """The reward classifier's held-out numbers and the prompt-format probe, from the sentiment runs'
    summary.json (the probe runs in one run of the long profile)."""
    out = []
    paths = [p for folder in (d.root / "results" / "sentiment", d.root / "results" / "long" / "sentiment")
             for p in sorted(folder.glob("*/summary.json"))]
    for path in paths:
        s = json.loads(path.read_text())
        c = s.get("classifier") or {}
        if c and not out:
            out.append(f"- Reward classifier (MiniLM embeddings + logistic regression, {c['n_train']:,} train snippets): "
                       f"held-out accuracy {c['heldout_accuracy']:.3f} on {c['n_heldout']:,} snippets of held-out "
                       f"movies (VADER: {c['vader_heldout_accuracy']:.3f}); mean logit {c['heldout_logit_mean_positive']:.2f} "
                       f"on fresh, {c['heldout_logit_mean_negative']:.2f} on rotten reviews.")
        probe = s.get("format_probe")
        if probe:
            out.append(f"- Prompt-format probe (`{path.parent.name}`, {'long' if path.parts[-4] == 'long' else 'quick'} profile, base model): "
                       + "; ".join(f"`{k}` review-likeness {v['review_similarity']:.3f}, perplexity {v['perplexity']:.1f}, "
                                   f"{v['prompt_tokens']:.1f} prompt tokens, {v['seconds']:.0f} s"
                                   for k, v in sorted(probe.items())) + ".")
    return "\n".join(out) if out else "No sentiment runs in results/."


def ppo_internals(d: Data) -> str:
    """PPO's internals per arm, from the runs' metrics.csv: trl's one-sample KL estimate against the
    exact KL, the KL coefficient, the value head (median over the second half of each run) and the
    probability on the banned tokens; ranges are over the arm's seeds."""
    import pandas as pd

    def rng(values, fmt):
        lo, hi = min(values), max(values)
        return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)} to {fmt.format(hi)}"

    out = ["| arm | runs | KL estimate: mean (exact) | lowest estimate (steps < 0) | KL coefficient first -> last | "
           "corr(value, return) | explained variance | banned-token probability, max |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in d.arith.items():
        if not runs or runs[0]["config"].get("algorithm") != "ppo":
            continue
        stats = []
        for r in runs:
            m = pd.read_csv(r["dir"] / "metrics.csv")
            if "kl_coef" not in m:
                continue
            m = m[m["answers_seen"] > 0].dropna(subset=["kl_coef"])
            late = m[m["answers_seen"] >= m["answers_seen"].max() / 2]
            stats.append(dict(kl=m["kl"].mean(), exact=m["exact_kl"].mean(), low=m["kl"].min(), neg=int((m["kl"] < 0).sum()),
                              c0=m["kl_coef"].iloc[0], c1=m["kl_coef"].iloc[-1],
                              corr=late["value_return_corr"].median(), ev=late["value_var_explained"].median(),
                              banned=m["banned_mass"].max()))
        if not stats:
            continue
        col = lambda k: [x[k] for x in stats]  # noqa: E731
        out.append(f"| `{name}` | {len(stats)} | {rng(col('kl'), '{:.2f}')} ({rng(col('exact'), '{:.2f}')}) | "
                   f"{min(col('low')):.4f} ({sum(col('neg'))}) | {rng(col('c0'), '{:.2g}')} -> {rng(col('c1'), '{:.2g}')} | "
                   f"{rng(col('corr'), '{:.2f}')} | {rng(col('ev'), '{:.2f}')} | {rng(col('banned'), '{:.3f}')} |")
    return "\n".join(out)


BLOCKS = {"glance": glance, "arithmetic": arithmetic, "sentiment_table": sentiment_table, "sentiment": sentiment,
          "games": games, "timings": timings, "ppo_internals": ppo_internals,
          "sentiment_setup": sentiment_setup,
          "stability_claim": stability_claim}


def findings_md(d: Data) -> str:
    parts = ["# Findings (written by `python -m rlformal_utils.findings` from results/; do not edit by hand)", ""]
    for name, make in BLOCKS.items():
        parts += [f"<!-- block {name} -->", make(d), ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- pasting
def block_text(src: str, root: Path, findings: str) -> str | None:
    """The text a marker names: a file under the repository, or one block of results/findings.md."""
    path, _, block = src.partition("#")
    text = findings if path == "results/findings.md" else (
        (root / path).read_text() if (root / path).exists() else None)
    if text is None:
        return None
    if block:
        m = re.search(rf"<!-- block {re.escape(block)} -->\n(.*?)(?=\n<!-- block |\Z)", text, re.S)
        if not m:
            return None
        text = m.group(1)
    return text.strip() + "\n"


def paste(text: str, root: Path, findings: str) -> str:
    def sub(m):
        new = block_text(m.group("src"), root, findings)
        return m.group(0) if new is None else m.group(1) + new + m.group(4)
    return MARKER.sub(sub, text)


def write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def refresh(root: Path = REPO_ROOT, check: bool = False) -> list[str]:
    """Write results/findings.md and paste the blocks; return the files that changed (or, with
    ``check``, that would change)."""
    root = Path(root)
    findings = findings_md(Data(root))
    changed = []
    target = root / "results" / "findings.md"
    if check:
        if not target.exists() or target.read_text() != findings:
            changed.append("results/findings.md")
    elif write_if_changed(target, findings):
        changed.append("results/findings.md")
    for name in DOCS:
        path = root / name
        if not path.exists():
            continue
        old = path.read_text()
        new = paste(old, root, findings)
        if new != old:
            changed.append(name)
            if not check:
                write_if_changed(path, new)
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository (default: this one)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a generated block is stale")
    args = ap.parse_args(argv)
    changed = refresh(args.root, check=args.check)
    print(("stale: " if args.check else "updated: ") + (", ".join(changed) if changed else "nothing"))
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
