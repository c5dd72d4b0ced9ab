"""Game-synthesis figures and tables, drawn only from the files runs write (config.json, metrics.csv,
summary.json, samples.jsonl), so a redraw never retrains or replays a game."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..figures import band, fmt_mean_sd, mean_sd
from ..runs import complete_runs

ARMS = ["original", "sft", "ppo"]
LABELS = {"original": "original middles", "sft": "SFT model", "ppo": "PPO model",
          "sft_best": "SFT model at its best decoding", "rl_best": "RL model at its best decoding"}
HELDOUT = {"compile_share": "compiles", "playable_share": "playable", "mean_reward": "mean reward",
           "exact_share": "copies original", "novel_playable_share": "novel & playable"}
TRAINING = {"reward": "mean reward", "playable_share": "share playable", "compile_share": "share that compiles"}
SMOOTH = 5  # training curves: rolling mean over this many PPO steps


def load_runs(results_dir) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """All complete runs: (metrics rows, one row per run and arm of the held-out evaluation, samples)."""
    frames, rows, samples = [], [], []
    for run, s in complete_runs(results_dir):
        seed = s["config"]["seed"]
        frames.append(pd.read_csv(run / "metrics.csv").assign(run=run.name, seed=seed))
        for arm, v in s["heldout"].items():
            rows.append(dict(v, run=run.name, seed=seed, arm=arm, ppo_steps=s["config"]["ppo_steps"],
                             seconds_per_step=s["seconds_per_step"], train_seconds=s["train_seconds"],
                             **run_fields(s)))
        if (run / "samples.jsonl").exists():
            samples.append(pd.read_json(run / "samples.jsonl", lines=True).assign(run=run.name, seed=seed))
    if not rows:
        raise FileNotFoundError(f"no complete game-synthesis runs under {results_dir}")
    return (pd.concat(frames, ignore_index=True), pd.DataFrame(rows),
            pd.concat(samples, ignore_index=True) if samples else pd.DataFrame())


# results/games_runs.csv: these first (NaN where a run lacks them), then each arm's held-out shares
RUN_COLUMNS = ["model", "algorithm", "seed", "sft_steps", "rl_steps", "n_heldout_samples", "sft_playable",
               "rl_playable", "rl_minus_sft", "rl_minus_sft_low", "rl_minus_sft_high", "sft_novel_playable",
               "rl_novel_playable", "seconds_per_rl_step", "reward_seconds"]


def run_fields(summary: dict) -> dict:
    """A run's row of ``RUN_COLUMNS`` from its summary.json. With the deciding evaluation the
    SFT / RL numbers are its sampled middles at each model's best decoding (RL - SFT with its paired
    95 % interval); without it, the one sampled middle per example at temperature 1 (no interval)."""
    c, h = summary["config"], summary["heldout"]
    nan = float("nan")
    model = c["model_size"] + (f"+lora{c['lora_rank']}" if c.get("lora_rank") else "")
    out = dict(model=model, algorithm=c.get("algorithm", "ppo"), sft_steps=c.get("sft_steps", nan),
               rl_steps=c.get("rl_steps", c.get("ppo_steps", nan)),
               seconds_per_rl_step=summary.get("seconds_per_step", nan),
               reward_seconds=summary.get("reward_stats", {}).get("seconds", nan))
    d = summary.get("decision")
    if d:
        out.update(n_heldout_samples=d["n_heldout_samples"], sft_playable=d["sft"]["playable"],
                   rl_playable=d["rl"]["playable"], rl_minus_sft=d["rl_minus_sft"],
                   rl_minus_sft_low=d["rl_minus_sft_low"], rl_minus_sft_high=d["rl_minus_sft_high"],
                   sft_novel_playable=d["sft"]["novel"], rl_novel_playable=d["rl"]["novel"])
    else:
        sft, rl = h.get("sft", {}), h.get("ppo", {})
        out.update(n_heldout_samples=1, sft_playable=sft.get("playable_share", nan),
                   rl_playable=rl.get("playable_share", nan),
                   rl_minus_sft=rl.get("playable_share", nan) - sft.get("playable_share", nan),
                   rl_minus_sft_low=nan, rl_minus_sft_high=nan, sft_novel_playable=sft.get("novel_playable_share", nan),
                   rl_novel_playable=rl.get("novel_playable_share", nan))
    return out


def runs_table(heldout: pd.DataFrame) -> pd.DataFrame:
    """``results/games_runs.csv``: one row per run, plain numbers: ``RUN_COLUMNS`` (NaN where a
    run lacks them), then each arm's held-out shares side by side."""
    cols = list(HELDOUT) + ["novel_playable_games"]
    wide = heldout.pivot(index="run", columns="arm", values=cols)
    wide.columns = [f"{arm}_{col}" for col, arm in wide.columns]
    heldout = heldout.reindex(columns=list(dict.fromkeys([*heldout.columns, *RUN_COLUMNS])))
    first = heldout.groupby("run", dropna=False)[list(dict.fromkeys(
        RUN_COLUMNS + ["ppo_steps", "n", "seconds_per_step", "train_seconds"]))].first()
    table = first.join(wide[[f"{a}_{c}" for a in ARMS for c in cols if f"{a}_{c}" in wide]])
    return table.reset_index().sort_values(["seed", "run"]).reset_index(drop=True)


