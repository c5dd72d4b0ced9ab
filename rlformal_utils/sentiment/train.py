"""One PPO step of the sentiment experiment: sample in eval mode, score, hand to trl, log."""
from __future__ import annotations

import time

import numpy as np
import torch

from .reward import is_positive
from .sampling import decode_pairs, sample_responses


def ppo_step(trainer, policy, tokenizer, batch: list[dict], reward_model, **sampling) -> dict:
    """Sample one response per prompt of ``batch`` with ``policy`` (eval mode, no dropout, no
    gradients), score review start + response with ``reward_model`` and run trl's
    ``PPOTrainer.step`` on (prompt, response, reward). Returns the row logged for this step:
    batch reward statistics, trl's KL / entropy / PPO diagnostics, and the time of each part."""
    queries = [p["query"] for p in batch]
    t = time.time()
    responses = sample_responses(policy, tokenizer, queries, [p["response_length"] for p in batch],
                                 batch_size=len(batch), **sampling)
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
