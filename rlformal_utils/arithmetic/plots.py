"""Arithmetic figures and tables, drawn only from the files runs write (config.json,
metrics.csv, summary.json), so a redraw never retrains."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
import numpy as np
import pandas as pd

from ..figures import band, fmt_mean_sd, thousands
from . import stability

# the runs as tables live in runlog; plots re-exports them for the figures notebook
from .runlog import DEFAULTS, REG_LABEL, WEAK, arm_of, is_sweep_point, kl_label, load_runs, start_of  # noqa: F401


RUNS_COLUMNS = ["algorithm", "regulariser", "kl_reference", "pretrain_chains", "seed", "rl_lr", "answers_seen",
                "heldout_exact_match", "unseen_pairs_exact_match", "heldout_reward", "max_share",
                "mutual_information", "answers_to_0_9", "wall_seconds", "cpu_seconds", "run"]


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """``results/arithmetic_runs.csv``: one row per run, plain numbers, stable order."""
    return runs[RUNS_COLUMNS].sort_values(["pretrain_chains", "algorithm", "regulariser", "kl_reference", "seed",
                                           "run"]).reset_index(drop=True)


def _reach(values: pd.Series) -> str:
    """Median answers seen at the first evaluation >= 0.9, and in how many seeds it happened."""
    hit = values.dropna()
    return "never" if hit.empty else f"{hit.median() / 1e3:,.0f}k ({len(hit)}/{len(values)} seeds)"


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd (ddof=1) over seeds of the final numbers, one row per arm and start."""
    out = []
    for (start, arm), g in runs.groupby(["start", "arm"], sort=False):
        out.append({"start": start, "arm": arm, "seeds": len(g), "answers seen": f"{g['answers_seen'].iloc[0]:,}",
                    "held-out exact match": fmt_mean_sd(g["heldout_exact_match"]),
                    "unseen additions": fmt_mean_sd(g["unseen_pairs_exact_match"]),
                    "held-out reward": fmt_mean_sd(g["heldout_reward"]),
                    "max p̄": fmt_mean_sd(g["max_share"], 2),
                    "answers to 0.9": _reach(g["answers_to_0_9"]),
                    "CPU-s per run": fmt_mean_sd(g["cpu_seconds"], 0)})
    table = pd.DataFrame(out)
    order = {"base model": 0, "supervised": 9}
    table["_k"] = table["arm"].map(lambda a: order.get(a, 1 if a.startswith("group") else 2))
    table["_s"] = table["start"].map(lambda s: int(s.split()[0]) != WEAK)
    return table.sort_values(["_s", "_k", "arm"]).drop(columns=["_k", "_s"]).reset_index(drop=True)


def naive_exact_match(runs: pd.DataFrame) -> tuple[int | None, float | None]:
    """The naive solution's answer and its held-out exact match (the share of problems whose true
    answer it happens to be), from the ``naive_answer`` and ``true_answers`` the runs record."""
    if "naive_answer" not in runs or runs["naive_answer"].isna().all():
        return None, None
    row = runs.dropna(subset=["naive_answer"]).iloc[0]
    true = row["true_answers"]
    return int(row["naive_answer"]), true.get(str(int(row["naive_answer"])), 0) / sum(true.values())