def summary_table(heldout: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd (ddof=1, count) over runs of the held-out shares, one row per arm."""
    out = []
    for arm in ARMS:
        g = heldout[heldout["arm"] == arm]
        if g.empty:
            continue
        row = {"middles from": LABELS[arm], "runs": g["run"].nunique(), "examples per run": int(g["n"].iloc[0])}
        row.update({label: fmt_mean_sd(g[col]) for col, label in HELDOUT.items()})
        row["novel playable games (sum)"] = int(g["novel_playable_games"].sum())
        out.append(row)
    return pd.DataFrame(out)


def _smoothed(metrics: pd.DataFrame, col: str) -> pd.DataFrame:
    return metrics.assign(v=metrics.groupby("run")[col].transform(lambda s: s.rolling(SMOOTH, min_periods=1).mean()))


def fig_training(metrics: pd.DataFrame):
    """Training batches vs PPO step: thin lines per seed, mean ± sd (ddof=1) over seeds, rolling mean of 5 steps."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (col, title) in zip(axes, TRAINING.items()):
        if metrics.empty or col not in metrics:
            continue
        smooth = _smoothed(metrics, col)
        for _, g in smooth.groupby("run"):
            ax.plot(g["step"], g["v"], color="C0", alpha=0.3, lw=1)
        band(ax, smooth, "step", "v", "mean ± sd over seeds", color="C0", lw=2)
        top = smooth["v"].max()
        ax.set(xlabel="PPO step", title=f"training batches: {title}", ylim=(0, min(1.02, 1.25 * top + 0.05)))
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    return fig


SHARES = {k: v.replace(" ", "\n", 1) if len(v) > 9 else v  # shares of the examples: one axis; tick
          for k, v in HELDOUT.items() if k != "mean_reward"}     # labels on two lines so they never overlap


def _bars(ax, heldout: pd.DataFrame, cols: dict, arms: list[str]) -> None:
    """Bars mean ± sd (ddof=1) over seeds per arm and column, dots single seeds."""
    width = 0.8 / len(arms)
    x = np.arange(len(cols))
    for i, arm in enumerate(arms):
        g = heldout[heldout["arm"] == arm]
        stats = [mean_sd(g[col]) for col in cols]
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, [m for m, _, _ in stats], width, yerr=[0 if np.isnan(s) else s for _, s, _ in stats],
               label=LABELS[arm], color=f"C{ARMS.index(arm)}", alpha=0.85, capsize=3)
        spread = np.linspace(-width / 4, width / 4, len(g)) if len(g) > 1 else np.zeros(1)
        for j, col in enumerate(cols):  # one dot per seed, side by side so the error bar stays visible
            ax.plot(pos[j] + spread, g.sort_values("seed")[col], "k.", ms=5)
    ax.set_xticks(x, list(cols.values()))


