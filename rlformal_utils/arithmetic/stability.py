"""Is RL training on arithmetic stable? One collapse criterion, applied to every run, and the tables and
the paragraph that answer the paper's claim that batch entropy "aids exploration, although training is
not yet entirely stable".

The criterion (the only one in the repository; the notebooks, figures and tables all call ``judge``):
a run **collapsed** when the rolling median of ``rollout_max_share`` (max p̄, the share of the most
common answer among the answers sampled for training) over a trailing window of ``WINDOW`` (5 %) of the
run's answers stays strictly above ``THRESHOLD`` (0.3) for a stretch of at least ``SUSTAIN`` (10 %) of
the run's answers. The true answers' most common value has a share of about 0.06, so 0.3 is five times
what an adding model would show; the median ignores single noisy batches and the 10 % rule ignores a
short excursion that training recovers from. A stretch starts at the first logged step whose median
is above the threshold and lasts until the first logged step whose median is not (or the end of the
run).

Everything here reads the data frames of ``runlog.load_runs`` (one row per logged step; one row per
run), so a redraw never retrains.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..figures import fmt_mean_sd, mean_sd
from .runlog import load_runs

THRESHOLD = 0.3   # max p̄ above this (strictly) counts as collapsed
WINDOW = 0.05     # rolling-median window, as a share of the run's answers
SUSTAIN = 0.10    # shortest collapsed stretch that counts, as a share of the run's answers
SHARE = "rollout_max_share"
DEFINITION = (f"collapsed = the rolling median of max p̄ on the training batches, over a window of {WINDOW:.0%} of "
              f"the run's answers, stays above {THRESHOLD} for at least {SUSTAIN:.0%} of the run's answers")


# ----------------------------------------------------------------------------- the criterion
def rolling_median(answers, share, window: float) -> np.ndarray:
    """Median of ``share`` over the logged steps whose answers seen lie in (a - window, a], for each a."""
    a, s = np.asarray(answers, dtype=float), np.asarray(share, dtype=float)
    lo = np.searchsorted(a, a - window, side="right")
    return np.array([np.median(s[lo[i]:i + 1]) for i in range(len(a))])


def stretches(answers, share, total: float | None = None) -> list[tuple[float, float]]:
    """(start, end) in answers seen of every stretch whose rolling median is above ``THRESHOLD``."""
    a, s = np.asarray(answers, dtype=float), np.asarray(share, dtype=float)
    keep = ~np.isnan(s)
    a, s = a[keep], s[keep]
    if len(a) == 0:
        return []
    total = float(total if total is not None else a[-1])
    above = rolling_median(a, s, WINDOW * total) > THRESHOLD
    out, start = [], None
    for i, up in enumerate(above):
        if up and start is None:
            start = a[i]
        elif not up and start is not None:
            out.append((start, a[i]))
            start = None
    if start is not None:
        out.append((start, max(total, a[-1])))
    return out


def judge(answers, share, total: float | None = None) -> dict:
    """The criterion on one run's trajectory: ``collapsed`` (a sustained stretch ever),
    ``ended_collapsed`` (the run ends inside a sustained stretch), ``collapsed_at_answers`` (where the
    first sustained stretch starts, nan if none) and ``longest_stretch`` (share of the run's answers).
    A run without training batches (the base model) is not judged: ``judged`` is False."""
    a = np.asarray(answers, dtype=float)
    s = np.asarray(share, dtype=float)
    if len(a) == 0 or np.isnan(s).all():
        return dict(judged=False, collapsed=False, ended_collapsed=False, collapsed_at_answers=np.nan,
                    longest_stretch=np.nan)
    total = float(total if total is not None else np.nanmax(a))
    found = stretches(a, s, total)
    sustained = [(b, e) for b, e in found if e - b >= SUSTAIN * total]
    end = max(total, a[~np.isnan(s)][-1])
    return dict(judged=True, collapsed=bool(sustained),
                ended_collapsed=bool(sustained) and sustained[-1][1] >= end,
                collapsed_at_answers=sustained[0][0] if sustained else np.nan,
                longest_stretch=max((e - b for b, e in found), default=0.0) / total if total else 0.0)


def judge_metrics(metrics: pd.DataFrame, total: float | None = None) -> dict:
    """``judge`` on one run's ``metrics.csv`` (``total``: the run's answers seen)."""
    if SHARE not in metrics:
        return judge([], [])
    m = metrics.dropna(subset=[SHARE]).sort_values("answers_seen")
    return judge(m["answers_seen"], m[SHARE], total)


def judge_runs(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the criterion's columns added (one row per run)."""
    rows = []
    for _, r in runs.iterrows():
        m = metrics[metrics["run"] == r["run"]]
        best = m["heldout_greedy_exact_match"].max() if "heldout_greedy_exact_match" in m else np.nan
        # how far the run ends below its own best held-out evaluation (0: it ends at its best)
        rows.append(dict(judge_metrics(m, r["answers_seen"]),
                         fall_from_best=max(best - r["heldout_exact_match"], 0.0) if best == best else np.nan))
    return pd.concat([runs.reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def is_collapsed(run_dir) -> bool:
    """The criterion on one run folder (its ``metrics.csv``, and ``summary.json`` for the answers seen)."""
    run_dir = Path(run_dir)
    summary = run_dir / "summary.json"
    total = json.loads(summary.read_text())["answers_seen"] if summary.exists() else None
    return judge_metrics(pd.read_csv(run_dir / "metrics.csv"), total)["collapsed"]


def count(judged: pd.DataFrame, column: str = "collapsed") -> str:
    """'k/n' over the judged runs ('n/a' if none was judged)."""
    j = judged[judged["judged"]]
    return f"{int(j[column].sum())}/{len(j)}" if len(j) else "n/a"


# ----------------------------------------------------------------------------- tables
def _groups(judged: pd.DataFrame):
    """(start, arm, runs) in reading order: the paper's weak start first; base model, group-relative
    arms, PPO with KL 0, PPO with a frozen reference, supervised."""
    def key(item):
        (start, arm), g = item
        r = g.iloc[0]
        kind = {"none": 0, "group": 1, "ppo": 2 if r["kl_reference"] != "frozen" else 3}.get(r["algorithm"], 9)
        sweep_point = r["algorithm"] in ("group", "ppo") and (
            (r["regulariser"] != "none" and not np.isclose(r["entropy_coef"], 0.3))
            or not np.isclose(r["rl_lr"], _GROUP["rl_lr"] if r["algorithm"] == "group" else _PPO["rl_lr"]))
        return (r["pretrain_chains"] != _WEAK["pretrain_chains"], start, kind, sweep_point, arm)
    return [(start, arm, g) for (start, arm), g in sorted(judged.groupby(["start", "arm"], sort=False), key=key)]


def stability_table(judged: pd.DataFrame) -> pd.DataFrame:
    """One row per start and arm: final greedy exact match (mean, sd with ddof=1, seeds) on held-out
    and unseen additions, and the collapse counts, in plain numbers (``results/arithmetic_stability.csv``)."""
    out = []
    for start, arm, g in _groups(judged):
        hm, hs, n = mean_sd(g["heldout_exact_match"])
        um, us, _ = mean_sd(g["unseen_pairs_exact_match"])
        j = g[g["judged"]]
        out.append(dict(start=start, arm=arm, seeds=n, answers_seen=int(g["answers_seen"].iloc[0]),
                        heldout_mean=hm, heldout_sd=hs, heldout_min=g["heldout_exact_match"].min(),
                        heldout_max=g["heldout_exact_match"].max(), unseen_mean=um, unseen_sd=us,
                        judged=len(j), collapsed=int(j["collapsed"].sum()),
                        ended_collapsed=int(j["ended_collapsed"].sum()),
                        first_collapse_answers=j["collapsed_at_answers"].min(),
                        largest_fall_from_best=g["fall_from_best"].max()))
    return pd.DataFrame(out)


def _md_row(g: pd.DataFrame) -> dict:
    return {"seeds": len(g), "held-out exact match": fmt_mean_sd(g["heldout_exact_match"], count=False),
            "unseen additions": fmt_mean_sd(g["unseen_pairs_exact_match"], count=False),
            "seed range": _range(g["heldout_exact_match"]),
            "largest fall from a seed's best": f"{g['fall_from_best'].max():.3f}",
            "collapsed": count(g), "ended collapsed": count(g, "ended_collapsed")}


def _range(v: pd.Series) -> str:
    return f"{v.min():.3f}" if len(v) == 1 else f"{v.min():.3f}-{v.max():.3f}"


def stability_markdown(judged: pd.DataFrame) -> pd.DataFrame:
    """The same table for reading: mean ± sd (ddof=1), seeds, collapse counts 'k/n'."""
    rows = [dict(start=start, arm=arm, **_md_row(g)) for start, arm, g in _groups(judged)]
    return pd.DataFrame(rows)


# the sweeps: (sweep, setting, selector); a selector matches the runs' config columns
_WEAK = dict(pretrain_chains=256, pretrain_steps=0)
_GROUP = dict(_WEAK, algorithm="group", kl_reference="policy", rl_lr=1e-3, steps=3906)
_PPO = dict(_WEAK, algorithm="ppo", kl_reference="policy", rl_lr=3e-4, steps=2344)
_FROZEN = dict(_PPO, kl_reference="frozen", regulariser="none", mask_banned=True)
SWEEPS = (
    [("group-relative: batch-entropy coefficient", f"{c:g}",
      dict(_GROUP, regulariser="none") if c == 0 else dict(_GROUP, regulariser="batch", entropy_coef=c))
     for c in (0.0, 0.1, 0.3, 1.0)]
    + [("PPO, KL 0: batch-entropy coefficient", f"{c:g}",
        dict(_PPO, regulariser="none") if c == 0 else dict(_PPO, regulariser="batch", entropy_coef=c))
       for c in (0.0, 0.1, 0.3, 1.0)]
    + [("PPO, KL 0, batch entropy 0.3: learning rate", f"{lr:g}",
        dict(_PPO, regulariser="batch", entropy_coef=0.3, rl_lr=lr)) for lr in (3e-4, 1e-3)]
    + [("PPO, frozen reference: KL controller", "trl's adaptive (target 6 nats, from 0.2)",
        dict(_FROZEN, kl_controller="trl"))]
    + [("PPO, frozen reference: KL controller", f"fixed {c:g}", dict(_FROZEN, kl_controller="fixed", kl_coef=c))
       for c in (0.01, 0.03, 0.1)]
    + [("PPO, frozen reference: KL controller", "adaptive, target 4 nats",
        dict(_FROZEN, kl_controller="adaptive", kl_target=4.0))]
)


def select(runs: pd.DataFrame, selector: dict) -> pd.DataFrame:
    """The runs whose columns equal every value of ``selector`` (floats compared with a tolerance)."""
    keep = pd.Series(True, index=runs.index)
    for k, v in selector.items():
        if k not in runs:
            return runs.iloc[:0]
        col = runs[k]
        if k == "entropy_coef":  # no entropy term: the coefficient is not used
            col = col.where(runs["regulariser"] != "none", 0.0)
        keep &= np.isclose(col.astype(float), v) if isinstance(v, float) else (col == v)
    return runs[keep]


def sweeps_table(judged: pd.DataFrame) -> pd.DataFrame:
    """One row per sweep point, with the runs found for it (a point not run reads 'not run')."""
    rows = []
    for sweep, setting, selector in SWEEPS:
        g = select(judged, selector)
        hm, hs, n = mean_sd(g["heldout_exact_match"]) if len(g) else (np.nan, np.nan, 0)
        um, us, _ = mean_sd(g["unseen_pairs_exact_match"]) if len(g) else (np.nan, np.nan, 0)
        rows.append(dict(sweep=sweep, setting=setting, seeds=n, heldout_mean=hm, heldout_sd=hs,
                         unseen_mean=um, unseen_sd=us, judged=int(g["judged"].sum()) if n else 0,
                         collapsed=int(g["collapsed"].sum()) if n else 0))
    return pd.DataFrame(rows)


def sweeps_markdown(judged: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for sweep, setting, selector in SWEEPS:
        g = select(judged, selector)
        rows.append(dict(sweep=sweep, setting=setting, **(_md_row(g) if len(g) else
                    {"seeds": 0, "held-out exact match": "not run", "unseen additions": "", "seed range": "",
                     "largest fall from a seed's best": "", "collapsed": "", "ended collapsed": ""})))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the paper's claim
PPO_ARMS = {"none": "no entropy term", "token": "token entropy", "batch": "batch entropy", "both": "both"}


def ppo_arm(judged: pd.DataFrame, regulariser: str) -> pd.DataFrame:
    return select(judged, dict(_PPO, regulariser=regulariser, **({} if regulariser == "none" else
                                                                  {"entropy_coef": 0.3})))


def _describe(g: pd.DataFrame) -> str:
    return (f"{fmt_mean_sd(g['heldout_exact_match'], count=False)} held-out exact match over {len(g)} "
            f"seed{'s' if len(g) != 1 else ''} (seeds {_range(g['heldout_exact_match'])}), collapsed in {count(g)}")


def _compare(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """'higher than' / 'lower than' / 'within the seed spread of': a's mean against b's, the margin
    being the larger of the two standard deviations."""
    ma, sa, _ = mean_sd(a["heldout_exact_match"])
    mb, sb, _ = mean_sd(b["heldout_exact_match"])
    margin = np.nanmax([sa, sb, 0.0])
    if ma - mb > margin:
        return "higher than"
    if mb - ma > margin:
        return "lower than"
    return "within the seed spread of"


def _sweep_points(judged: pd.DataFrame, sweep: str, skip: tuple = ()) -> list[tuple[str, pd.DataFrame]]:
    return [(setting, g) for s, setting, selector in SWEEPS if s == sweep and setting not in skip
            for g in [select(judged, selector)] if len(g)]


def _points_text(points: list[tuple[str, pd.DataFrame]]) -> str:
    return " / ".join(setting for setting, _ in points) + " -> " + " / ".join(
        f"{g['heldout_exact_match'].mean():.3f}" + ("" if len(g) > 1 else " (1 seed)") for _, g in points)


def _span(points) -> float:
    means = [g["heldout_exact_match"].mean() for _, g in points]
    return max(means) - min(means)


def claim(judged: pd.DataFrame) -> str:
    """One paragraph answering the paper's claim from the runs in ``judged`` (``judge_runs`` output):
    PPO with KL 0 and no entropy term, token entropy, batch entropy (and both), the collapse counts,
    the seed spread, the sensitivity to the batch-entropy coefficient and the learning rate, and the KL
    controllers of PPO with a frozen reference. ``judged`` may also be a quick results folder
    (``results/arithmetic``): its runs and the long profile's are then read."""
    if not isinstance(judged, pd.DataFrame):
        judged = load(profile_dirs(judged, "quick"))
    arms = {r: ppo_arm(judged, r) for r in PPO_ARMS}
    none, token, batch = arms["none"], arms["token"], arms["batch"]
    if batch.empty or none.empty:
        return ("The runs needed to test the claim (PPO with KL 0, with and without batch entropy, from the "
                "paper's weak start) are not among these results.")
    text = [f"PPO with KL 0 from the paper's weak start reaches, without an entropy term, {_describe(none)}; "
            f"with batch entropy (coefficient 0.3) {_describe(batch)}"]
    if len(token):
        text[-1] += f"; with token entropy {_describe(token)}"
    if len(arms["both"]):
        text[-1] += f"; with both terms {_describe(arms['both'])}"
    text[-1] += f" (a run counts as collapsed when {DEFINITION.split(' = ', 1)[1]})."
    vs_none = _compare(batch, none)
    fewer = int(none["collapsed"].sum() - batch["collapsed"].sum())
    if vs_none == "higher than" and fewer >= 0:
        verdict = ("So batch entropy does aid exploration: it keeps PPO off the naive solution"
                   + (f" ({fewer} fewer collapsed runs)" if fewer > 0 else "") + " and ends higher than no entropy term")
    else:
        verdict = f"So batch entropy does not clearly aid PPO here: its final exact match is {vs_none} no entropy term's"
    if len(token):
        rel = _compare(batch, token)
        verdict += (", but token entropy does as much (the means are within each other's seed spread), so the "
                    "benefit is not specific to the batch term" if rel == "within the seed spread of" else
                    f"; its mean is {rel} token entropy's")
    text.append(verdict + ".")
    _, sb, _ = mean_sd(batch["heldout_exact_match"])
    others = {r: g for r, g in arms.items() if len(g) > 1 and r != "batch"}
    if len(batch) > 1:
        sds = [mean_sd(g["heldout_exact_match"])[1] for g in others.values()]
        falls = [g["fall_from_best"].max() for g in others.values()]
        widest = bool(sds) and sb > max(sds)
        fall = batch["fall_from_best"].max()
        unstable = widest or batch["collapsed"].any() or (bool(falls) and fall > max(falls))
        line = (f"\"Not entirely stable\" {'is borne out' if unstable else 'is not borne out by these seeds'}: "
                f"batch entropy's final exact match has a seed-to-seed sd of {sb:.3f}")
        if sds:
            line += f" ({'the widest; ' if widest else ''}other PPO arms {min(sds):.3f}-{max(sds):.3f})"
        line += f", its worst seed ends {fall:.3f} below its own best evaluation"
        if falls:
            line += f" (other PPO arms: at most {max(falls):.3f})"
        text.append(line + f", and {count(batch)} of its runs collapsed.")
    coef = _sweep_points(judged, "PPO, KL 0: batch-entropy coefficient", skip=("0",))
    lr = _sweep_points(judged, "PPO, KL 0, batch entropy 0.3: learning rate")
    sens = []
    if len(coef) > 1:
        sens.append(f"coefficient {_points_text(coef)}")
    if len(lr) > 1:
        sens.append(f"learning rate {_points_text(lr)}")
    if sens:
        line = "Held-out exact match of PPO with batch entropy by " + "; by ".join(sens)
        if len(coef) > 1 and len(lr) > 1:
            more = "coefficient" if _span(coef) > _span(lr) else "learning rate"
            line += f": it depends more on the {more} ({_span(coef):.3f} vs {_span(lr):.3f} between best and worst)"
        text.append(line + ".")
    gnone = select(judged, dict(_GROUP, regulariser="none"))
    gbatch = select(judged, dict(_GROUP, regulariser="batch", entropy_coef=0.3))
    if len(gnone) and len(gbatch):
        gap_group = gbatch["heldout_exact_match"].mean() - gnone["heldout_exact_match"].mean()
        gap_ppo = batch["heldout_exact_match"].mean() - none["heldout_exact_match"].mean()
        text.append(f"With the group-relative update batch entropy moves {_describe(gnone)} without it to "
                    f"{_describe(gbatch)} with it ({gap_group:+.3f}; with PPO {gap_ppo:+.3f}).")
    trl = select(judged, dict(_FROZEN, kl_controller="trl"))
    fixed = [(setting, g) for setting, g in _sweep_points(judged, "PPO, frozen reference: KL controller")
             if setting.startswith("fixed")]
    if len(trl) and fixed:
        best_setting, best = max(fixed, key=lambda sg: (len(sg[1]) > 1, sg[1]["heldout_exact_match"].mean()))
        text.append(f"PPO with a frozen reference and trl's default controller (its 6-nat target is out of reach "
                    f"of a one-token answer, so the coefficient decays) reaches {_describe(trl)}; with a "
                    f"{best_setting} coefficient {_describe(best)}.")
    return " ".join(text)


# ----------------------------------------------------------------------------- loading
def profile_dirs(results_dir, profile: str) -> list[Path]:
    """The result folders a profile's stability tables read: its own, and for quick and long both
    (the sweeps' points are split between them: coefficient 0 and 0.3 run in quick, the rest in long)."""
    own = Path(results_dir)
    if profile not in ("quick", "long"):
        return [own]
    root = own.parent.parent if own.parent.name == "long" else own.parent
    dirs = [own] + [d for d in (root / own.name, root / "long" / own.name) if d.resolve() != own.resolve()]
    return [d for d in dirs if d.is_dir()]


def load(results_dirs) -> pd.DataFrame:
    """``judge_runs`` of every complete run in ``results_dirs`` (a run found twice counts once)."""
    return load_with_metrics(results_dirs)[1]


def load_with_metrics(results_dirs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics rows, ``judge_runs``) of every complete run in ``results_dirs`` (a run found twice
    counts once, from the first folder that has it)."""
    metrics, runs = [], []
    for d in results_dirs:
        try:
            m, r = load_runs(d)
        except FileNotFoundError:
            continue
        r = r[~r["run"].isin(set().union(*[set(x["run"]) for x in runs]))] if runs else r
        metrics.append(m[m["run"].isin(r["run"])])
        runs.append(r)
    if not runs:
        raise FileNotFoundError(f"no complete runs under {', '.join(map(str, results_dirs))}")
    metrics = pd.concat(metrics, ignore_index=True)
    return metrics, judge_runs(metrics, pd.concat(runs, ignore_index=True))