# ----------------------------------------------------------------------------- one run
def run_figure(metrics: pd.DataFrame, summary: dict):
    """One run at a glance: held-out exact match, the answer distribution, final answer histogram."""
    fig = plt.figure(figsize=(11, 7.4))  # shown about full size in a notebook: text stays readable
    grid = fig.add_gridspec(2, 2)
    ax = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])]
    ev = metrics.dropna(subset=["heldout_greedy_exact_match"])
    x = ev["answers_seen"].clip(lower=1)
    for col, label in [("heldout_greedy_exact_match", "held-out (seen additions)"),
                       ("unseen_greedy_exact_match", "unseen additions")]:
        ax[0].plot(x, ev[col], "o-", label=label, ms=4)
    ax[0].set(xscale="log", xlabel="answers seen", ylabel="greedy exact match", ylim=(0, 1.02),
              title="accuracy on problems never trained on")
    ax[0].legend(loc="upper left")
    train = metrics.dropna(subset=["rollout_max_share"]) if "rollout_max_share" in metrics else metrics.iloc[:0]
    if len(train):
        ax[1].plot(train["answers_seen"], train["rollout_mutual_information"], label="I(prompt; answer) [nats]")
        ax[1].plot(train["answers_seen"], train["rollout_sample_entropy"], label="mean H(p_i) [nats]")
        ax2 = ax[1].twinx()
        ax2.plot(train["answers_seen"], train["rollout_max_share"], "k:", label="max p̄ (right)")
        ax2.set(ylim=(0, 1), ylabel="max p̄ (share of the top answer)")
        ax2.grid(False)
        ax2.legend(loc="upper right")
        ax[1].legend(loc="upper left")
    else:
        ax[1].text(0.5, 0.5, "no training batches\n(the base model is only evaluated)", ha="center", va="center",
                   transform=ax[1].transAxes)
    ax[1].set(xscale="log", xlabel="answers seen", title="the answer distribution on training batches")
    _histogram(ax[2], summary)
    fig.tight_layout()
    return fig


def _histogram(ax, summary: dict, title: str = "final held-out answers (sampled) vs the truth"):
    true = {int(k): v for k, v in summary["true_answers"].items()}
    got = {int(k): v for k, v in summary["final"]["heldout"]["sampled_answers"].items() if str(k).isdigit()}
    xs = np.arange(0, 100)
    ax.bar(xs, [true.get(i, 0) for i in xs], color="0.8", label="true answers", width=1.0)
    ax.bar(xs, [got.get(i, 0) for i in xs], color="C3", alpha=0.7, label="model's answers", width=1.0)
    ax.set(xlim=(-1, 60), xlabel="answer", ylabel="count", title=title)
    ax.legend()


# ----------------------------------------------------------------------------- across runs
def fig_learning_curves(metrics: pd.DataFrame, runs: pd.DataFrame, arms: list[str], start: str):
    """Held-out and unseen-pair exact match vs answers seen (log x), mean ± sd over seeds, with the
    supervised reference and the naive-answer level as lines."""
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True)
    m = metrics[metrics["start"] == start]
    naive_answer, naive_match = naive_exact_match(runs)
    sup = runs[(runs["start"] == start) & (runs["algorithm"] == "supervised")]
    base = runs[(runs["start"] == start) & (runs["algorithm"] == "none")]
    for a, (col, title) in zip(ax, [("heldout_greedy_exact_match", "held-out problems (seen additions)"),
                                     ("unseen_greedy_exact_match", "unseen additions")]):
        for i, arm in enumerate(arms):
            d = m[(m["arm"] == arm) & (m["answers_seen"] > 0)]
            if len(d):
                n = d["run"].nunique()
                band(a, d, "answers_seen", col, f"{arm} ({n} seed{'s' if n > 1 else ''})", color=f"C{i}",
                     marker=".", ms=5)
        final = "heldout_exact_match" if col.startswith("heldout") else "unseen_pairs_exact_match"
        if len(sup):
            a.axhline(sup[final].mean(), color="k", ls="--", lw=1.2,
                      label=f"supervised, same prompts ({sup[final].mean():.2f})")
        if len(base):
            a.axhline(base[final].mean(), color="0.5", ls=":", lw=1.2, label=f"base model ({base[final].mean():.2f})")
        if col.startswith("heldout") and naive_match is not None:
            a.axhline(naive_match, color="C3", ls="-.", lw=1.2,
                      label=f"naive solution: always {naive_answer} ({naive_match:.2f})")
        a.set(xscale="log", xlabel="sampled answers seen", title=title, ylim=(0, 1.02))
    ax[0].set_ylabel("greedy exact match")
    fig.suptitle(f"Learning to add from the reward alone (start: {start}; mean ± sd over seeds)", y=1.0)
    fig.tight_layout()
    _legend_below(fig, ax[0])
    return fig


