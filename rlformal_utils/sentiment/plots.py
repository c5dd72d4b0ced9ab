"""Sentiment figures, drawn only from the files a run writes (metrics.csv, summary.json,
eval_samples.csv), so every figure can be redrawn without retraining."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..runs import complete_runs

BEFORE_AFTER = {"before": "0.6", "after": sns.color_palette("colorblind")[2]}


def setting_label(config: dict) -> str:
    """Runs that differ only by seed share a setting: policy (with LoRA rank), reward, KL coefficient."""
    policy = config["policy"]
    if policy == "rt-gpt2":
        policy += f" ({config['policy_size']})"
    if config.get("lora_rank"):
        policy += f"+lora{config['lora_rank']}"
    label = f"{policy}, reward {config['reward']}"
    if config.get("kl_mode", "frozen") != "frozen":
        label += f", KL ref = {config['kl_mode']}"
    label += f", KL {config.get('kl_coef', 0.2):g}" + (" adaptive" if config.get("adaptive_kl", True) else "")
    return label


def load_runs(results_dir: str | Path):
    """All complete sentiment runs: (per-step metrics, one row per run, held-out samples)."""
    frames, rows, samples = [], [], []
    for run, summary in complete_runs(results_dir):
        cfg = summary["config"]
        info = dict(run=run.name, setting=setting_label(cfg), seed=cfg["seed"], reward_name=cfg["reward"],
                    judge_name=summary["judge"])
        m = pd.read_csv(run / "metrics.csv").assign(**info)
        frames.append(m)
        row = dict(info, policy=summary.get("policy_label", cfg["policy"]), lora_rank=cfg.get("lora_rank", 0),
                   prompt_format=cfg.get("prompt_format", "plain"), kl_coef=cfg.get("kl_coef", 0.2),
                   adaptive_kl=cfg.get("adaptive_kl", True), steps=cfg["ppo_steps"], batch_size=cfg["ppo_batch_size"],
                   ppo_epochs=cfg.get("ppo_epochs", 4), ppo_lr=cfg["ppo_lr"], train_seconds=summary["train_seconds"],
                   seconds_per_step=summary["seconds_per_step"], notebook_seconds=summary.get("notebook_seconds"),
                   final_kl=float(m["kl"].dropna().tail(5).mean()) if "kl" in m and m["kl"].notna().any() else np.nan,
                   real_review_similarity=summary.get("real_review_similarity", np.nan),
                   classifier_heldout_accuracy=(summary.get("classifier") or {}).get("heldout_accuracy"))
        for when in ("before", "after"):
            for k, v in summary[when].items():
                row[f"{when}_{k}"] = v
        rows.append(row)
        if (run / "eval_samples.csv").exists():
            samples.append(pd.read_csv(run / "eval_samples.csv").assign(**info))
    if not frames:
        raise FileNotFoundError(f"no complete sentiment runs under {results_dir}")
    return (pd.concat(frames, ignore_index=True), pd.DataFrame(rows),
            pd.concat(samples, ignore_index=True) if samples else pd.DataFrame())


RUN_COLUMNS = {  # tidy per-run table: column -> column of load_runs()
    "run": "run", "policy": "policy", "lora_rank": "lora_rank", "prompt_format": "prompt_format", "reward": "reward_name",
    "kl_coef": "kl_coef", "adaptive_kl": "adaptive_kl", "seed": "seed", "steps": "steps", "batch_size": "batch_size",
    "ppo_epochs": "ppo_epochs", "ppo_lr": "ppo_lr", "n_heldout": "before_n",
    "reward_before": "before_reward_mean", "reward_after": "after_reward_mean",
    "judge_positive_before": "before_judge_positive_share", "judge_positive_after": "after_judge_positive_share",
    "perplexity_before": "before_perplexity", "perplexity_after": "after_perplexity",
    "review_similarity_before": "before_review_similarity", "review_similarity_after": "after_review_similarity",
    "distinct_2_before": "before_distinct_2", "distinct_2_after": "after_distinct_2",
    "repetition_before": "before_repetition", "repetition_after": "after_repetition",
    "final_kl": "final_kl", "train_seconds": "train_seconds", "wall_seconds": "notebook_seconds",
}


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """``results/sentiment_runs.csv``: one row per run, plain numbers, plus the derived
    ``reward_gain`` and ``perplexity_ratio`` (after / before)."""
    out = pd.DataFrame({k: runs[v] if v in runs else np.nan for k, v in RUN_COLUMNS.items()})
    out.insert(out.columns.get_loc("reward_after") + 1, "reward_gain", out["reward_after"] - out["reward_before"])
    out.insert(out.columns.get_loc("perplexity_after") + 1, "perplexity_ratio",
               out["perplexity_after"] / out["perplexity_before"])
    return out.sort_values(["policy", "reward", "kl_coef", "seed"]).reset_index(drop=True)


def plot_sentiment_run(metrics: pd.DataFrame, samples: pd.DataFrame, summary: dict):
    """One run: training reward, KL, held-out reward distributions, judge share and perplexity."""
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    train = metrics.dropna(subset=["reward"])
    a = ax[0, 0]
    a.plot(train["step"], train["reward"], color="C0", label="training batch (mean)")
    a.fill_between(train["step"], train["reward"] - train["reward_sd"], train["reward"] + train["reward_sd"],
                   color="C0", alpha=0.15, label="± sd within batch")
    if "heldout_reward_mean" in metrics:
        ev = metrics.dropna(subset=["heldout_reward_mean"])
        a.plot(ev["step"], ev["heldout_reward_mean"], "o-", color="C3", label="held-out prompts (mean)")
    a.set(xlabel="PPO step", ylabel=f"reward ({summary['config']['reward']})", title="reward during PPO")
    a.legend(fontsize=8)
    a = ax[0, 1]
    a.plot(train["step"], train["kl"], color="C1")
    a.set(xlabel="PPO step", ylabel="KL(policy || reference) per response, nats", title="KL to the reference")
    a = ax[1, 0]
    bins = np.histogram_bin_edges(np.r_[samples["reward_before"], samples["reward_after"]], bins=30)
    for when, color in BEFORE_AFTER.items():
        col = samples[f"reward_{when}"]
        a.hist(col, bins=bins, alpha=0.55, color=color,
               label=f"{when} PPO: mean {col.mean():.2f}, median {col.median():.2f}")
    a.set(xlabel="reward of prompt + response", ylabel="held-out prompts", title="held-out reward distribution")
    a.legend(fontsize=8)
    a = ax[1, 1]
    b, f = summary["before"], summary["after"]
    keys = [("judge_positive_share", f"positive share\n(judge: {summary['judge']})"),
            ("reward_positive_share", "positive share\n(reward model)"), ("review_similarity", "review-likeness"),
            ("distinct_2", "distinct-2")]
    keys = [(k, name) for k, name in keys if k in b]
    x = np.arange(len(keys))
    a.bar(x - 0.2, [b[k] for k, _ in keys], 0.4, color=BEFORE_AFTER["before"], label="before")
    a.bar(x + 0.2, [f[k] for k, _ in keys], 0.4, color=BEFORE_AFTER["after"], label="after")
    labels = [name for _, name in keys]
    a.set_xticks(x, labels)
    a.set(ylim=(0, 1), ylabel="share of held-out responses",
          title=f"judge and fluency (base-model perplexity {b['perplexity']:.1f} -> {f['perplexity']:.1f})")
    a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _band(ax, df: pd.DataFrame, col: str, window: int, label: str, color):
    """Mean over seeds of a per-run rolling mean, with a ± sd band over seeds."""
    d = df.dropna(subset=[col]).copy()
    d["smooth"] = d.groupby("run")[col].transform(lambda s: s.rolling(window, min_periods=1).mean())
    g = d.groupby("step")["smooth"].agg(["mean", "std", "count"]).fillna(0.0)
    n = int(d["run"].nunique())
    ax.plot(g.index, g["mean"], color=color, label=f"{label} ({n} seed{'s' if n > 1 else ''})")
    ax.fill_between(g.index, g["mean"] - g["std"], g["mean"] + g["std"], color=color, alpha=0.2)


def fig_over_steps(metrics: pd.DataFrame, col: str, ylabel: str, title: str, window: int = 5,
                   by_reward: bool = False):
    """One curve per setting; ``by_reward`` puts each reward (each its own scale) in its own panel."""
    groups = list(metrics.groupby("reward_name")) if by_reward else [(None, metrics)]
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.2), squeeze=False)
    settings = sorted(metrics["setting"].unique())
    for ax, (reward, part) in zip(axes[0], groups):
        for setting, d in part.groupby("setting"):
            _band(ax, d, col, window, setting, f"C{settings.index(setting)}")
        ax.set(xlabel="PPO step", ylabel=ylabel + (f" ({reward})" if reward else ""), title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_distributions(samples: pd.DataFrame):
    """Held-out reward distributions before vs after PPO, pooled over seeds, one panel per setting."""
    settings = sorted(samples["setting"].unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.2), squeeze=False)
    for a, setting in zip(axes[0], settings):
        d = samples[samples["setting"] == setting]
        bins = np.histogram_bin_edges(np.r_[d["reward_before"], d["reward_after"]], bins=40)
        for when, color in BEFORE_AFTER.items():
            col = d[f"reward_{when}"]
            a.hist(col, bins=bins, alpha=0.55, color=color, density=True,
                   label=f"{when} PPO: mean {col.mean():.2f}, median {col.median():.2f}")
        a.set(xlabel=f"reward ({d['reward_name'].iloc[0]}) of prompt + response", ylabel="density",
              title=f"{setting}\n{d['run'].nunique()} seed(s) x {len(d) // max(d['run'].nunique(), 1)} held-out prompts")
        a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_judge_perplexity(runs: pd.DataFrame):
    """Before vs after: reward mean, the independent judge's positive share, reference perplexity.
    Bars: mean over seeds; dots: single seeds."""
    panels = [("reward_mean", "held-out mean reward"), ("judge_positive_share", "positive share (independent judge)"),
              ("perplexity", "perplexity of responses\nunder the frozen base model")]
    settings = sorted(runs["setting"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for a, (col, title) in zip(axes, panels):
        for i, setting in enumerate(settings):
            d = runs[runs["setting"] == setting]
            for j, (when, color) in enumerate(BEFORE_AFTER.items()):
                x = i + (j - 0.5) * 0.4
                vals = d[f"{when}_{col}"]
                a.bar(x, vals.mean(), 0.38, color=color, label=f"{when} PPO" if i == 0 else None)
                a.scatter(np.full(len(vals), x), vals, color="k", s=12, zorder=3)
        judges = [runs.loc[runs["setting"] == s, "judge_name"].iloc[0] for s in settings]
        a.set_xticks(range(len(settings)), [s.replace(", ", "\n") + f"\njudge: {j}" for s, j in zip(settings, judges)],
                     fontsize=8)
        a.set(title=title)
        if col == "judge_positive_share":
            a.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _pm(s: pd.Series, digits: int) -> str:
    s = s.dropna()
    if len(s) == 0:
        return ""
    if len(s) == 1:
        return f"{s.iloc[0]:.{digits}f}"
    return f"{s.mean():.{digits}f} ± {s.std(ddof=1):.{digits}f}"


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: held-out numbers before -> after PPO as mean ± sd over seeds."""
    out = []
    for setting, d in runs.groupby("setting"):
        row = {"setting": setting, "seeds": len(d), "PPO steps": int(d["steps"].iloc[0]),
               "prompt format": d["prompt_format"].iloc[0],
               "batch": int(d["batch_size"].iloc[0]), "judge": d["judge_name"].iloc[0]}
        for col, name, digits in [("reward_mean", "mean reward", 2), ("reward_median", "median reward", 2),
                                  ("judge_positive_share", "judge positive share", 3),
                                  ("reward_positive_share", "reward-model positive share", 3),
                                  ("perplexity", "base-model perplexity", 1),
                                  ("review_similarity", "review-likeness", 3), ("distinct_2", "distinct-2", 3)]:
            if f"before_{col}" not in d:
                continue
            row[f"{name} before"] = _pm(d[f"before_{col}"], digits)
            row[f"{name} after"] = _pm(d[f"after_{col}"], digits)
        acc = d["classifier_heldout_accuracy"].dropna()
        row["classifier held-out accuracy"] = f"{acc.iloc[0]:.3f}" if len(acc) else ""
        row["final KL (nats)"] = _pm(d["final_kl"], 2)
        row["s / PPO step"] = _pm(d["seconds_per_step"], 2)
        row["minutes / run"] = _pm(d["notebook_seconds"] / 60, 1) if d["notebook_seconds"].notna().all() else ""
        out.append(row)
    return pd.DataFrame(out)


