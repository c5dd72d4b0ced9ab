"""Glue between the arithmetic task and a policy: prompts as tensors, one-token answers,
held-out evaluation, and the answer-distribution statistics we log during PPO."""
from __future__ import annotations

from collections import Counter

import torch

from . import arithmetic as A
from .entropy import batch_entropy_stats
from .ppo import next_token_logits, sample_one_token


def prompt_tensors(tokenizer, problems) -> list[torch.Tensor]:
    return [torch.tensor(A.encode_prompt(tokenizer, p)) for p in problems]


def banned_ids(tokenizer) -> list[int]:
    """Never sampled as an answer: [PAD], [BOS], [EOS] (as in the paper)."""
    return [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]


def answer_stats(logits: torch.Tensor, tokenizer) -> dict:
    """H_batch, mean H_i, their difference and max p̄ of the answer distributions (B, V),
    with the banned tokens removed as at sampling."""
    logits = logits.clone()
    logits[:, banned_ids(tokenizer)] = float("-inf")
    mask = torch.ones(logits.shape[0], 1)
    stats = batch_entropy_stats(logits[:, None, :], mask)
    return {k: v.item() for k, v in stats.items()}


@torch.no_grad()
def evaluate(model, tokenizer, problems, batch_size: int = 512, seed: int = 0) -> dict:
    """Held-out evaluation: exact match and mean reward of the greedy and of a sampled
    answer, the answer histograms, and the answer-distribution statistics."""
    prompts = prompt_tensors(tokenizer, problems)
    gen = torch.Generator().manual_seed(seed)
    out = {"greedy": [], "sampled": []}
    all_logits = []
    for i in range(0, len(prompts), batch_size):
        logits = next_token_logits(model, prompts[i:i + batch_size])
        all_logits.append(logits)
        out["greedy"] += sample_one_token(logits, banned_ids(tokenizer), greedy=True).tolist()
        out["sampled"] += sample_one_token(logits, banned_ids(tokenizer), generator=gen).tolist()
    result = {}
    for mode, ids in out.items():
        words = tokenizer.convert_ids_to_tokens(ids)
        rewards = [A.reward(f"{p.prompt} {w}") for p, w in zip(problems, words)]
        result[f"{mode}_exact_match"] = sum(w == str(p.answer) for p, w in zip(problems, words)) / len(problems)
        result[f"{mode}_reward"] = sum(rewards) / len(rewards)
        result[f"{mode}_answers"] = dict(Counter(words).most_common())
    stats = answer_stats(torch.cat(all_logits), tokenizer)
    result.update({f"eval_{k}": v for k, v in stats.items()})
    return result
