"""Figures, drawn only from the files a run writes (metrics.csv, summary.json), so every
figure can be redrawn without retraining."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .runs import complete_runs

VARIANTS = ["vanilla", "token entropy", "batch entropy", "both"]
KL_LABELS = {"policy": "KL 0 (reference = policy, the paper's code)",
             "frozen": "frozen reference, adaptive KL"}
MAIN_PRETRAIN = "256 chains, 1 epoch"  # the paper's weak start
PALETTE = dict(zip(VARIANTS, sns.color_palette("colorblind", 4)))


def variant_of(config: dict) -> str:
    tok, bat = config["token_entropy_coef"] > 0, config["batch_entropy_coef"] > 0
    return {(False, False): "vanilla", (True, False): "token entropy",
            (False, True): "batch entropy", (True, True): "both"}[(tok, bat)]


def pretrain_label(config: dict) -> str:
    steps = f"{config['pretrain_steps']} steps" if config["pretrain_steps"] else "1 epoch"
    return f"{config['pretrain_examples']} chains, {steps}"


def load_runs(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All complete runs under ``results_dir``: (per-step metrics, one summary row per run)."""
    frames, rows = [], []
    for run, summary in complete_runs(results_dir):
        cfg = summary["config"]
        info = dict(run=run.name, variant=variant_of(cfg), kl_mode=cfg["kl_mode"], seed=cfg["seed"],
                    pretrain=pretrain_label(cfg), pretrain_examples=cfg["pretrain_examples"])
        m = pd.read_csv(run / "metrics.csv")
        for k, v in info.items():
            m[k] = v
        frames.append(m)
        a, b = summary["after"], summary["before"]
        rows.append(dict(info, naive_reward=summary["naive_reward"], seconds_per_step=summary["seconds_per_step"],
                         train_seconds=summary["train_seconds"], steps=cfg["ppo_steps"],
                         before_greedy_exact_match=b["greedy_exact_match"],
                         before_sampled_reward=b["sampled_reward"],
                         greedy_exact_match=a["greedy_exact_match"], sampled_exact_match=a["sampled_exact_match"],
                         greedy_reward=a["greedy_reward"], sampled_reward=a["sampled_reward"],
                         batch_entropy=a["eval_batch_entropy"], sample_entropy=a["eval_sample_entropy"],
                         mutual_information=a["eval_mutual_information"], max_share=a["eval_max_share"]))
    if not frames:
        raise FileNotFoundError(f"no complete runs under {results_dir}")
    return pd.concat(frames, ignore_index=True), pd.DataFrame(rows)


def _smooth(df: pd.DataFrame, col: str, window: int) -> pd.Series:
    return df.groupby("run")[col].transform(lambda s: s.rolling(window, min_periods=1).mean())


def plot_arithmetic_run(metrics: pd.DataFrame, summary: dict):
    """The four panels of one run: reward, held-out exact match, answer entropies, histograms."""
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    train = metrics.dropna(subset=["reward"])
    ax[0, 0].plot(train["step"], train["reward"], alpha=0.3, color="C0")
    ax[0, 0].plot(train["step"], train["reward"].rolling(10, min_periods=1).mean(), color="C0", label="batch reward")
    ax[0, 0].axhline(summary["naive_reward"], ls="--", color="k", label=f"naive solution (always {summary['naive_answer']})")
    ax[0, 0].set(xlabel="PPO step", ylabel="mean reward", title="training reward", ylim=(0, 1.02))
    ax[0, 0].legend(loc="lower right")
    ev = metrics.dropna(subset=["heldout_greedy_exact_match"])
    ax[0, 1].plot(ev["step"], ev["heldout_greedy_exact_match"], "o-", label="greedy")
    ax[0, 1].plot(ev["step"], ev["heldout_sampled_exact_match"], "s-", label="sampled")
    ax[0, 1].set(xlabel="PPO step", ylabel="exact match", title="held-out exact match", ylim=(0, 1.02))
    ax[0, 1].legend()
    for col, label in [("rollout_batch_entropy", "H(p̄) batch entropy"), ("rollout_sample_entropy", "mean H(p_i)"),
                       ("rollout_mutual_information", "I(prompt; answer)")]:
        ax[1, 0].plot(train["step"], train[col], label=label)
    ax2 = ax[1, 0].twinx()
    ax2.plot(train["step"], train["rollout_max_share"], color="k", ls=":", label="max p̄ (right)")
    ax2.set(ylabel="max p̄", ylim=(0, 1))
    ax[1, 0].set(xlabel="PPO step", ylabel="nats", title="answer distribution during PPO")
    h1, l1 = ax[1, 0].get_legend_handles_labels(); h2, l2 = ax2.get_legend_handles_labels()
    ax[1, 0].legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    _histograms(ax[1, 1], summary)
    cfg = summary["config"]
    fig.suptitle(f"{variant_of(cfg)}, {KL_LABELS[cfg['kl_mode']]}, seed {cfg['seed']}")
    fig.tight_layout()
    return fig