def _mean_sd(v: pd.Series) -> tuple[float, float]:
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fig_kl_sweep(table: pd.DataFrame):
    """The KL sweep from the tidy per-run table: reward gain, the judge's positive share, the
    perplexity ratio and review-likeness against the KL coefficient. Dots: seeds; line and error
    bars: mean ± sd over seeds (ddof=1)."""
    panels = [("reward_gain", "held-out reward gain (logits)", [(2.0, "target +2.0")]),
              ("judge_positive_after", "VADER positive share after PPO", [(0.8, "target 0.8")]),
              ("perplexity_ratio", "perplexity under the base model,\nafter / before", [(1.5, "target <= 1.5"), (1.0, None)]),
              ("review_similarity_after", "review-likeness after PPO", [])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    policies = sorted(table["policy"].unique())
    for a, (col, ylabel, lines) in zip(axes, panels):
        for i, policy in enumerate(policies):
            d = table[table["policy"] == policy]
            stats = d.groupby("kl_coef")[col].agg(["mean", "std", "count"]).fillna(0.0)
            a.errorbar(stats.index, stats["mean"], yerr=stats["std"], fmt="o-", color=f"C{i}", capsize=3,
                       label=f"{policy} (mean ± sd)")
            a.scatter(d["kl_coef"], d[col], color=f"C{i}", s=14, alpha=0.5, zorder=3)
            before = {"judge_positive_after": "judge_positive_before", "review_similarity_after": "review_similarity_before"}
            if col in before:
                a.axhline(d[before[col]].mean(), color=f"C{i}", ls=":", lw=1, label="before PPO")
        for y, text in lines:
            a.axhline(y, color="0.4", ls="--", lw=1, label=text)
        a.set(xlabel="KL coefficient (fixed)", ylabel=ylabel)
        a.set_xticks(sorted(table["kl_coef"].unique()))
        a.legend(fontsize=8)
    fig.suptitle("KL sweep: what the KL penalty buys (held-out prompts)", fontsize=11)
    fig.tight_layout()
    return fig


def fig_tradeoff(table: pd.DataFrame):
    """Reward gain against drift: the perplexity ratio and review-likeness after PPO, one point per
    run, coloured by KL coefficient; crosses: mean ± sd over seeds per coefficient."""
    panels = [("perplexity_ratio", "perplexity under the base model, after / before"),
              ("review_similarity_after", "review-likeness after PPO")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    kls = sorted(table["kl_coef"].unique())
    colors = dict(zip(kls, sns.color_palette("viridis", len(kls))))
    for a, (col, ylabel) in zip(axes, panels):
        for kl in kls:
            d = table[table["kl_coef"] == kl]
            a.scatter(d["reward_gain"], d[col], color=colors[kl], s=22, alpha=0.6)
            (mx, sx), (my, sy) = _mean_sd(d["reward_gain"]), _mean_sd(d[col])
            a.errorbar(mx, my, xerr=sx, yerr=sy, fmt="s", color=colors[kl], capsize=3, ms=7,
                       label=f"KL {kl:g} ({len(d)} seed{'s' if len(d) > 1 else ''})")
        a.set(xlabel="held-out reward gain (logits)", ylabel=ylabel)
        a.legend(fontsize=8)
    if "review_similarity_before" in table:
        axes[1].axhline(table["review_similarity_before"].mean(), color="0.5", ls=":", lw=1)
    axes[0].axhline(1.5, color="0.4", ls="--", lw=1)
    fig.suptitle("Reward gain against drift from the base model", fontsize=11)
    fig.tight_layout()
    return fig
