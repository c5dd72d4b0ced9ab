"""Sentiment figures, drawn only from the files a run writes (metrics.csv, summary.json,
eval_samples.csv), so every figure can be redrawn without retraining."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..figures import band, fmt_mean_sd, mean_sd
from ..runs import complete_runs

BEFORE_AFTER = {"before": "0.6", "after": "#029e73"}  # grey; the green of seaborn's colorblind palette


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
    return f"{label}, {update_label(config)}"


def update_label(config: dict) -> str:
    """What the update did, apart from policy and reward: ``KL 0.2`` for PPO (``adaptive`` with trl's
    controller); the group-relative update adds its name and every setting other than its defaults
    (one mini-batch of the whole batch among them): ``KL 0.05, group-relative k4, entropy 0.1``."""
    label = f"KL {config.get('kl_coef', 0.2):g}" + (" adaptive" if config.get("adaptive_kl", True) else "")
    algorithm = algorithm_of(config)
    if algorithm == "ppo":
        return label
    label += f", {ALGORITHMS.get(algorithm, algorithm)} k{config.get('group_size', 4)}"
    for key, name, default in [("group_epochs", "epochs", 1), ("entropy_coef", "entropy", 0.0),
                               ("ppo_lr", "lr", 1e-3), ("ppo_batch_size", "batch", 16)]:
        if config.get(key, default) != default:
            label += f", {name} {config[key]:g}"
    if config.get("ppo_mini_batch_size", config.get("ppo_batch_size")) != config.get("ppo_batch_size"):
        label += f", mini-batch {config['ppo_mini_batch_size']}"
    return label


ALGORITHMS = {"ppo": "PPO", "group": "group-relative"}  # names for a reader


def algorithm_of(config: dict) -> str:
    """The update a run trained with; runs that do not name one are PPO runs."""
    algorithm = config.get("algorithm")
    return "ppo" if algorithm is None or algorithm != algorithm else str(algorithm)


def load_runs(results_dir: str | Path, ontask=None, n_boot: int = 1000):
    """All complete sentiment runs: (per-step metrics, one row per run, held-out samples).

    With ``ontask`` (a function of a run's config giving its review-vs-other classifier, such as
    ``ontask.ontask_for``), runs whose ``eval_samples.csv`` has no ``review_before`` /
    ``review_after`` column get it from the texts, and their review share from it. Each run's row also holds the 95 % paired-bootstrap intervals (``n_boot`` resamples of
    its held-out prompts, seed 0) of the reward gain, the judge's positive share after PPO, the
    perplexity ratio and the review share after PPO (``<measure>_lo`` / ``_hi``)."""
    from .intervals import interval_columns
    frames, rows, samples = [], [], []
    for run, summary in complete_runs(results_dir):
        cfg = summary["config"]
        info = dict(run=run.name, setting=setting_label(cfg), seed=cfg["seed"], reward_name=cfg["reward"],
                    judge_name=summary["judge"], algorithm=algorithm_of(cfg), update=update_label(cfg))
        m = pd.read_csv(run / "metrics.csv").assign(**info)
        frames.append(m)
        row = dict(info, policy=summary.get("policy_label", cfg["policy"]), lora_rank=cfg.get("lora_rank", 0),
                   prompt_format=cfg.get("prompt_format", "plain"), kl_coef=cfg.get("kl_coef", 0.2),
                   adaptive_kl=cfg.get("adaptive_kl", True), steps=cfg["ppo_steps"], batch_size=cfg["ppo_batch_size"],
                   ppo_epochs=cfg.get("ppo_epochs", 4), ppo_lr=cfg["ppo_lr"], mini_batch_size=cfg.get("ppo_mini_batch_size"),
                   group_size=cfg.get("group_size") if algorithm_of(cfg) == "group" else np.nan,
                   train_seconds=summary["train_seconds"],
                   seconds_per_step=summary["seconds_per_step"], notebook_seconds=summary.get("notebook_seconds"),
                   final_kl=float(m["kl"].dropna().tail(5).mean()) if "kl" in m and m["kl"].notna().any() else np.nan,
                   real_review_similarity=summary.get("real_review_similarity", np.nan),
                   classifier_heldout_accuracy=(summary.get("classifier") or {}).get("heldout_accuracy"))
        for when in ("before", "after"):
            for k, v in summary[when].items():
                row[f"{when}_{k}"] = v
        if (run / "eval_samples.csv").exists():
            s = pd.read_csv(run / "eval_samples.csv")
            if ontask is not None:
                for when in ("before", "after"):
                    if f"review_{when}" not in s:
                        s[f"review_{when}"] = ontask(cfg)(s[f"text_{when}"].fillna("").astype(str).tolist())
            for when in ("before", "after"):
                if f"review_{when}" in s and f"{when}_review_share" not in row:
                    row[f"{when}_review_share"] = float(s[f"review_{when}"].astype(float).mean())
            row.update(interval_columns(s, n_boot=n_boot))
            samples.append(s.assign(**info))
        rows.append(row)
    if not frames:
        raise FileNotFoundError(f"no complete sentiment runs under {results_dir}")
    return (pd.concat(frames, ignore_index=True), pd.DataFrame(rows),
            pd.concat(samples, ignore_index=True) if samples else pd.DataFrame())


RUN_COLUMNS = {  # tidy per-run table: column -> column of load_runs()
    "run": "run", "algorithm": "algorithm", "update": "update", "policy": "policy", "lora_rank": "lora_rank", "prompt_format": "prompt_format", "reward": "reward_name",
    "kl_coef": "kl_coef", "adaptive_kl": "adaptive_kl", "seed": "seed", "steps": "steps", "batch_size": "batch_size",
    "ppo_epochs": "ppo_epochs", "ppo_lr": "ppo_lr", "mini_batch_size": "mini_batch_size", "group_size": "group_size",
    "n_heldout": "before_n",
    "reward_before": "before_reward_mean", "reward_after": "after_reward_mean",
    "judge_positive_before": "before_judge_positive_share", "judge_positive_after": "after_judge_positive_share",
    "perplexity_before": "before_perplexity", "perplexity_after": "after_perplexity",
    "review_similarity_before": "before_review_similarity", "review_similarity_after": "after_review_similarity",
    "distinct_2_before": "before_distinct_2", "distinct_2_after": "after_distinct_2",
    "repetition_before": "before_repetition", "repetition_after": "after_repetition",
    "review_share_before": "before_review_share", "review_share_after": "after_review_share",
    "final_kl": "final_kl", "train_seconds": "train_seconds", "wall_seconds": "notebook_seconds",
    **{f"{m}_{end}": f"{m}_{end}" for m in ("reward_gain", "judge_positive_after", "perplexity_ratio",
                                            "review_share_after") for end in ("lo", "hi")},
}


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """``results/sentiment_runs.csv``: one row per run, plain numbers, plus the derived
    ``reward_gain`` and ``perplexity_ratio`` (after / before) and the runs' 95 % bootstrap intervals
    (``<measure>_lo`` / ``_hi``). Runs that name no ``algorithm`` are PPO runs."""
    out = pd.DataFrame({k: runs[v] if v in runs else np.nan for k, v in RUN_COLUMNS.items()})
    out["algorithm"] = [algorithm_of(dict(algorithm=a)) for a in out["algorithm"]]
    out["update"] = [u if isinstance(u, str) else update_label(dict(kl_coef=kl, adaptive_kl=ad is True, algorithm=a))
                     for u, kl, ad, a in zip(out["update"], out["kl_coef"], out["adaptive_kl"], out["algorithm"])]
    out.insert(out.columns.get_loc("reward_after") + 1, "reward_gain", out["reward_after"] - out["reward_before"])
    out.insert(out.columns.get_loc("perplexity_after") + 1, "perplexity_ratio",
               out["perplexity_after"] / out["perplexity_before"])
    return out.sort_values(["algorithm", "policy", "reward", "kl_coef", "seed"]).reset_index(drop=True)


def plot_scale(probe: pd.DataFrame, reward_name: str):
    """The reward's scale: its value on real held-out rotten and fresh snippets (cut to the length of
    review start + response). PPO is asked to move the policy's text to the right of this picture."""
    fig, a = plt.subplots(figsize=(9, 3))
    bins = np.histogram_bin_edges(probe["reward"], bins=30)
    for (label, d), color in zip(sorted(probe.groupby("label"), key=lambda kv: kv[0], reverse=True), ("C3", "C0")):
        a.hist(d["reward"], bins=bins, alpha=0.55, color=color, label=f"real {label} snippets: mean {d['reward'].mean():.2f}")
    a.set(xlabel=f"reward ({reward_name})", ylabel="held-out snippets", title="the reward on real reviews")
    a.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    return fig