def _histograms(ax, summary: dict, title: str = "held-out answers (sampled)"):
    def counts(d):
        s = pd.Series({int(k): v for k, v in d.items() if str(k).isdigit()}, dtype=float)
        return s.reindex(range(0, 100), fill_value=0) / max(1, sum(d.values()))
    true = counts(summary["true_answers"])
    ax.bar(true.index, true.values, color="0.8", label="true answers", width=1.0)
    ax.step(true.index, counts(summary["before"]["sampled_answers"]).values, where="mid", label="before PPO")
    ax.step(true.index, counts(summary["after"]["sampled_answers"]).values, where="mid", label="after PPO")
    ax.set(xlabel="answer", ylabel="share", title=title, xlim=(-1, 60))
    ax.legend(fontsize=8)


def _per_kl_panels(metrics, col, ylabel, title, naive=None, ylim=None, window=10):
    kls = [k for k in KL_LABELS if k in set(metrics["kl_mode"])]
    fig, axes = plt.subplots(1, len(kls), figsize=(6.5 * len(kls), 4.2), sharey=True, squeeze=False)
    for ax, kl in zip(axes[0], kls):
        d = metrics[metrics["kl_mode"] == kl].dropna(subset=[col]).copy()
        if window > 1:
            d[col] = _smooth(d, col, window)
        sns.lineplot(data=d, x="step", y=col, hue="variant", hue_order=[v for v in VARIANTS if v in set(d["variant"])],
                     palette=PALETTE, errorbar="sd", ax=ax)
        if naive is not None:
            ax.axhline(naive, ls="--", color="k", lw=1, label="naive solution")
        ax.set(title=KL_LABELS[kl], xlabel="PPO step", ylabel=ylabel)
        if ylim:
            ax.set_ylim(*ylim)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def fig_reward(metrics, naive_reward):
    return _per_kl_panels(metrics, "reward", "mean training reward (10-step average)",
                          "Training reward (mean ± sd over seeds)", naive=naive_reward, ylim=(0, 1))


def fig_heldout(metrics):
    top = max(0.3, 1.15 * metrics["heldout_greedy_exact_match"].max())
    return _per_kl_panels(metrics, "heldout_greedy_exact_match", "held-out exact match (greedy)",
                          "Held-out exact match (mean ± sd over seeds)", ylim=(0, min(1.0, top)), window=1)


def fig_entropy(metrics):
    kls = [k for k in KL_LABELS if k in set(metrics["kl_mode"])]
    cols = [("rollout_batch_entropy", "H(p̄) (nats)"), ("rollout_sample_entropy", "mean_i H(p_i) (nats)"),
            ("rollout_mutual_information", "H(p̄) - mean H(p_i) = MI"), ("rollout_max_share", "max p̄ (collapse → 1)")]
    fig, axes = plt.subplots(len(kls), len(cols), figsize=(18, 3.8 * len(kls)), squeeze=False)
    for r, kl in enumerate(kls):
        d = metrics[metrics["kl_mode"] == kl].dropna(subset=["reward"]).copy()
        for c, (col, label) in enumerate(cols):
            d[col + "_s"] = _smooth(d, col, 10)
            sns.lineplot(data=d, x="step", y=col + "_s", hue="variant", errorbar="sd", palette=PALETTE,
                         hue_order=[v for v in VARIANTS if v in set(d["variant"])], ax=axes[r, c], legend=(c == 0))
            axes[r, c].set(ylabel=label, xlabel="PPO step", title=KL_LABELS[kl] if c == 0 else "")
    fig.suptitle("Answer distribution during PPO: batch entropy, mean per-sample entropy, mutual information, share of the top answer")
    fig.tight_layout()
    return fig