def fig_heldout(heldout: pd.DataFrame):
    """Held-out games per arm, one quantity per axis: the shares of the examples (left) and the mean
    playout reward (right); bars mean ± sd (ddof=1) over seeds, dots single seeds."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw=dict(width_ratios=[4, 1.3]))
    arms = [a for a in ARMS if a in set(heldout["arm"])]
    _bars(left, heldout, SHARES, arms)
    left.set(ylim=(0, 1.05), ylabel="share of held-out examples", title="held-out games: what the middles give")
    _bars(right, heldout, {"mean_reward": "mean reward"}, arms)
    right.set(ylim=(0, 1.05), ylabel="mean playout reward (0..1)", title="reward")
    left.legend(loc="upper right")
    fig.text(0.5, -0.01, "bars: mean ± sd over seeds; dots: single seeds", ha="center", fontsize=9)
    fig.tight_layout()
    return fig


def _heldout_panels(ax_shares, ax_reward, heldout: dict) -> None:
    """The held-out shares (compiles, playable, ...) and the mean reward of each arm in ``heldout``."""
    table = pd.DataFrame(heldout).T.reindex([a for a in ARMS if a in heldout])
    table[list(SHARES)].rename(columns=SHARES).rename(index=LABELS).T.plot.bar(
        ax=ax_shares, rot=0, ylim=(0, 1.02), title="held-out games", ylabel="share of held-out examples",
        color=[f"C{ARMS.index(a)}" for a in table.index])
    ax_shares.legend(loc="upper right")
    ax_reward.bar([LABELS[a].split()[0] for a in table.index], table["mean_reward"].astype(float),
                  color=[f"C{ARMS.index(a)}" for a in table.index], alpha=0.85)
    ax_reward.set(ylim=(0, 1.02), ylabel="mean playout reward", title="held-out reward")


def start_figure(heldout: dict):
    """Where PPO starts: the original middles (the ceiling) and the SFT model's on the held-out games."""
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw=dict(width_ratios=[3, 1.4]))
    _heldout_panels(ax[0], ax[1], heldout)
    fig.tight_layout()
    return fig


def run_figure(metrics: pd.DataFrame, heldout: dict):
    """One run at a glance: the training batches, the held-out shares and the held-out reward of each arm."""
    fig, ax = plt.subplots(1, 3, figsize=(13, 4), gridspec_kw=dict(width_ratios=[3, 3, 1.4]))
    for col, label in TRAINING.items():
        if len(metrics):
            ax[0].plot(metrics["step"], metrics[col].rolling(SMOOTH, min_periods=1).mean(), label=label)
    ax[0].set(xlabel="PPO step", ylabel=f"rolling mean of {SMOOTH} steps", title="training batches", ylim=(0, 1.02))
    if len(metrics):
        ax[0].legend(loc="upper left")
    _heldout_panels(ax[1], ax[2], heldout)
    fig.tight_layout()
    return fig