def plot_start(before: pd.DataFrame, scale: pd.DataFrame, reward_name: str):
    """Where PPO starts: the reward of the base model's held-out responses against the mean reward
    of real rotten and fresh review snippets of the same length (the scale to read it on)."""
    fig, a = plt.subplots(figsize=(9, 3.2))
    a.hist(before["reward"], bins=30, color=BEFORE_AFTER["before"], alpha=0.8,
           label=f"base model, held-out prompts: mean {before['reward'].mean():.2f}")
    for (label, row), color in zip(scale.iterrows(), ("C3", "C0")):
        a.axvline(row["reward"], color=color, lw=2, ls="--", label=f"real {label} snippets: mean {row['reward']:.2f}")
    a.set(xlabel=f"reward of review start + response ({reward_name})", ylabel="held-out prompts",
          title="before PPO: the base model's reward against real reviews")
    a.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    return fig


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
    a.legend()
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
    a.legend()
    a = ax[1, 1]
    b, f = summary["before"], summary["after"]
    keys = [("judge_positive_share", f"positive share\n(judge: {summary['judge']})"),
            ("reward_positive_share", "positive share\n(reward model)"), ("review_similarity", "review-likeness"),
            ("distinct_2", "distinct-2")]
    keys = [(k, name) for k, name in keys if k in b]
    x = np.arange(len(keys))
    a.bar(x - 0.2, [b[k] for k, _ in keys], 0.4, color=BEFORE_AFTER["before"], label="before")
    a.bar(x + 0.2, [f[k] for k, _ in keys], 0.4, color=BEFORE_AFTER["after"], label="after")
    a.set_xticks(x, [name for _, name in keys])
    a.set(ylim=(0, 1), ylabel="share of held-out responses",
          title=f"judge and fluency (base-model perplexity {b['perplexity']:.1f} -> {f['perplexity']:.1f})")
    a.legend()
    fig.tight_layout()
    return fig


