"""What one run reports: its before/after table and its result in words, from its own summary."""
from __future__ import annotations

import pandas as pd

ROW_NAMES = {
    "reward_mean": "mean reward ({reward})", "reward_median": "median reward", "reward_sd": "reward sd",
    "reward_positive_share": "positive share (reward model)", "judge_positive_share": "positive share (judge: {judge})",
    "judge_mean": "mean judge score ({judge})", "perplexity": "perplexity under the frozen base model",
    "response_tokens_mean": "response tokens (mean)", "review_similarity": "review-likeness",
    "review_share": "share judged a review (review-vs-other)",
}


def before_after_table(summary: dict) -> pd.DataFrame:
    """Every held-out measure before and after PPO, one row each, named for a reader."""
    table = pd.DataFrame({"before PPO": summary["before"], "after PPO": summary["after"]}).drop(index="n").round(3)
    names = {k: v.format(reward=summary["config"]["reward"], judge=summary["judge"]) for k, v in ROW_NAMES.items()}
    table.index = table.index.map(lambda k: names.get(k, k))
    return table


def result_text(summary: dict) -> str:
    """The run's result in one paragraph (Markdown), every number read from ``summary``; the
    targets are our acceptance targets for the classifier reward (defined in the README)."""
    config, before, after = summary["config"], summary["before"], summary["after"]
    gain = after["reward_mean"] - before["reward_mean"]
    ratio = after["perplexity"] / before["perplexity"]
    unit = "VADER compound" if config["reward"] == "vader" else "logits; target +2.0"
    return (
        f"**Result of this run** ({summary['policy_label']}, KL {config['kl_coef']}, seed {config['seed']}, "
        f"{config['ppo_steps']} PPO steps of {config['ppo_batch_size']} prompts, "
        f"{summary['train_seconds'] / 60:.1f} min of PPO): on {before['n']} held-out prompts the mean reward went "
        f"from {before['reward_mean']:.2f} to {after['reward_mean']:.2f} ({gain:+.2f} {unit}), "
        f"the positive share of the independent judge ({summary['judge']}) from {before['judge_positive_share']:.2f} "
        f"to {after['judge_positive_share']:.2f} (target 0.8), the perplexity under the frozen base from "
        f"{before['perplexity']:.1f} to {after['perplexity']:.1f} ({ratio:.2f}x; target <= 1.5x) and "
        f"review-likeness from {before['review_similarity']:.3f} to {after['review_similarity']:.3f} "
        f"(real held-out reviews: {summary['real_review_similarity']:.3f})"
        + (f"; the share judged a review went from {before['review_share']:.2f} to {after['review_share']:.2f}"
           if "review_share" in before and "review_share" in after else "") + "." + intervals_text(summary))


INTERVAL_NAMES = {"reward_gain": "reward gain", "judge_positive_after": "judge positive share",
                  "perplexity_ratio": "perplexity ratio", "review_share_after": "review share"}


def intervals_text(summary: dict) -> str:
    """`` 95 % intervals (paired bootstrap over the held-out prompts): reward gain [1.53, 2.26], ...``
    from ``summary["intervals"]`` ({measure: (estimate, low, high)}, ``intervals.bootstrap_intervals``
    of the run's ``eval_samples.csv``); empty when the summary has none."""
    found = summary.get("intervals") or {}
    parts = [f"{name} [{found[k][1]:.2f}, {found[k][2]:.2f}]" for k, name in INTERVAL_NAMES.items() if k in found]
    return f" 95 % intervals (paired bootstrap over the held-out prompts): {', '.join(parts)}." if parts else ""
