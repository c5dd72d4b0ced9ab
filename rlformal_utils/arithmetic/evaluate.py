"""Held-out evaluation of a one-token answerer, always in eval mode without gradients."""
from __future__ import annotations

from collections import Counter

import torch

from ..entropy import batch_entropy_stats
from ..modes import eval_mode
from ..one_token import last_position, sample
from . import task
from .reward import reward


def prompt_tensors(tokenizer, problems) -> list[torch.Tensor]:
    return [torch.tensor(task.encode_prompt(tokenizer, p)) for p in problems]


def banned_ids(tokenizer) -> list[int]:
    """Never sampled as an answer: [PAD], [BOS], [EOS] (as in the paper)."""
    return [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]


def answer_stats(logits: torch.Tensor, tokenizer) -> dict:
    """H_batch, mean H_i, their difference (the mutual information) and max p̄ of the answer
    distributions (B, V), with the banned tokens removed as at sampling."""
    logits = logits.detach().clone()
    logits[:, banned_ids(tokenizer)] = float("-inf")
    stats = batch_entropy_stats(logits[:, None, :], torch.ones(logits.shape[0], 1))
    return {k: v.item() for k, v in stats.items()}


def evaluate(model, tokenizer, problems, batch_size: int = 512, seed: int = 0) -> dict:
    """Exact match and mean reward of the greedy and of one sampled answer per problem, the
    answer histograms and the answer-distribution statistics. The model is evaluated in eval
    mode under ``no_grad`` and left in the mode it was in."""
    prompts = prompt_tensors(tokenizer, problems)
    gen = torch.Generator().manual_seed(seed)
    ban = banned_ids(tokenizer)
    with eval_mode(model):
        logits = torch.cat([last_position(model, prompts[i:i + batch_size])
                            for i in range(0, len(prompts), batch_size)])
    masked = logits.clone()
    masked[:, ban] = float("-inf")
    answers = {"greedy": masked.argmax(-1), "sampled": sample(logits, 1, ban, gen).squeeze(1)}
    result = {}
    for mode, ids in answers.items():
        words = tokenizer.convert_ids_to_tokens(ids.tolist())
        rewards = [reward(f"{p.prompt} {w}") for p, w in zip(problems, words)]
        result[f"{mode}_exact_match"] = sum(w == str(p.answer) for p, w in zip(problems, words)) / len(problems)
        result[f"{mode}_reward"] = sum(rewards) / len(rewards)
        result[f"{mode}_answers"] = dict(Counter(words).most_common())
    result.update({f"eval_{k}": v for k, v in answer_stats(logits, tokenizer).items()})
    return result