def fig_histograms(results_dir, runs: pd.DataFrame, kl_mode="policy", seed=None):
    """Answer histograms before and after PPO, one panel per variant (one seed)."""
    d = runs[(runs["kl_mode"] == kl_mode)]
    seed = d["seed"].min() if seed is None else seed
    variants = [v for v in VARIANTS if v in set(d["variant"])]
    fig, axes = plt.subplots(1, len(variants), figsize=(4.5 * len(variants), 3.6), sharey=True, squeeze=False)
    for ax, v in zip(axes[0], variants):
        run = d[(d["variant"] == v) & (d["seed"] == seed)]["run"].iloc[0]
        summary = json.loads((Path(results_dir) / run / "summary.json").read_text())
        _histograms(ax, summary, title=f"{v} (seed {seed})")
    fig.suptitle(f"Held-out answers before and after PPO, {KL_LABELS[kl_mode]}")
    fig.tight_layout()
    return fig


def fig_final_points(runs: pd.DataFrame, x: str, order, hue="variant", title=""):
    """Final held-out greedy exact match and sampled reward per setting, one dot per seed."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, col, label in [(axes[0], "greedy_exact_match", "final held-out exact match (greedy)"),
                           (axes[1], "sampled_reward", "final held-out reward (sampled)")]:
        hue_order = [v for v in VARIANTS if v in set(runs[hue])] if hue == "variant" else None
        sns.barplot(data=runs, x=x, y=col, hue=hue, order=order, hue_order=hue_order, palette=PALETTE if hue == "variant" else None,
                    errorbar="sd", alpha=0.6, ax=ax)
        np.random.seed(0)  # seaborn jitters the dots with numpy's global generator
        sns.stripplot(data=runs, x=x, y=col, hue=hue, order=order, hue_order=hue_order, palette=PALETTE if hue == "variant" else None,
                      dodge=True, color="k", size=4, ax=ax, legend=False)
        ax.set(ylabel=label, xlabel="", ylim=(0, 1))
    for ax in axes:
        ax.set_xticks(ax.get_xticks(), [t.get_text().replace(", ", "\n") for t in ax.get_xticklabels()])
    axes[1].get_legend().remove()
    axes[0].legend(loc="upper left", fontsize=8, ncol=2)
    if "naive_reward" in runs:
        axes[1].axhline(runs["naive_reward"].iloc[0], ls="--", color="k", lw=1)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def summary_table(runs: pd.DataFrame, by=("kl_mode", "pretrain", "variant")) -> pd.DataFrame:
    """Mean ± sd over seeds of the final numbers, one row per setting."""
    cols = ["greedy_exact_match", "sampled_exact_match", "sampled_reward", "max_share", "mutual_information"]
    g = runs.groupby(list(by))
    out = g[cols].agg(["mean", "std"])
    table = pd.DataFrame(index=out.index)
    for c in cols:
        table[c] = [f"{m:.3f} ± {s:.3f}" if pd.notna(s) else f"{m:.3f}" for m, s in zip(out[(c, "mean")], out[(c, "std")])]
    table["seeds"] = g.size()
    table["s/step"] = g["seconds_per_step"].mean().round(2)
    table = table.reset_index()
    rank = {**{v: i for i, v in enumerate(KL_LABELS)}, **{v: i for i, v in enumerate(VARIANTS)}}

    def sort_key(i):  # KL mode, then the paper's pretraining first, then set size, then variant
        row = table.loc[i]
        return (rank[row["kl_mode"]], row["pretrain"] != MAIN_PRETRAIN, int(row["pretrain"].split()[0]),
                rank[row["variant"]])
    return table.loc[sorted(table.index, key=sort_key)].reset_index(drop=True)