def _legend_below(fig, ax, ncol: int = 2) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, frameon=False)


def fig_reward_vs_naive(metrics: pd.DataFrame, runs: pd.DataFrame, arms: list[str], start: str):
    """Held-out reward vs answers seen, with the naive solution's reward (the collapse level)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    m = metrics[(metrics["start"] == start) & (metrics["answers_seen"] > 0)]
    for i, arm in enumerate(arms):
        d = m[m["arm"] == arm]
        if len(d):
            band(ax, d, "answers_seen", "heldout_sampled_reward", arm, color=f"C{i}", marker=".", ms=5)
    naive = runs["naive_reward"].iloc[0]
    ax.axhline(naive, color="k", ls="--", lw=1.2, label=f"naive solution: one answer for all ({naive:.2f})")
    ax.set(xscale="log", xlabel="sampled answers seen", ylabel="held-out reward (sampled answer)", ylim=(0, 1.02),
           title="Reward: RL must beat the naive solution")
    ax.legend(loc="lower right", fontsize=8.5)
    fig.tight_layout()
    return fig


def fig_collapse(metrics: pd.DataFrame, arms: list[str], start: str):
    """Collapse diagnostics on the training batches: max p̄ and I(prompt; answer) vs answers seen."""
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.4))
    m = metrics[(metrics["start"] == start) & (metrics["answers_seen"] > 0)]
    for i, arm in enumerate(arms):
        d = m[m["arm"] == arm].dropna(subset=["rollout_max_share"]).copy()
        if not len(d):
            continue
        # bin answers seen on a log grid so that runs with different logging steps average cleanly
        d["bin"] = 10 ** (np.round(np.log10(d["answers_seen"]) * 8) / 8)
        per_run = d.groupby(["run", "bin"], as_index=False)[["rollout_max_share", "rollout_mutual_information"]].mean()
        band(ax[0], per_run, "bin", "rollout_max_share", arm, color=f"C{i}")
        band(ax[1], per_run, "bin", "rollout_mutual_information", arm, color=f"C{i}")
    ax[0].set(xscale="log", xlabel="sampled answers seen", ylabel="max p̄", ylim=(0, 1),
              title="share of the most common answer (1 = one answer for every prompt)")
    ax[0].axhline(stability.THRESHOLD, color="0.5", ls=":", lw=1)
    ax[1].set(xscale="log", xlabel="sampled answers seen", ylabel="nats",
              title="I(prompt; answer) = H(p̄) - mean H(p_i)")
    fig.tight_layout()
    _legend_below(fig, ax[0])
    return fig


def _no_runs_figure(message: str):
    fig, ax = plt.subplots(figsize=(8, 1.2))
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    return fig


def fig_histograms(results_dir, runs: pd.DataFrame, arms: list[str], start: str, seed: int = 0):
    """Final held-out answer histograms (seed 0) of several arms against the true answers; each
    panel has its own y-axis so that a spread-out histogram is not flattened by a collapsed one. A
    short last row is centred, so no panel is left empty."""
    chosen = [runs[(runs["arm"] == a) & (runs["start"] == start) & (runs["seed"] == seed)] for a in arms]
    chosen = [c.iloc[0] for c in chosen if len(c)]
    if not chosen:  # e.g. after --runs with a pattern that ran none of these arms
        return _no_runs_figure(f"no complete seed-{seed} run of {', '.join(arms)} ({start}) in {results_dir}")
    cols = min(3, len(chosen))
    rows = -(-len(chosen) // cols)
    fig = plt.figure(figsize=(4.3 * cols, 3.5 * rows))
    grid = fig.add_gridspec(rows, 2 * cols)
    for i, row in enumerate(chosen):
        r, c = divmod(i, cols)
        left = (cols - (len(chosen) - r * cols)) if r == rows - 1 and len(chosen) % cols else 0  # centre a short row
        a = fig.add_subplot(grid[r, 2 * c + left:2 * c + left + 2])
        summary = json.loads((Path(results_dir) / row["run"] / "summary.json").read_text())
        arm = row["arm"].replace(", frozen", ",\nfrozen").replace(", banned", ",\nbanned")
        _histogram(a, summary, title=f"{arm}\nexact match {row['heldout_exact_match']:.2f}, "
                                     f"max p̄ {row['max_share']:.2f}")
        a.title.set_fontsize(10)
        if i:
            a.get_legend().remove()
    fig.tight_layout()
    return fig


def fig_competent_start(runs: pd.DataFrame, start: str):
    """Does RL keep, improve or degrade a model that already adds? Final exact match per arm,
    bars = mean ± sd over seeds, dots = seeds."""
    d = runs[runs["start"] == start]
    order = [a for a in ["base model", "supervised"] if a in set(d["arm"])]
    order = order[:1] + sorted(set(d["arm"]) - set(order)) + order[1:]
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for a, (col, title) in zip(ax, [("heldout_exact_match", "held-out (seen additions)"),
                                     ("unseen_pairs_exact_match", "unseen additions")]):
        g = d.groupby("arm")[col]
        mean, sd = g.mean().reindex(order), g.std(ddof=1).reindex(order).fillna(0)
        a.bar(range(len(order)), mean, yerr=sd, color=[f"C{i}" for i in range(len(order))], alpha=0.6, capsize=4)
        for i, arm in enumerate(order):
            vals = d.loc[d["arm"] == arm, col]
            a.scatter(np.full(len(vals), i) + np.linspace(-0.12, 0.12, len(vals)), vals, color="k", s=14, zorder=3)
        a.set_xticks(range(len(order)), [o.replace(", ", ",\n") for o in order], fontsize=8.5)
        a.set(title=title, ylim=(0, 1.02))
    ax[0].set_ylabel("greedy exact match")
    fig.suptitle(f"A competent start ({start}): RL from there", y=1.02)
    fig.tight_layout()
    return fig


def _ppo_rows(metrics: pd.DataFrame, arm_filter: str) -> pd.DataFrame:
    """The logged training steps of the PPO arms (none when no PPO run is in the results)."""
    if "kl_coef" not in metrics:
        return metrics.iloc[:0]
    return metrics[metrics["arm"].str.startswith(arm_filter) & (metrics["answers_seen"] > 0)].dropna(subset=["kl_coef"])


LINESTYLES = ["-", "--", "-.", ":"]


def _arm_mean(d: pd.DataFrame, col: str, smooth: int = 1) -> pd.Series:
    """An arm's mean over its seeds at each logged step (the seeds of an arm log the same steps)."""
    s = d.groupby("answers_seen")[col].mean()
    return s.rolling(smooth, min_periods=1).mean() if smooth > 1 else s