def short_labels(settings) -> tuple[dict, str]:
    """Setting labels that keep only the parts in which the settings differ ("KL 0.2"), and the
    parts they share ("smollm2-135m+lora16, reward minilm-logreg") for a title. One setting keeps
    its whole label."""
    settings = list(settings)
    parts = {s: s.split(", ") for s in settings}
    if len(settings) < 2:
        return {s: s for s in settings}, ""
    common = [p for p in parts[settings[0]] if all(p in q for q in parts.values())]
    return {s: ", ".join(p for p in q if p not in common) or s for s, q in parts.items()}, ", ".join(common)


def _titled(title: str, common: str) -> str:
    return f"{title}\n{common}" if common else title


TIME_COLUMNS = ("time_generate", "time_reward", "time_ppo_step", "time_update")  # the parts of a training step


def training_seconds(metrics: pd.DataFrame) -> pd.Series:
    """Seconds of training spent up to each logged step of its run (sampling, reward and update; the
    held-out evaluations not counted): the cumulative sum of the step's time columns, 0 at step 0."""
    cols = [c for c in TIME_COLUMNS if c in metrics]
    per_step = metrics[cols].fillna(0.0).sum(axis=1) if cols else pd.Series(0.0, index=metrics.index)
    return per_step.groupby(metrics["run"]).cumsum()


def fig_over_steps(metrics: pd.DataFrame, col: str, ylabel: str, title: str, window: int = 5,
                   by_reward: bool = False, against_seconds: bool = False):
    """One curve per setting: the mean over seeds of each run's rolling mean over ``window`` steps,
    with a ± sd band over seeds (ddof=1). ``by_reward`` gives each reward (each its own scale) its
    own panel; ``against_seconds`` adds a panel against the training seconds spent (the mean over
    seeds at each step), so updates of different cost compare at equal CPU time."""
    metrics = metrics.assign(seconds=training_seconds(metrics))
    groups = list(metrics.groupby("reward_name")) if by_reward else [(None, metrics)]
    xs = ["step", "seconds"] if against_seconds else ["step"]
    fig, axes = plt.subplots(1, len(groups) * len(xs), figsize=(6.5 * len(groups) * len(xs), 4.4), squeeze=False)
    settings = sorted(metrics["setting"].unique())
    short, common = short_labels(settings)
    panels = [(reward, part, x) for reward, part in groups for x in xs]
    for ax, (reward, part, x) in zip(axes[0], panels):
        for setting, d in part.groupby("setting"):
            d = d.dropna(subset=[col]).copy()
            d["smooth"] = d.groupby("run")[col].transform(lambda s: s.rolling(window, min_periods=1).mean())
            n = d["run"].nunique()
            label = f"{short[setting]} ({n} seed{'s' if n > 1 else ''})"
            if x == "step":
                band(ax, d, "step", "smooth", label, color=f"C{settings.index(setting)}")
            else:
                mean = d.groupby("step")[["seconds", "smooth"]].mean()
                ax.plot(mean["seconds"], mean["smooth"], color=f"C{settings.index(setting)}", label=label)
        ax.set(xlabel="training step" if x == "step" else
               "training seconds (sampling, reward, update; one thread)",
               ylabel=ylabel + (f" ({reward})" if reward else ""), title=_titled(title, common))
        ax.legend()
    fig.tight_layout()
    return fig


