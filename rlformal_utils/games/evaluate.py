"""Held-out evaluation: rebuild each example with a middle, score the games, summarise an arm, state a run's result;
the deciding evaluation (best decoding chosen on training prompts, bootstrap intervals, paired RL - SFT)."""
from __future__ import annotations

import numpy as np
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


def noise_words(sft: dict, ppo: dict, name: str = "PPO") -> str:
    """Whether one run's SFT -> PPO difference in playable share stands out of the sampling noise of its
    held-out middles (binomial sd of the difference of two shares over ``n`` middles each)."""
    n, a, b = sft["n"], sft["playable_share"], ppo["playable_share"]
    sd = ((a * (1 - a) + b * (1 - b)) / max(n, 1)) ** 0.5
    if abs(b - a) < 2 * sd or sd == 0 and a == b:
        return (f"With one sampled middle per example ({n} examples, sd of the difference ~{sd:.3f}) that "
                "difference is within sampling noise: this run alone does not show that " + name + " helps on unseen games.")
    return f"The difference is larger than twice its sampling sd (~{sd:.3f} over {n} examples)."


def run_result(summary: dict, rewards: list[float]) -> str:
    """What one run found, in words, from its own numbers: held-out SFT vs PPO vs the original
    middles, and the training batches' reward at the start and the end of PPO."""
    h, c = summary["heldout"], summary["config"]
    name = "group RL" if c.get("algorithm") == "group" else "PPO"
    sft, ppo, orig = h["sft"], h["ppo"], h["original"]
    diff = ppo["playable_share"] - sft["playable_share"]
    verdict = ("more playable games than" if diff > 0 else "fewer playable games than" if diff < 0
               else "as many playable games as") + " the SFT model"
    text = [f"{c['ppo_steps']} {name} steps (seed {c['seed']}) on {summary['n_ppo_prompts']} prompts, "
            f"{summary['seconds_per_step']:.1f} s per step. On {sft['n']} held-out examples {name} wrote {verdict}: "
            f"playable {sft['playable_share']:.3f} (SFT) -> {ppo['playable_share']:.3f} ({name}), "
            f"mean reward {sft['mean_reward']:.3f} -> {ppo['mean_reward']:.3f}; "
            f"the original middles score {orig['mean_reward']:.3f}. {noise_words(sft, ppo, name)}",
            f"Novel playable games: {sft['novel_playable_games']} (SFT), {ppo['novel_playable_games']} ({name})."]
    if rewards:
        k = max(1, min(5, len(rewards) // 2))
        first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
        text.append(f"Training-batch reward: {first:.3f} (mean of the first {k} steps) -> {last:.3f} (last {k}).")
    return "\n".join(text)


# ----------------------------------------------------------------------------- the deciding evaluation
# The SFT model at its best decoding is the baseline: the temperature is chosen on training-game
# prompts, then held-out examples get ``n_samples`` sampled middles + 1 greedy middle each. Shares
# come with 95 % bootstrap intervals over examples; RL - SFT is a paired difference, bootstrapped
# over examples, then over seeds.
TEMPERATURES = (0.0, 0.5, 0.7, 1.0)  # 0: greedy
METRICS = {"compiles": "compile", "playable": "playable", "reward": "reward", "novel": "novel & playable"}


def sample_middles(model, tokenizer, examples: list[FimExample], config: dict, temperature: float,
                   n_samples: int, seed: int = 0) -> list[list[str]]:
    """``n_samples`` middles per example at ``temperature`` (0: the greedy middle, repeated)."""
    prompts = [encode_prompt(tokenizer, e, config["context_chars"]) for e in examples]
    k = 1 if temperature == 0 else n_samples
    torch.manual_seed(seed)
    gens = generate_middles(model, tokenizer, [p for p in prompts for _ in range(k)],
                            max_new_tokens=config["max_new_tokens"], temperature=temperature)
    middles = [g["middle"] for g in gens]
    return [middles[i * k:(i + 1) * k] * (n_samples if k == 1 else 1) for i in range(len(examples))]


def score_samples(rewarder, examples: list[FimExample], middles: list[list[str]], known: set[str],
                  **tags) -> list[dict]:
    """One row per (example, sample), tagged with ``example`` (its index), ``sample`` and ``tags``.
    All descriptions go to the rewarder in one call, so each distinct game is scored once."""
    flat_ex = [e for e, ms in zip(examples, middles) for _ in ms]
    _, rows = score_middles(rewarder, flat_ex, [m for ms in middles for m in ms], known)
    index = [(i, j) for i, ms in enumerate(middles) for j in range(len(ms))]
    return [dict(r, example=i, sample=j, **tags) for r, (i, j) in zip(rows, index)]


def per_example(rows: list[dict], metric: str = "playable", n_examples: int | None = None) -> np.ndarray:
    """The mean of ``metric`` over each example's rows, ordered by example index."""
    n = n_examples if n_examples is not None else 1 + max(r["example"] for r in rows)
    total, count = np.zeros(n), np.zeros(n)
    for r in rows:
        total[r["example"]] += float(r[metric])
        count[r["example"]] += 1
    if (count == 0).any():
        raise ValueError("an example has no rows")
    return total / count


def bootstrap_mean(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean, examples resampled with replacement."""
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def paired_difference(rl, sft, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """RL - SFT over the same held-out examples: ``rl`` and ``sft`` are per-seed per-example values,
    shape (seeds, examples) (a 1-D array is one seed; an SFT of shape (examples,) serves every seed).
    Each bootstrap replicate draws the examples with replacement (the same draw for every seed and
    both arms: the difference is paired), then the seeds with replacement, and averages."""
    rl = np.atleast_2d(np.asarray(rl, dtype=float))
    sft = np.broadcast_to(np.atleast_2d(np.asarray(sft, dtype=float)), rl.shape)
    diff = rl - sft
    n_seeds, n_ex = diff.shape
    rng = np.random.default_rng(seed)
    est = np.empty(n_boot)
    for b in range(n_boot):
        ex = rng.integers(0, n_ex, n_ex)
        seeds = rng.integers(0, n_seeds, n_seeds)
        est[b] = diff[np.ix_(seeds, ex)].mean()
    a = (1 - level) / 2
    return dict(diff=float(diff.mean()), low=float(np.quantile(est, a)), high=float(np.quantile(est, 1 - a)),
                n_examples=n_ex, n_seeds=n_seeds)


def sweep_temperatures(model, tokenizer, examples: list[FimExample], rewarder, known: set[str], config: dict,
                       temperatures=TEMPERATURES, n_samples: int = 1, seed: int = 0) -> tuple[float, list[dict]]:
    """(the best temperature, one row per temperature): the playable share of the middles sampled
    at each temperature for ``examples``; pass training-game prompts (choosing on held-out ones would
    credit the baseline with what it is measured on). Ties go to the higher temperature (more diverse)."""
    table = []
    for t in temperatures:
        rows = score_samples(rewarder, examples, sample_middles(model, tokenizer, examples, config, t, n_samples, seed),
                             known)
        table.append(dict(temperature=t, n=len(rows), playable_share=float(np.mean([r["playable"] for r in rows])),
                          mean_reward=float(np.mean([r["reward"] for r in rows]))))
    best = max(table, key=lambda r: (r["playable_share"], r["temperature"]))
    return best["temperature"], table


def heldout_rows(model, tokenizer, examples: list[FimExample], rewarder, known: set[str], config: dict,
                 temperature: float, n_samples: int, arm: str, seed: int = 0) -> list[dict]:
    """``n_samples`` middles per held-out example at ``temperature`` (kind "sampled") and one greedy
    middle (kind "greedy"), scored in one batch; rows tagged with ``arm``."""
    sampled = sample_middles(model, tokenizer, examples, config, temperature, n_samples, seed)
    greedy = sample_middles(model, tokenizer, examples, config, 0.0, 1, seed)
    middles = [s + g for s, g in zip(sampled, greedy)]
    rows = score_samples(rewarder, examples, middles, known, arm=arm, temperature=temperature)
    for r in rows:
        r["kind"] = "greedy" if r["sample"] == n_samples else "sampled"
    return rows


def arm_summary(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Shares over the sampled middles (per-example means, 95 % bootstrap interval over examples),
    greedy shares, distinct novel playable games and distinct middles per example."""
    sampled = [r for r in rows if r.get("kind", "sampled") == "sampled"]
    greedy = [r for r in rows if r.get("kind") == "greedy"]
    out = dict(n_examples=len({r["example"] for r in sampled}),
               n_samples=len(sampled) // max(len({r["example"] for r in sampled}), 1))
    for col in METRICS:
        mean, low, high = bootstrap_mean(per_example(sampled, col), n_boot, seed)
        out.update({col: mean, f"{col}_low": low, f"{col}_high": high})
        if greedy:
            out[f"greedy_{col}"] = float(np.mean([float(r[col]) for r in greedy]))
    out["novel_playable_games"] = len({r["description"] for r in rows if r["novel"]})
    by_example: dict[int, set] = {}
    for r in sampled:
        by_example.setdefault(r["example"], set()).add(r["middle"])
    out["distinct_middles_per_example"] = float(np.mean([len(v) for v in by_example.values()])) if by_example else 0.0
    return out


def decision_line(name: str, s: dict) -> str:
    """One arm of the deciding evaluation on one line."""
    return (f"{name:9s} playable {s['playable']:.3f} [{s['playable_low']:.3f}, {s['playable_high']:.3f}] "
            f"(greedy {s.get('greedy_playable', float('nan')):.3f}), compiles {s['compiles']:.3f}, "
            f"reward {s['reward']:.3f}, novel & playable {s['novel']:.3f}; "
            f"{s['novel_playable_games']} distinct novel playable games; {s['n_samples']} samples x {s['n_examples']} examples")


def evaluate_at_best_decoding(model, tokenizer, train_examples: list[FimExample], heldout_examples: list[FimExample],
                              rewarder, known: set[str], config: dict, n_samples: int, arm: str, seed: int = 0,
                              temperatures=TEMPERATURES) -> tuple[float, list[dict], list[dict]]:
    """(temperature, sweep table, held-out rows): the temperature is chosen on ``train_examples``
    (training-game prompts) only, then the held-out examples are sampled at it (``heldout_rows``)."""
    temperature, table = sweep_temperatures(model, tokenizer, train_examples, rewarder, known, config,
                                            temperatures, 1, seed)
    rows = heldout_rows(model, tokenizer, heldout_examples, rewarder, known, config, temperature, n_samples, arm, seed)
    return temperature, table, rows


def sft_curve(sft_dir, tokenizer, examples: list[FimExample], rewarder, known: set[str], config: dict,
              device="cpu", seed: int = 0) -> list[dict]:
    """Held-out shares of the SFT checkpoints (``sft_curve_points``): per checkpoint one middle
    sampled at temperature 1 and one greedy middle per example."""
    from .lm import load_checkpoint, sft_info
    out = []
    for step in sft_info(sft_dir)["checkpoints"]:
        model = load_checkpoint(sft_dir, step, device)
        s = arm_summary(heldout_rows(model, tokenizer, examples, rewarder, known, config, 1.0, 1, "sft_curve", seed))
        out.append(dict(step=step, playable=s["playable"], playable_low=s["playable_low"],
                        playable_high=s["playable_high"], greedy_playable=s["greedy_playable"],
                        compiles=s["compiles"], novel=s["novel"]))
        del model
    return out


def decision(sft_rows: list[dict], rl_rows: list[dict], sft_temperature: float, rl_temperature: float,
             seed: int = 0) -> dict:
    """One run's deciding comparison: both arms summarised and RL - SFT (playable, sampled middles) paired over examples."""
    pick = lambda rows: [r for r in rows if r["kind"] == "sampled"]
    diff = paired_difference(per_example(pick(rl_rows)), per_example(pick(sft_rows)), seed=seed)
    return dict(sft_temperature=sft_temperature, rl_temperature=rl_temperature,
                n_heldout_samples=arm_summary(sft_rows)["n_samples"], sft=arm_summary(sft_rows, seed=seed),
                rl=arm_summary(rl_rows, seed=seed), rl_minus_sft=diff["diff"], rl_minus_sft_low=diff["low"],
                rl_minus_sft_high=diff["high"])


def decision_over_seeds(samples, sft_arm: str = "sft_best", rl_arm: str = "rl_best", seed: int = 0) -> dict:
    """RL - SFT over several runs (a samples frame with ``run``, ``arm``, ``kind``, ``example``,
    ``playable``): per-run per-example playable shares, bootstrapped over examples, then over runs."""
    s = samples[samples["kind"] == "sampled"]
    rl, sft = [], []
    for _, g in s.groupby("run"):
        a, b = g[g["arm"] == rl_arm], g[g["arm"] == sft_arm]
        if a.empty or b.empty:
            continue
        rl.append(per_example(a.to_dict("records")))
        sft.append(per_example(b.to_dict("records")))
    if not rl:
        raise ValueError(f"no run has both {sft_arm!r} and {rl_arm!r} samples")
    return paired_difference(np.array(rl), np.array(sft), seed=seed)
