"""Both entropy terms against torch.distributions.Categorical, with masks and padding."""
import math

import pytest
import torch
from torch.distributions import Categorical

from rlformal_utils.entropy import answer_positions, batch_entropy_stats, token_entropy


def _masks(B, T, starts, lengths):
    m = torch.zeros(B, T)
    for i, (s, n) in enumerate(zip(starts, lengths)):
        m[i, s:s + n] = 1
    return m


def test_token_entropy_matches_categorical_over_masked_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 11, generator=g) * 3
    mask = _masks(4, 7, starts=[2, 0, 4, 1], lengths=[3, 2, 3, 1])
    expected = torch.stack([Categorical(logits=logits[i, t]).entropy()
                            for i in range(4) for t in range(7) if mask[i, t]]).mean()
    assert token_entropy(logits, mask) == pytest.approx(expected.item(), rel=1e-5)


def test_token_entropy_ignores_what_is_under_padding():
    logits = torch.randn(2, 5, 6)
    mask = _masks(2, 5, [1, 3], [2, 2])
    changed = logits.clone()
    changed[mask == 0] = torch.randn_like(changed[mask == 0]) * 50
    assert token_entropy(logits, mask) == pytest.approx(token_entropy(changed, mask).item(), rel=1e-6)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_batch_entropy_reads_each_rows_real_answer_position(padding):
    g = torch.Generator().manual_seed(1)
    B, T, V = 5, 9, 13
    logits = torch.randn(B, T, V, generator=g) * 2
    lengths = [2, 4, 1, 3, 2]
    starts = [1, 2, 5, 0, 3] if padding == "right" else [T - n for n in lengths]
    mask = _masks(B, T, starts, lengths)
    first = torch.stack([logits[i, starts[i]] for i in range(B)])
    pbar = torch.softmax(first, -1).mean(0)
    stats = batch_entropy_stats(logits, mask)
    assert stats["batch_entropy"] == pytest.approx(Categorical(probs=pbar).entropy().item(), rel=1e-5)
    per_sample = Categorical(logits=first).entropy().mean().item()
    assert stats["sample_entropy"] == pytest.approx(per_sample, rel=1e-5)
    assert stats["mutual_information"] == pytest.approx(stats["batch_entropy"].item() - per_sample, abs=1e-5)
    assert stats["max_share"] == pytest.approx(pbar.max().item(), rel=1e-5)
    # the padded last position (what the reference code read) gives a different number here
    last = torch.softmax(logits[:, -1], -1).mean(0)
    assert abs(Categorical(probs=last).entropy().item() - stats["batch_entropy"].item()) > 1e-3


def test_batch_entropy_all_positions_pools_every_response_token():
    logits = torch.randn(3, 6, 8)
    mask = _masks(3, 6, [0, 2, 1], [2, 3, 1])
    rows = logits[mask.bool()]
    pbar = torch.softmax(rows, -1).mean(0)
    stats = batch_entropy_stats(logits, mask, which="all")
    assert stats["batch_entropy"] == pytest.approx(Categorical(probs=pbar).entropy().item(), rel=1e-5)


def test_collapse_and_perfect_spread_limits():
    V, B = 10, 4
    same = torch.randn(1, 1, V).expand(B, 1, V)  # every prompt gets the same distribution
    s = batch_entropy_stats(same, torch.ones(B, 1))
    assert s["mutual_information"].item() == pytest.approx(0.0, abs=1e-5)
    onehot = torch.full((B, 1, V), -1e4)
    for i in range(B):
        onehot[i, 0, i] = 0.0  # confident and different answers
    s = batch_entropy_stats(onehot, torch.ones(B, 1))
    assert s["batch_entropy"].item() == pytest.approx(math.log(B), abs=1e-4)
    assert s["sample_entropy"].item() == pytest.approx(0.0, abs=1e-4)
    assert s["max_share"].item() == pytest.approx(1 / B, abs=1e-5)


def test_banned_tokens_with_minus_inf_logits_are_fine():
    logits = torch.randn(3, 1, 6, requires_grad=True)
    banned = logits.detach().clone()
    banned[:, :, :2] = float("-inf")
    z = logits + (banned - logits.detach())  # -inf where banned, gradient still flows elsewhere
    s = batch_entropy_stats(z, torch.ones(3, 1))
    expected = Categorical(probs=torch.softmax(banned[:, 0], -1).mean(0)).entropy()
    assert s["batch_entropy"].item() == pytest.approx(expected.item(), rel=1e-5)
    (s["batch_entropy"] + token_entropy(z, torch.ones(3, 1))).backward()
    assert torch.isfinite(logits.grad).all()


def test_empty_mask_gives_zero_not_nan():
    s = batch_entropy_stats(torch.randn(2, 3, 4), torch.zeros(2, 3))
    assert all(v.item() == 0 for v in s.values())
    assert answer_positions(torch.zeros(2, 3)).sum() == 0
    with pytest.raises(ValueError):
        answer_positions(torch.ones(2, 3), which="last")