def _controller(arm: str) -> str:
    """The KL controller named in an arm's label ('fixed KL 0.03', "trl's adaptive KL", ...)."""
    return arm.split("frozen ref + ", 1)[1].split(",")[0] if "frozen ref + " in arm else "none"


def fig_ppo_diagnostics(metrics: pd.DataFrame, arm_filter: str = "PPO"):
    """PPO internals, one line per arm (mean over its seeds; colour and dash tell the arms apart): with
    a frozen reference, the exact KL to it and the KL coefficient, one line per controller (KL-0 arms
    have no reference, so no KL panels for them); for every arm, the value head's correlation with the
    return and the probability mass on the banned tokens."""
    m = _ppo_rows(metrics, arm_filter)
    if m.empty:
        return _no_runs_figure(f"no complete {arm_filter} run in these results")
    arms = list(dict.fromkeys(m["arm"]))
    style = {a: dict(color=f"C{i % 10}", ls=LINESTYLES[(i // 10 + i) % len(LINESTYLES)], lw=1.3)
             for i, a in enumerate(arms)}
    frozen = m[m["kl_reference"] == "frozen"]
    panels = ([("exact_kl", "KL to the frozen reference", "nats", None, 1),
               ("kl_coef", "KL coefficient", None, "log", 1)] if len(frozen) else [])
    panels += [("value_return_corr", "value head: corr(value, return)", None, None, 10),
               ("banned_mass", "probability on banned tokens", None, "log", 1)]
    rows = len(panels) // 2
    fig, ax = plt.subplots(rows, 2, figsize=(11, 3.6 * rows + 0.4), squeeze=False)
    for a, (col, title, ylabel, yscale, smooth) in zip(ax.flat, panels):
        if col == "kl_coef":  # the same controller draws the same line: one line per controller
            for controller, d in frozen.groupby(frozen["arm"].map(_controller), sort=False):
                s = d.groupby("answers_seen")[col].mean()
                a.plot(s.index, s.values, label=controller, **style[d["arm"].iloc[0]])
            a.legend(loc="lower left", fontsize=9)
        data = frozen if col == "exact_kl" else m
        for arm, d in ([] if col == "kl_coef" else data.groupby("arm", sort=False)):
            s = _arm_mean(d, col, smooth)
            n = d["run"].nunique()
            a.plot(s.index, s.values, label=f"{arm} ({n} seed{'s' if n > 1 else ''})", **style[arm])
        a.set(title=title, xlabel="answers seen", ylabel=ylabel or "")
        if yscale:
            a.set_yscale(yscale)
        if col == "value_return_corr":
            a.set_ylim(-0.5, 1)
        thousands(a, n_ticks=4)
    fig.tight_layout()
    handles = {}
    for a in ax.flat:  # every arm once, in the order drawn
        if a.get_legend() is None:
            for h, l in zip(*a.get_legend_handles_labels()):
                handles.setdefault(l, h)
    fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2,
               frameon=False)
    return fig


def findings(judged: pd.DataFrame, weak: str) -> str:
    """The runs' result in sentences, every number read from ``judged`` (``stability.judge_runs``)."""
    lines = []
    for start, d in judged.groupby("start", sort=False):
        base = d[d["algorithm"] == "none"]
        head = f"From {start}" + (f" (base model: held-out {base['heldout_exact_match'].mean():.2f})" if len(base) else "")
        lines.append(head + ":")
        for arm, g in d[d["algorithm"] != "none"].groupby("arm", sort=False):
            reach = g["answers_to_0_9"]
            reach_txt = (f"first evaluated >= 0.9 at {reach.median():,.0f} answers (median of "
                         f"{reach.notna().sum()}/{len(g)} seeds)"
                         if reach.notna().any() else "never reached 0.9")
            lines.append(f"  - {arm}: held-out {fmt_mean_sd(g['heldout_exact_match'])}, unseen additions "
                         f"{fmt_mean_sd(g['unseen_pairs_exact_match'])} after {g['answers_seen'].iloc[0]:,} answers; "
                         f"{reach_txt}; collapsed in {stability.count(g)} seeds.")
    lines.append(f"({stability.DEFINITION}.)")
    return "\n".join(lines)


def ppo_findings(metrics: pd.DataFrame) -> str:
    """What the PPO internals did, per run, read from the metrics: the KL estimate against the exact
    KL, the adaptive coefficient, the value head and the probability on banned tokens."""
    m = _ppo_rows(metrics, "PPO")
    lines = []
    for (arm, run), r in m.groupby(["arm", "run"], sort=False):
        late = r[r["answers_seen"] >= r["answers_seen"].max() / 2]
        lines.append(f"  - {run}: KL estimate mean {r['kl'].mean():.2f} nats, negative in {(r['kl'] < 0).mean():.0%} "
                     f"of logged steps (exact KL mean {r['exact_kl'].mean():.2f}); KL coefficient "
                     f"{r['kl_coef'].iloc[0]:.3f} -> {r['kl_coef'].iloc[-1]:.3f}; value head: corr(value, return) "
                     f"{late['value_return_corr'].median():.2f}, explained variance {late['value_var_explained'].median():.2f}"
                     f" (medians over the second half); banned-token probability {r['banned_mass'].min():.1e} at its "
                     f"lowest, {r['banned_mass'].iloc[-1]:.1e} at the end.")
    return "\n".join(lines) if lines else "no PPO runs"


# ----------------------------------------------------------------------------- stability
def fig_stability(metrics: pd.DataFrame, judged: pd.DataFrame, regularisers=("none", "token", "batch", "both")):
    """Per-seed trajectories of PPO with KL 0 from the paper's weak start, one column per entropy term:
    held-out exact match (top) and max p̄ on the training batches (bottom: faint, every logged batch;
    bold, the rolling median the collapse criterion reads, with its threshold dashed and a cross where
    a sustained collapse begins)."""
    S = stability
    cols = [(r, g) for r in regularisers for g in [S.ppo_arm(judged, r)] if len(g)]
    if not cols:
        return _no_runs_figure("no complete PPO run with KL 0 from the paper's weak start in these results")
    n = len(cols)
    fig, ax = plt.subplots(2, n, figsize=(2.75 * n + 0.9, 5.9), sharex=True, sharey="row", squeeze=False)
    for c, (reg, g) in enumerate(cols):
        for _, run in g.sort_values("seed").iterrows():
            m = metrics[metrics["run"] == run["run"]].sort_values("answers_seen")
            color = f"C{int(run['seed']) % 10}"
            ev = m.dropna(subset=["heldout_greedy_exact_match"])
            ax[0, c].plot(ev["answers_seen"], ev["heldout_greedy_exact_match"], color=color, lw=1.2, marker=".",
                          ms=4, label=f"seed {run['seed']}")
            tr = m.dropna(subset=[S.SHARE])
            med = S.rolling_median(tr["answers_seen"], tr[S.SHARE], S.WINDOW * run["answers_seen"])
            ax[1, c].plot(tr["answers_seen"], tr[S.SHARE], color=color, lw=0.6, alpha=0.25)
            ax[1, c].plot(tr["answers_seen"], med, color=color, lw=1.4)
            if run["collapsed"]:
                ax[1, c].plot(run["collapsed_at_answers"], S.THRESHOLD, "x", color=color, ms=9, mew=2)
        ax[1, c].axhline(S.THRESHOLD, color="k", ls="--", lw=1)
        ax[0, c].set_title(f"PPO, {REG_LABEL[reg]}\n{fmt_mean_sd(g['heldout_exact_match'], count=False)}, "
                           f"collapsed {S.count(g)}", fontsize=10)
        ax[1, c].set_xlabel("answers seen")
        thousands(ax[1, c], n_ticks=4)
    ax[0, 0].set(ylim=(0, 1), ylabel="held-out exact match")
    ax[1, 0].set(ylim=(0, 1), ylabel="max p̄ (training batches)")
    fig.suptitle("PPO with KL 0, seed by seed: does it learn, does it collapse?", y=1.0)
    fig.tight_layout()
    handles, labels = ax[0, 0].get_legend_handles_labels()
    handles += [Line2D([], [], color="k", ls="--", lw=1),
                Line2D([], [], color="0.3", marker="x", ls="none", ms=8, mew=2)]
    labels += [f"collapse threshold {S.THRESHOLD}", "a sustained collapse begins"]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), frameon=False)
    return fig