def fig_distributions(samples: pd.DataFrame):
    """Held-out reward distributions before vs after PPO, pooled over seeds, one panel per setting;
    panels of the same reward share their x-axis."""
    settings = sorted(samples["setting"].unique())
    short, common = short_labels(settings)
    one_reward = samples["reward_name"].nunique() == 1
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings) + 0.6, 4.0), squeeze=False,
                             sharex=one_reward, sharey=True)
    bins = np.histogram_bin_edges(np.r_[samples["reward_before"], samples["reward_after"]], bins=40)
    for a, setting in zip(axes[0], settings):
        d = samples[samples["setting"] == setting]
        if not one_reward:
            bins = np.histogram_bin_edges(np.r_[d["reward_before"], d["reward_after"]], bins=40)
        for when, color in BEFORE_AFTER.items():
            col = d[f"reward_{when}"]
            a.hist(col, bins=bins, alpha=0.55, color=color, density=True, label=f"{when}: mean {col.mean():.2f}")
        runs = d["run"].nunique()
        a.set(xlabel=f"reward ({d['reward_name'].iloc[0]})", title=f"{short[setting]}\n{runs} seed(s) x "
              f"{len(d) // max(runs, 1)} prompts")
        a.legend(loc="upper left")
    axes[0, 0].set_ylabel("density")
    if common:
        fig.suptitle(f"Held-out reward of review start + response, before and after PPO ({common})")
    fig.tight_layout()
    return fig


def fig_judge_perplexity(runs: pd.DataFrame):
    """Before vs after PPO: the held-out mean reward (one panel per reward: different scales), the
    independent judge's positive share and the perplexity under the frozen base model. Bars: mean
    over seeds; dots: single seeds."""
    settings = sorted(runs["setting"].unique())
    short, common = short_labels(settings)
    rewards = sorted(runs["reward_name"].unique())
    panels = [("reward_mean", f"held-out mean reward\n({r})", r) for r in rewards]
    panels += [("judge_positive_share", "positive share\n(independent judge)", None),
               ("perplexity", "perplexity of the responses\nunder the frozen base model", None)]
    judges = runs.groupby("setting")["judge_name"].first()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 4.3), squeeze=False)
    for a, (col, title, reward) in zip(axes[0], panels):
        shown = [s for s in settings if reward is None or runs.loc[runs["setting"] == s, "reward_name"].iloc[0] == reward]
        for i, setting in enumerate(shown):
            d = runs[runs["setting"] == setting]
            for j, (when, color) in enumerate(BEFORE_AFTER.items()):
                x = i + (j - 0.5) * 0.4
                vals = d[f"{when}_{col}"]
                a.bar(x, vals.mean(), 0.38, color=color, label=f"{when} PPO" if i == 0 else None)
                a.scatter(np.full(len(vals), x), vals, color="k", s=12, zorder=3)
        labels = [short[s] + (f"\njudge: {judges[s]}" if judges.nunique() > 1 else "") for s in shown]
        a.set_xticks(range(len(shown)), labels)
        a.set(title=title)
        if col == "judge_positive_share":
            a.set_ylim(0, 1)
    axes[0, 0].legend()
    if common:
        fig.suptitle(common + (f", judge {judges.iloc[0]}" if judges.nunique() == 1 else ""))
    fig.tight_layout()
    return fig


