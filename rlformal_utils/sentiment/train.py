"""RL on the sentiment reward: one PPO step (sample in eval mode, score, hand to trl), one step of the
group-relative update (k responses per prompt, ``rlformal_utils.group_lm``) and the run's loop."""
from __future__ import annotations

import time

import numpy as np
import torch

from ..progress import Progress
from .evaluate import eval_summary
from .params import sampling
from .reward import is_positive
from .sampling import decode_pairs, sample_responses


def ppo_step(trainer, policy, tokenizer, batch: list[dict], reward_model, **sampling) -> dict:
    """Sample one response per prompt of ``batch`` with ``policy`` (eval mode, no dropout, no
    gradients), score review start + response with ``reward_model`` and run trl's
    ``PPOTrainer.step`` on (prompt, response, reward). A ``lean_forward`` trainer gets the
    sampling pass's log-probs and value-head inputs, so its step skips the policy's no-grad pass.
    Returns the row logged for this step: batch reward statistics, trl's KL / entropy / PPO
    diagnostics, and the time of each part."""
    queries = [p["query"] for p in batch]
    lean = getattr(trainer, "lean_forward", False)
    t = time.time()
    sampled = sample_responses(policy, tokenizer, queries, [p["response_length"] for p in batch],
                               batch_size=len(batch), rollout=lean, **sampling)
    if lean:  # trl's step reads the policy's log-probs and values off this sampling pass
        responses, *rollout = sampled
        trainer.rollout = rollout
    else:
        responses = sampled
    t_generate = time.time() - t
    texts, _ = decode_pairs(tokenizer, [p.get("review", p["query"]) for p in batch], responses)
    t = time.time()
    rewards = np.asarray(reward_model(texts), dtype=float)
    t_reward = time.time() - t
    t = time.time()
    stats = trainer.step(queries, responses, [torch.tensor(r, dtype=torch.float32) for r in rewards])
    t_step = time.time() - t
    return dict(reward=rewards.mean(), reward_sd=rewards.std(), reward_median=np.median(rewards),
                reward_positive_share=is_positive(reward_model, rewards).mean(),
                response_tokens=np.mean([len(x) for x in responses]),
                kl=stats["objective/kl"], kl_coef=stats["objective/kl_coef"], entropy=stats["objective/entropy"],
                loss_policy=stats["ppo/loss/policy"], loss_value=stats["ppo/loss/value"],
                clipfrac=stats["ppo/policy/clipfrac"], approxkl=stats["ppo/policy/approxkl"],
                value_var_explained=stats["ppo/val/var_explained"],
                time_generate=t_generate, time_reward=t_reward, time_ppo_step=t_step)


def group_step(trainer, policy, tokenizer, batch: list[dict], reward_model, k: int, **sampling) -> dict:
    """Sample ``k`` responses per prompt of ``batch`` with ``policy`` (eval mode, no gradients), score
    review start + response with ``reward_model`` and run the group-relative ``trainer.step``
    (a ``GroupLM``). Returns the row logged for this step, with PPO's column names where the
    measure is the same (reward statistics, ``kl`` summed over the response, ``entropy``, the
    time of each part)."""
    queries = [p["query"] for p in batch for _ in range(k)]
    t = time.time()
    responses = sample_responses(policy, tokenizer, queries, [p["response_length"] for p in batch for _ in range(k)],
                                 batch_size=len(queries), **sampling)
    t_generate = time.time() - t
    texts, _ = decode_pairs(tokenizer, [p.get("review", p["query"]) for p in batch for _ in range(k)], responses)
    t = time.time()
    rewards = np.asarray(reward_model(texts), dtype=float)
    t_reward = time.time() - t
    t = time.time()
    stats = trainer.step([p["query"] for p in batch], responses, rewards.reshape(len(batch), k))
    t_update = time.time() - t
    return dict(reward=rewards.mean(), reward_sd=rewards.std(), reward_median=np.median(rewards),
                reward_positive_share=is_positive(reward_model, rewards).mean(),
                response_tokens=np.mean([len(x) for x in responses]),
                kl=stats["kl"], kl_coef=trainer.cfg.kl_coef, entropy=stats["entropy"], loss_policy=stats["loss"],
                clipfrac=stats["clipfrac"], approxkl=stats["approxkl"], batch_entropy=stats["batch_entropy"],
                zero_advantage_groups=stats["zero_advantage_groups"],
                time_generate=t_generate, time_reward=t_reward, time_update=t_update)


def heldout_row(result: dict) -> dict:
    """A held-out evaluation summary as metrics.csv columns (``heldout_<measure>``)."""
    return {f"heldout_{k}": v for k, v in result.items() if k != "n"}


def train(trainer, policy, tokenizer, prompts: list[dict], reward_model, config: dict, log, before: dict,
          evaluate=None) -> float:
    """``ppo_steps`` steps of ``config["algorithm"]``, each on ``ppo_batch_size`` sampled responses:
    PPO gives one to each of that many consecutive training prompts, the group update gives
    ``group_size`` to each of ``ppo_batch_size / group_size`` prompts. ``log`` gets the step-0 row
    (the held-out summary ``before``), then one row per step; with ``eval_every`` the row of every
    eval_every-th step (but the last) also holds ``evaluate()``'s held-out summary. Returns the
    seconds the steps took."""
    group = config["algorithm"] == "group"
    steps, every = config["ppo_steps"], config["eval_every"]
    batch_size = config["ppo_batch_size"] // config["group_size"] if group else config["ppo_batch_size"]
    log.log(dict(step=0, **heldout_row(before)))
    bar = Progress(steps, "group" if group else "PPO")
    t_start = time.time()
    for step in range(1, steps + 1):
        batch = prompts[(step - 1) * batch_size: step * batch_size]
        if group:
            out = group_step(trainer, policy, tokenizer, batch, reward_model, config["group_size"], **sampling(config))
        else:
            out = ppo_step(trainer, policy, tokenizer, batch, reward_model, **sampling(config))
        row = dict(step=step, **out)
        if every and step % every == 0 and step < steps:
            row.update(heldout_row(eval_summary(evaluate())))
            log.flush()
        log.log(row)
        bar.update(reward=float(row["reward"]), kl=float(row["kl"]))
    bar.close()
    return time.time() - t_start


def log_after(log, after: dict, steps: int) -> None:
    """The final held-out summary goes on the last step's row (step 0's second row without training)."""
    if steps:
        log.rows[-1].update(heldout_row(after))
    else:
        log.log(dict(step=0, **heldout_row(after)))
