"""The paper's programmed reward for arithmetic: r = 2 / (1 + exp(min(err, 500) / 10)).

``err`` adds up, over every result the text states after the first '=', how far it is from the
true value; a malformed text has err = inf (clipped to 500), so the reward is defined and finite
for ANY string: 1 when exact, 0.95 / 0.90 / 0.76 / 0.54 / 0.24 when off by 1 / 2 / 5 / 10 / 20,
about 0 for garbage.

``reward_table`` gives the same numbers for every one-token answer to a correct chain at once
(a test checks it against ``reward`` token by token): the fast trainers look rewards up in it.
"""
from __future__ import annotations

import math

import torch

from .task import MAX_NUMBER, SPECIAL_TOKENS, evaluate, split_words

MAX_ERROR = 500.0


def reward_of_error(err: float) -> float:
    return 2.0 / (1.0 + math.exp(min(err, MAX_ERROR) / 10.0))


def answer_error(text: str) -> float:
    """Sum over the stated results (every part after the first '=') of |true - stated|.

    ``inf`` when the text has no '=', or a part is empty, not an expression, or has the
    wrong number of operators (part k must have k fewer than the first part).
    Special tokens ([BOS], [EOS], [PAD]) are ignored."""
    for tok in SPECIAL_TOKENS:
        text = text.replace(tok, " ")
    parts = text.split("=")
    if len(parts) < 2:
        return math.inf
    try:
        first = split_words(parts[0])
        truth = evaluate(first)
        n_ops = len(first) // 2
        err = 0.0
        for k, part in enumerate(parts[1:], start=1):
            words = split_words(part)
            if len(words) // 2 != n_ops - k:
                return math.inf
            err += abs(truth - evaluate(words))
        return err
    except (ValueError, OverflowError):
        return math.inf


def reward(text: str) -> float:
    """The paper's reward r = 2 / (1 + exp(min(err, 500) / 10)), in (0, 1].
    Defined and finite for any string: 1 when exact, ~0 for garbage."""
    if not isinstance(text, str):
        return 0.0
    return reward_of_error(answer_error(text))


def best_constant_reward(answers: list[int]) -> tuple[int, float]:
    """The 'naive solution': the single answer that earns the highest mean reward on
    these problems without any arithmetic, and that mean reward."""
    def mean_r(c):
        return sum(reward_of_error(abs(a - c)) for a in answers) / len(answers)
    best = max(range(MAX_NUMBER + 1), key=mean_r)
    return best, mean_r(best)


def reward_table(true_answers: list[int], number_ids: list[int], vocab_size: int) -> torch.Tensor:
    """(B, V) reward of every one-token answer to B prompts that are correct chains cut after
    their last '=' (so err = |true - answer| for a number token, inf for any other token)."""
    values = torch.arange(MAX_NUMBER + 1, dtype=torch.float64)
    truth = torch.tensor(true_answers, dtype=torch.float64)[:, None]
    err = (truth - values).abs().clamp(max=MAX_ERROR)
    table = torch.full((len(true_answers), vocab_size), reward_of_error(math.inf), dtype=torch.float64)
    table[:, number_ids] = 2.0 / (1.0 + torch.exp(err / 10.0))
    return table.float()