def samples_markdown(samples: pd.DataFrame, profile: str, n: int = 5) -> str:
    """A few generated middles, novel and playable first (then playable, then the rest), by reward."""
    lines = [f"Synthesized games (profile `{profile}`)", ""]
    if samples.empty:
        return "\n".join(lines + ["no samples"]) + "\n"
    gen = samples[samples["arm"].isin([a for a in LABELS if a != "original"])].copy()
    gen["rank"] = (~gen["novel"].astype(bool)).astype(int) * 2 + (~gen["playable"].astype(bool)).astype(int)
    show = gen.sort_values(["rank", "reward", "run", "game"], ascending=[True, False, True, True])
    for _, r in show.drop_duplicates("description").head(n).iterrows():
        scores = f" (B {r['balance']:.2f}, C {r['completion']:.2f}, D {r['decisiveness']:.2f})" if r["playable"] else ""
        lines += [f"### {LABELS[r['arm']]}, seed {r['seed']}: held-out game `{r['game']}`",
                  f"status **{r['status']}**, reward {r['reward']:.3f}, novel: {bool(r['novel'])}{scores}",
                  "", f"- original middle: `{r['original_middle']}`", f"- generated middle: `{r['middle']}`", ""]
    return "\n".join(lines) + "\n"


def findings(heldout: pd.DataFrame, metrics: pd.DataFrame) -> str:
    """What the runs found, in words, from the tables: PPO vs SFT per seed and the training reward."""
    per_seed = heldout.pivot(index="seed", columns="arm", values="playable_share")
    reward = heldout.pivot(index="seed", columns="arm", values="mean_reward")
    n = len(per_seed)
    better = int((per_seed["ppo"] > per_seed["sft"]).sum())
    worse = int((per_seed["ppo"] < per_seed["sft"]).sum())
    seeds = ", ".join(f"seed {s}: {per_seed.loc[s, 'sft']:.3f} -> {per_seed.loc[s, 'ppo']:.3f}" for s in per_seed.index)
    text = [f"Held-out playable share, SFT -> PPO: {seeds}. PPO is above SFT in {better} of {n} seeds, "
            f"below in {worse}, equal in {n - better - worse}.",
            f"Held-out mean reward: SFT {fmt_mean_sd(reward['sft'])}, PPO {fmt_mean_sd(reward['ppo'])}, "
            f"original middles {fmt_mean_sd(reward['original'])}."]
    if not metrics.empty:
        steps = int(metrics["step"].max())
        early = metrics[metrics["step"] <= SMOOTH].groupby("run")["reward"].mean()
        late = metrics[metrics["step"] > steps - SMOOTH * 4].groupby("run")["reward"].mean()
        text.append(f"Training-batch reward: {fmt_mean_sd(early)} over the first {SMOOTH} steps, "
                    f"{fmt_mean_sd(late)} over the last {min(steps, SMOOTH * 4)} (mean ± sd over runs).")
    return "\n".join(text)


def decision_text(samples: pd.DataFrame) -> str:
    """RL - SFT on held-out playable, each model at its best decoding, paired over examples and
    bootstrapped over examples then runs; "" when no run has the deciding evaluation."""
    if samples.empty or "kind" not in samples or not samples["arm"].eq("rl_best").any():
        return ""
    from .evaluate import decision_over_seeds
    d = decision_over_seeds(samples)
    return (f"Held-out playable, RL - SFT (each at its best decoding, sampled middles): {d['diff']:+.3f}, "
            f"95 % interval [{d['low']:+.3f}, {d['high']:+.3f}] (paired bootstrap over {d['n_examples']} examples, "
            f"then over {d['n_seeds']} runs).")


def most_different_markdown(results_dir, k: int = 5) -> str:
    """The ``k`` novel playable games farthest from their nearest training game (token edit
    distance) over all runs; "" when no run recorded them."""
    rows = [dict(r, run=run.name) for run, s in complete_runs(results_dir) for r in s.get("most_different", [])]
    if not rows:
        return ""
    rows = sorted({r["description"]: r for r in rows}.values(), key=lambda r: (-r["distance"], r["description"]))[:k]
    lines = [f"The {len(rows)} novel playable games farthest from any training game (token edit distance over the rule text)", ""]
    for r in rows:
        lines += [f"- {r['distance']} edits ({r['relative_distance']:.0%} of its tokens) from "
                  f"`{r['nearest_training_game']}` (run {r['run']}): `{r['description']}`"]
    return "\n".join(lines) + "\n"
