"""Held-out evaluation: rebuild each example with a middle, score the games, summarise an arm, state a run's result."""
from __future__ import annotations

import torch

from .fim import FimExample, novel
from .lm import encode_prompt, generate_middles

SHARES = ("compile_share", "playable_share", "mean_reward", "exact_share", "novel_playable_share")


def score_middles(rewarder, examples: list[FimExample], middles: list[str], known: set[str]) -> tuple[dict, list[dict]]:
    """Rebuild each example with its middle, score the games, and summarise: shares that
    compile / are playable, mean reward, exact copies of the original middle, and novel playable
    games (playable and different from every bundled game in ``known``)."""
    games = [ex.rebuild(m) for ex, m in zip(examples, middles)]
    results = rewarder.evaluate(games)
    rows = []
    for ex, m, g, r in zip(examples, middles, games, results):
        rows.append(dict(game=ex.game, depth=ex.depth, original_middle=ex.middle, middle=m,
                         exact=m == ex.middle, status=r.status, reward=r.reward, compiles=r.compiles,
                         playable=r.playable, novel=r.playable and novel(g, known), balance=r.balance,
                         completion=r.completion, decisiveness=r.decisiveness, error=r.error[:200],
                         build_seconds=r.build_seconds, jit_seconds=r.jit_seconds, description=g))
    return summarise(rows), rows


def summarise(rows: list[dict]) -> dict:
    """Shares over the rows of one arm (0 for no rows) and the number of distinct novel playable games."""
    n = max(len(rows), 1)
    return dict(n=len(rows), compile_share=sum(r["compiles"] for r in rows) / n,
                playable_share=sum(r["playable"] for r in rows) / n,
                mean_reward=sum(r["reward"] for r in rows) / n,
                exact_share=sum(r["exact"] for r in rows) / n,
                novel_playable_share=sum(r["novel"] for r in rows) / n,
                novel_playable_games=len({r["description"] for r in rows if r["novel"]}))


def evaluate_model(model, tokenizer, examples: list[FimExample], rewarder, known: set[str], config: dict,
                   arm: str) -> tuple[dict, list[dict]]:
    """One sampled middle per example (pure sampling, seeded by the run's seed), scored; rows tagged with ``arm``."""
    torch.manual_seed(config["seed"] + 12345)
    prompts = [encode_prompt(tokenizer, e, config["context_chars"]) for e in examples]
    gens = generate_middles(model, tokenizer, prompts, max_new_tokens=config["max_new_tokens"])
    summary, rows = score_middles(rewarder, examples, [g["middle"] for g in gens], known)
    return summary, [dict(r, arm=arm) for r in rows]


def score_original(rewarder, examples: list[FimExample], known: set[str]) -> tuple[dict, list[dict]]:
    """The original middles: they rebuild the held-out games themselves (the ceiling)."""
    summary, rows = score_middles(rewarder, examples, [e.middle for e in examples], known)
    return summary, [dict(r, arm="original") for r in rows]


def line(name: str, summary: dict) -> str:
    """One arm's summary on one line."""
    return (f"{name:9s} compiles {summary['compile_share']:.3f}, playable {summary['playable_share']:.3f}, "
            f"mean reward {summary['mean_reward']:.3f}, copies {summary['exact_share']:.3f}, "
            f"novel playable games {summary['novel_playable_games']} (of {summary['n']} examples)")


def noise_words(sft: dict, ppo: dict) -> str:
    """Whether one run's SFT -> PPO difference in playable share stands out of the sampling noise of its
    held-out middles (binomial sd of the difference of two shares over ``n`` middles each)."""
    n, a, b = sft["n"], sft["playable_share"], ppo["playable_share"]
    sd = ((a * (1 - a) + b * (1 - b)) / max(n, 1)) ** 0.5
    if abs(b - a) < 2 * sd or sd == 0 and a == b:
        return (f"With one sampled middle per example ({n} examples, sd of the difference ~{sd:.3f}) that "
                "difference is within sampling noise: this run alone does not show that PPO helps on unseen games.")
    return f"The difference is larger than twice its sampling sd (~{sd:.3f} over {n} examples)."


def run_result(summary: dict, rewards: list[float]) -> str:
    """What one run found, in words, from its own numbers: held-out SFT vs PPO vs the original
    middles, and the training batches' reward at the start and the end of PPO."""
    h, c = summary["heldout"], summary["config"]
    sft, ppo, orig = h["sft"], h["ppo"], h["original"]
    diff = ppo["playable_share"] - sft["playable_share"]
    verdict = ("more playable games than" if diff > 0 else "fewer playable games than" if diff < 0
               else "as many playable games as") + " the SFT model"
    text = [f"{c['ppo_steps']} PPO steps (seed {c['seed']}) on {summary['n_ppo_prompts']} prompts, "
            f"{summary['seconds_per_step']:.1f} s per step. On {sft['n']} held-out examples PPO wrote {verdict}: "
            f"playable {sft['playable_share']:.3f} (SFT) -> {ppo['playable_share']:.3f} (PPO), "
            f"mean reward {sft['mean_reward']:.3f} -> {ppo['mean_reward']:.3f}; "
            f"the original middles score {orig['mean_reward']:.3f}. {noise_words(sft, ppo)}",
            f"Novel playable games: {sft['novel_playable_games']} (SFT), {ppo['novel_playable_games']} (PPO)."]
    if rewards:
        k = max(1, min(5, len(rewards) // 2))
        first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
        text.append(f"Training-batch reward: {first:.3f} (mean of the first {k} steps) -> {last:.3f} (last {k}).")
    return "\n".join(text)
