"""The two entropy regularisers: per-token entropy and the paper's batch entropy.

Both read logits of shape (B, T, V) and a response mask of shape (B, T) that is 1 where
position t predicts a response token. (In trl's PPO loss, logits are already shifted:
``logits[:, t]`` predicts token t + 1, and ``mask`` marks the response.)

Batch entropy, for B sequences with answer distributions p_i = softmax(z_i):

    p̄ = (1/B) Σ_i p_i            H_batch = H(p̄) = - Σ_v p̄_v log p̄_v

and H(p̄) = I(prompt; answer) + mean_i H(p_i): it rewards answers that differ across
prompts, so it resists collapse onto one constant answer. We log H_batch, the mean
per-sample entropy, their difference (the mutual information) and max_v p̄_v (the
share of the most common answer; near 1 means collapse).
"""
from __future__ import annotations

import math

import torch


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of distributions given as log-probabilities along the last axis.
    Banned tokens (log-probability -inf) count as 0 log 0 = 0."""
    logp = logp.clamp_min(torch.finfo(logp.dtype).min)
    return -(logp.exp() * logp).sum(-1)


def token_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the next-token distribution over the masked (response) positions."""
    mask = mask.to(logits.dtype)
    ent = _entropy(torch.log_softmax(logits, dim=-1))
    return (ent * mask).sum() / mask.sum().clamp_min(1.0)


def answer_positions(mask: torch.Tensor, which: str = "first") -> torch.Tensor:
    """Boolean (B, T) selection of each sequence's answer position(s) from its response mask.

    ``which="first"``: each row's first masked position (its first response token), wherever
    the padding is (left or right). ``which="all"``: every masked position."""
    mask = mask.bool()
    if which == "all":
        return mask
    if which != "first":
        raise ValueError(f"which must be 'first' or 'all', got {which!r}")
    first = torch.zeros_like(mask)
    rows = mask.any(dim=1)
    idx = mask.to(torch.int8).argmax(dim=1)  # first True in each row
    first[rows.nonzero(as_tuple=True)[0], idx[rows]] = True
    return first


def batch_entropy_stats(logits: torch.Tensor, mask: torch.Tensor, which: str = "first") -> dict:
    """Batch entropy and its parts, differentiable in ``logits``.

    Returns a dict of 0-d tensors: ``batch_entropy`` H(p̄), ``sample_entropy`` mean_i H(p_i),
    ``mutual_information`` their difference, and ``max_share`` max_v p̄_v. Rows with an
    empty mask are ignored."""
    sel = answer_positions(mask, which)
    z = logits[sel]                            # (N, V): one row per answer position
    if z.shape[0] == 0:
        zero = logits.sum() * 0.0
        return dict(batch_entropy=zero, sample_entropy=zero, mutual_information=zero, max_share=zero)
    logp = torch.log_softmax(z, dim=-1)
    logp = logp.clamp_min(torch.finfo(logp.dtype).min)  # banned tokens: -inf -> finite, no NaN gradients
    # log p̄ = logsumexp_i log p_i - log N, stable even when some p_i are tiny
    log_pbar = torch.logsumexp(logp, dim=0) - math.log(z.shape[0])
    h_batch = _entropy(log_pbar)
    h_sample = _entropy(logp).mean()
    return dict(batch_entropy=h_batch, sample_entropy=h_sample,
                mutual_information=h_batch - h_sample, max_share=log_pbar.exp().max())