def _pm(s: pd.Series, digits: int) -> str:
    return fmt_mean_sd(s, digits, count=False, missing="")


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: held-out numbers before -> after PPO as mean ± sd over seeds, and the
    reward gain and perplexity ratio with their 95 % t-interval over seeds."""
    from .intervals import fmt_interval, t_interval
    out = []
    for setting, d in runs.groupby("setting"):
        row = {"setting": setting, "seeds": len(d), "PPO steps": int(d["steps"].iloc[0]),
               "prompt format": d["prompt_format"].iloc[0],
               "batch": int(d["batch_size"].iloc[0]), "judge": d["judge_name"].iloc[0]}
        for col, name, digits in [("reward_mean", "mean reward", 2), ("reward_median", "median reward", 2),
                                  ("judge_positive_share", "judge positive share", 3),
                                  ("reward_positive_share", "reward-model positive share", 3),
                                  ("perplexity", "base-model perplexity", 1),
                                  ("review_similarity", "review-likeness", 3), ("review_share", "review share", 3),
                                  ("distinct_2", "distinct-2", 3)]:
            if f"before_{col}" not in d:
                continue
            row[f"{name} before"] = _pm(d[f"before_{col}"], digits)
            row[f"{name} after"] = _pm(d[f"after_{col}"], digits)
        gain = d["after_reward_mean"] - d["before_reward_mean"]
        row["reward gain (95 % t-interval over seeds)"] = fmt_interval(*t_interval(gain)[:3], 2, True)
        ratio = d["after_perplexity"] / d["before_perplexity"]
        row["perplexity ratio (95 % t-interval over seeds)"] = fmt_interval(*t_interval(ratio)[:3], 2)
        acc = d["classifier_heldout_accuracy"].dropna()
        row["classifier held-out accuracy"] = f"{acc.iloc[0]:.3f}" if len(acc) else ""
        row["final KL (nats)"] = _pm(d["final_kl"], 2)
        row["s / PPO step"] = _pm(d["seconds_per_step"], 2)
        row["minutes / run"] = _pm(d["notebook_seconds"] / 60, 1) if d["notebook_seconds"].notna().all() else ""
        out.append(row)
    return pd.DataFrame(out)


def median_seed(runs: pd.DataFrame, setting: str) -> int:
    """The seed of ``setting`` whose held-out reward gain is the median over its seeds (of an even
    number of seeds, the lower of the middle two; ties go to the lower seed)."""
    d = runs[runs["setting"] == setting].assign(gain=lambda x: x["after_reward_mean"] - x["before_reward_mean"])
    d = d.sort_values(["gain", "seed"], kind="stable")
    return int(d["seed"].iloc[(len(d) - 1) // 2])


def examples_table(runs: pd.DataFrame, samples: pd.DataFrame, n: int = 12) -> tuple[str, int, pd.DataFrame]:
    """The before/after table: the first ``n`` held-out prompts of the setting with the most seeds,
    from its seed with the median reward gain (``median_seed``), both responses and their rewards,
    text made safe for a Markdown table. Returns (setting, seed, table)."""
    main = runs.groupby("setting")["seed"].count().sort_values(ascending=False, kind="stable").index[0]
    d = samples[samples["setting"] == main]
    seed = median_seed(runs, main)
    table = d[d["seed"] == seed].head(n)[["prompt", "response_before", "reward_before", "response_after",
                                           "reward_after"]].round(2)
    for col in ("prompt", "response_before", "response_after"):
        table[col] = table[col].astype(str).str.replace("\n", " ", regex=False).str.replace("|", "/", regex=False)
    return main, seed, table


# our acceptance targets, for the classifier reward judged by VADER
TARGETS = {"reward_gain": (2.0, ">="), "judge_positive_after": (0.8, ">="), "perplexity_ratio": (1.5, "<=")}


def _sweep_block(axes, table: pd.DataFrame, reward: str, judge: str) -> None:
    """The four sweep panels of one reward."""
    targets = reward != "vader"
    panels = [("reward_gain", f"held-out reward gain\n({reward})", None),
              ("judge_positive_after", f"positive share ({judge})\nafter PPO", "judge_positive_before"),
              ("perplexity_ratio", "perplexity under the base model,\nafter / before", None),
              ("review_similarity_after", "review-likeness after PPO", "review_similarity_before")]
    for a, (col, ylabel, before) in zip(axes, panels):
        for i, policy in enumerate(sorted(table["policy"].unique())):
            d = table[table["policy"] == policy]
            stats = pd.DataFrame([(kl, *mean_sd(g[col])) for kl, g in d.groupby("kl_coef")],
                                 columns=["kl", "mean", "sd", "n"])
            a.errorbar(stats["kl"], stats["mean"], yerr=stats["sd"].fillna(0.0), fmt="o-", color=f"C{i}", capsize=3,
                       label=f"{policy}: mean ± sd over seeds")
            a.scatter(d["kl_coef"], d[col], color=f"C{i}", s=14, alpha=0.5, zorder=3, label=f"{policy}: one seed")
            if before:
                a.axhline(d[before].mean(), color=f"C{i}", ls=":", lw=1.2, label="before PPO")
        if targets and col in TARGETS:
            a.axhline(TARGETS[col][0], color="0.4", ls="--", lw=1, label="our acceptance target")
        if col == "perplexity_ratio":
            _ratio_axis(a, table[col])
        a.set(xlabel="KL coefficient (fixed)", ylabel=ylabel)
        a.set_xticks(sorted(table["kl_coef"].unique()))


def _ratio_axis(a, values, axis: str = "y") -> None:
    """A log axis for the perplexity ratio (from ~1 to ~10: a linear axis hides the target 1.5)."""
    target = a.yaxis if axis == "y" else a.xaxis
    (a.set_yscale if axis == "y" else a.set_xscale)("log")
    target.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    target.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ticks = (1, 1.5, 2, 3, 5, 10, 20, 50, 100)
    top = max(2.0, float(np.nanmax(values)))
    cover = next((t for t in ticks if t >= top * 1.05), top * 1.1)  # the first tick above every point
    low = min(1.0, float(np.nanmin(values)))
    (a.set_yticks if axis == "y" else a.set_xticks)([t for t in ticks if t <= cover])
    (a.set_ylim if axis == "y" else a.set_xlim)(low / 1.08, cover * 1.08)  # every point and the target inside


def _legend_below(fig, axes) -> None:
    """One legend for the whole figure, below the panels, each entry once."""
    entries = {}
    for a in np.ravel(axes):
        for handle, label in zip(*a.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(entries.values(), entries.keys(), loc="lower center", ncol=min(len(entries), 4), frameon=False)


def fig_kl_sweep(table: pd.DataFrame, judges: dict | None = None):
    """The KL sweep from the tidy per-run table, a 2 x 2 block per reward: the reward gain, the
    judge's positive share after PPO (dotted: before), the perplexity ratio and review-likeness
    (dotted: before) against the KL coefficient. Dots: seeds; line and error bars: mean ± sd over
    seeds (ddof=1). ``judges`` names the judge of each reward (default: its independent counterpart)."""
    from .reward import default_judge
    rewards = sorted(table["reward"].unique())
    fig, axes = plt.subplots(2 * len(rewards), 2, figsize=(10, 6.6 * len(rewards) + 0.5), squeeze=False)
    for r, reward in enumerate(rewards):
        judge = (judges or {}).get(reward, default_judge(reward))
        _sweep_block(axes[2 * r:2 * r + 2].ravel(), table[table["reward"] == reward], reward, judge)
    fig.suptitle("KL sweep: what the KL penalty buys (held-out prompts)")
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))
    _legend_below(fig, axes)
    return fig


def fig_tradeoff(table: pd.DataFrame):
    """Reward gain against drift, one row per reward: the perplexity ratio (log axis) and
    review-likeness after PPO against the reward gain, one point per run, coloured by KL
    coefficient; squares and bars: mean ± sd over seeds (ddof=1) per coefficient."""
    rewards = sorted(table["reward"].unique())
    panels = [("perplexity_ratio", "perplexity under the base model,\nafter / before"),
              ("review_similarity_after", "review-likeness after PPO")]
    kls = sorted(table["kl_coef"].unique())
    import seaborn as sns  # only the figure notebook draws this; the run notebooks skip the import
    colors = dict(zip(kls, sns.color_palette("viridis", len(kls))))
    fig, axes = plt.subplots(len(rewards), 2, figsize=(10, 4.2 * len(rewards) + 0.4), squeeze=False)
    for row, reward in zip(axes, rewards):
        part = table[table["reward"] == reward]
        for a, (col, ylabel) in zip(row, panels):
            for kl in kls:
                d = part[part["kl_coef"] == kl]
                if d.empty:
                    continue
                a.scatter(d["reward_gain"], d[col], color=colors[kl], s=22, alpha=0.6)
                (mx, sx, _), (my, sy, _) = mean_sd(d["reward_gain"]), mean_sd(d[col])
                a.errorbar(mx, my, xerr=np.nan_to_num(sx), yerr=np.nan_to_num(sy), fmt="s", color=colors[kl],
                           capsize=3, ms=7, label=f"KL {kl:g} ({len(d)} seed{'s' if len(d) > 1 else ''})")
            a.set(xlabel=f"held-out reward gain ({reward})", ylabel=ylabel)
        _ratio_axis(row[0], part["perplexity_ratio"])
        if "review_similarity_before" in part:
            row[1].axhline(part["review_similarity_before"].mean(), color="0.5", ls=":", lw=1.2, label="before PPO")
        if reward != "vader":
            row[0].axhline(TARGETS["perplexity_ratio"][0], color="0.4", ls="--", lw=1, label="our acceptance target")
    fig.suptitle("Reward gain against drift from the base model")
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1))
    _legend_below(fig, axes)
    return fig


ALGORITHM_STYLE = {"ppo": ("C0", "o"), "group": ("C3", "s")}


def _algorithm_style(algorithm: str, i: int):
    return ALGORITHM_STYLE.get(algorithm, (f"C{i + 4}", "^D v<>"[i % 6]))


def _shade(a, x_range, y_range) -> None:
    """Shade the acceptance region (inside the current limits, which it leaves as they are)."""
    (x0, x1), (y0, y1) = a.get_xlim(), a.get_ylim()
    lo_x, hi_x = max(x_range[0], x0), min(x_range[1], x1)
    lo_y, hi_y = max(y_range[0], y0), min(y_range[1], y1)
    if lo_x < hi_x and lo_y < hi_y:
        a.fill_between([lo_x, hi_x], lo_y, hi_y, color="#029e73", alpha=0.10, lw=0, label="our acceptance targets")
    a.set_xlim(x0, x1)
    a.set_ylim(y0, y1)


def fig_frontier(table: pd.DataFrame, reward: str = "minilm-logreg"):
    """What the reward gain costs: the held-out reward gain against the KL to the base model at the
    end of training, the perplexity ratio (log axis), the judge's positive share and the share judged
    a review after training. One dot per seed with its 95 % bootstrap interval over held-out prompts
    (thin bars), one colour and marker per algorithm, a large open marker and a label per setting
    at the mean over its seeds; shaded: our acceptance targets (gain >= 2 with perplexity ratio
    <= 1.5; gain >= 2 with judge >= 0.8)."""
    t = table[table["reward"] == reward].copy()
    t["algorithm"] = [algorithm_of(dict(algorithm=x)) for x in t.get("algorithm", pd.Series("ppo", index=t.index))]
    panels = [("final_kl", "KL to the base model at the end (nats)", None),
              ("perplexity_ratio", "perplexity under the base model, after / before", "perplexity_ratio"),
              ("judge_positive_after", "positive share of the judge after", "judge_positive_after"),
              ("review_share_after", "share judged a review after", "review_share_after")]
    panels = [p for p in panels if p[0] in t and t[p[0]].notna().any()]
    cols = 2
    rows = (len(panels) + 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 4.3 * rows + 0.5), squeeze=False)
    algorithms = sorted(t["algorithm"].unique(), key=lambda x: (x != "ppo", x))
    settings = t.groupby(["algorithm", "policy", "update"], sort=True)
    for a, (col, xlabel, interval) in zip(axes.ravel(), panels):
        for i, algorithm in enumerate(algorithms):
            color, marker = _algorithm_style(algorithm, i)
            d = t[t["algorithm"] == algorithm]
            xerr = yerr = None
            if interval and f"{interval}_lo" in d:
                xerr = np.abs(np.vstack([d[col] - d[f"{interval}_lo"], d[f"{interval}_hi"] - d[col]]).astype(float))
                xerr = np.nan_to_num(xerr)
            if "reward_gain_lo" in d:
                yerr = np.nan_to_num(np.abs(np.vstack([d["reward_gain"] - d["reward_gain_lo"],
                                                      d["reward_gain_hi"] - d["reward_gain"]]).astype(float)))
            a.errorbar(d[col], d["reward_gain"], xerr=xerr, yerr=yerr, fmt="none", ecolor=color, alpha=0.3, lw=1)
            a.scatter(d[col], d["reward_gain"], color=color, marker=marker, s=30, zorder=3,
                      label=f"{ALGORITHMS.get(algorithm, algorithm)}: one seed")
        for (algorithm, policy, update), d in settings:
            color, marker = _algorithm_style(algorithm, algorithms.index(algorithm))
            mx, my = d[col].mean(), d["reward_gain"].mean()
            a.scatter([mx], [my], facecolors="none", edgecolors=color, marker=marker, s=160, lw=1.5, zorder=4)
            short = update.replace(f", {ALGORITHMS.get(algorithm, algorithm)} ", ", ")
            a.annotate(f"{short} ({len(d)})", (mx, my), xytext=(8, 6) if algorithm == "ppo" else (8, -15),
                       textcoords="offset points", fontsize=9, color=color)
        if col == "perplexity_ratio":
            _ratio_axis(a, t[[col, f"{col}_lo", f"{col}_hi"]].to_numpy(dtype=float).ravel()
                        if f"{col}_hi" in t else t[col], axis="x")
        if col == "judge_positive_after":
            a.set_xlim(min(0.3, t[col].min() - 0.05), 1.0)
        if col == "review_share_after":
            a.set_xlim(0, 1)
            if "review_share_before" in t:
                a.axvline(t["review_share_before"].mean(), color="0.5", ls=":", lw=1.2, label="before training")
        a.set(xlabel=xlabel, ylabel=f"held-out reward gain ({reward})")
        a.margins(y=0.12)
        gain = (TARGETS["reward_gain"][0], np.inf)
        if col == "perplexity_ratio":
            _shade(a, (0, TARGETS["perplexity_ratio"][0]), gain)
        elif col == "judge_positive_after":
            _shade(a, (TARGETS["judge_positive_after"][0], np.inf), gain)
        else:
            _shade(a, (-np.inf, np.inf), gain)
    for a in axes.ravel()[len(panels):]:
        a.set_visible(False)
    fig.suptitle("Reward gain against what it costs (held-out prompts). Dots: seeds, thin bars: their 95 % "
                 "bootstrap intervals;\nopen markers: mean per setting, with its number of seeds", fontsize=11)
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    _legend_below(fig, axes)
    return fig


def findings(table: pd.DataFrame) -> str:
    """The runs in words, one line per algorithm and setting: the reward gain, the judge's positive
    share, the perplexity ratio and the review share after training, each as the mean over seeds
    with its 95 % t-interval (one seed: its 95 % bootstrap interval over held-out prompts), and for
    the classifier reward how many seeds met each target."""
    from .intervals import BOUNDS, fmt_interval, t_interval
    t = table.copy()
    t["algorithm"] = [algorithm_of(dict(algorithm=x)) for x in t.get("algorithm", pd.Series("ppo", index=t.index))]
    lines = []
    measures = [("reward_gain", "reward gain", True), ("judge_positive_after", "judge positive share", False),
                ("perplexity_ratio", "perplexity ratio", False), ("review_share_after", "review share", False)]
    groups = sorted(t.groupby(["algorithm", "policy", "reward", "kl_coef", "update"]),
                    key=lambda kv: (kv[0][0] != "ppo", kv[0]))
    for (algorithm, policy, reward, kl, update), d in groups:
        parts = []
        for col, name, signed in measures:
            if col not in d or d[col].isna().all():
                continue
            m, lo, hi, n = t_interval(d[col], bounds=BOUNDS.get(col, (-np.inf, np.inf)))
            if n == 1 and f"{col}_lo" in d:
                lo, hi = float(d[f"{col}_lo"].iloc[0]), float(d[f"{col}_hi"].iloc[0])
            text = f"{name} {fmt_interval(m, lo, hi, 2, signed)}"
            if reward != "vader" and col in TARGETS:
                goal, sense = TARGETS[col]
                met = int((d[col] >= goal).sum() if sense == ">=" else (d[col] <= goal).sum())
                text += f" (target {sense} {goal:g}: {met}/{n} seeds)"
            parts.append(text)
        n = len(d)
        name = ALGORITHMS.get(algorithm, algorithm)
        lines.append(f"- {name}, {policy}, reward {reward}, {update.replace(f', {name} ', ', ')} "
                     f"({n} seed{'s' if n > 1 else ''}; 95 % {'t-interval over seeds' if n > 1 else 'bootstrap over prompts'}): "
                     + "; ".join(parts))
    return "\n".join(lines)
