"""``GroupRelative.step`` itself, as a black box: what its update does when the rewards are scaled,
that its policy loss is the clipped surrogate (a small function checked by hand), that a KL run
keeps a frozen copy of the start as its reference, and how the arithmetic parameters pick it."""
import copy

import pytest
import torch
from transformers import GPT2LMHeadModel

from rlformal_utils import one_token as OT
from rlformal_utils.arithmetic import task
from rlformal_utils.arithmetic.evaluate import banned_ids, prompt_tensors
from rlformal_utils.arithmetic.reward import reward_table
from rlformal_utils.modes import eval_mode


@pytest.fixture(scope="module")
def batch(tok):
    problems = task.make_splits(64, 16, seed=0).train[:12]
    table = reward_table([p.answer for p in problems], task.number_token_ids(tok), len(tok))
    return prompt_tensors(tok, problems), table


def _sgd(trainer, lr):
    """Plain SGD at a constant lr, no gradient clipping: every gradient shows in the weights as it is
    (Adam would hide a scale, the clipping a norm)."""
    trainer.opt = torch.optim.SGD(trainer.params, lr=lr)
    trainer.sched = torch.optim.lr_scheduler.LambdaLR(trainer.opt, lambda s: 1.0)
    trainer.max_grad_norm = None
    return trainer


def _delta(model, start):
    return torch.cat([(v - start[k]).flatten() for k, v in model.state_dict().items()])


def _step_delta(base_dir, tok, batch, scale, **cfg):
    model = GPT2LMHeadModel.from_pretrained(base_dir)
    start = copy.deepcopy(model.state_dict())
    trainer = _sgd(OT.GroupRelative(model, OT.GroupConfig(k=8, eps=1e-8, **cfg), banned_ids(tok)), lr=0.5)
    prompts, table = batch
    stats = trainer.step(prompts, table * scale, torch.Generator().manual_seed(3))
    return _delta(model, start), stats


# ----------------------------------------------------------------------------- advantages, through the step
@pytest.mark.parametrize("epochs", [1, 2])
def test_std_normalised_update_is_the_same_when_every_reward_is_scaled(base_dir, tok, batch, epochs):
    d1, s1 = _step_delta(base_dir, tok, batch, 1.0, epochs=epochs, std_normalise=True)
    d4, s4 = _step_delta(base_dir, tok, batch, 4.0, epochs=epochs, std_normalise=True)
    assert torch.equal(s1["answers"], s4["answers"])  # the same samples: only the rewards' scale differs
    assert d1.abs().max() > 1e-3                       # the step did move the weights
    torch.testing.assert_close(d4, d1, rtol=1e-4, atol=1e-7)
    assert s4["loss_policy"] == pytest.approx(s1["loss_policy"], rel=1e-4, abs=1e-7)


def test_without_std_normalisation_the_update_scales_with_the_rewards(base_dir, tok, batch):
    d1, s1 = _step_delta(base_dir, tok, batch, 1.0, epochs=1, std_normalise=False)
    d4, s4 = _step_delta(base_dir, tok, batch, 4.0, epochs=1, std_normalise=False)
    assert d1.abs().max() > 1e-4
    torch.testing.assert_close(d4, 4 * d1, rtol=1e-4, atol=1e-6)   # one epoch, ratio 1: loss is linear in A
    assert s4["loss_policy"] == pytest.approx(4 * s1["loss_policy"], rel=1e-4, abs=1e-7)


# ----------------------------------------------------------------------------- the clipped surrogate
def test_clipped_surrogate_hand_worked():
    ratio = torch.tensor([0.5, 0.9, 1.0, 1.1, 1.5])
    c = 0.2
    # A = +1: -min(r, 1.2): the gain from raising the ratio stops at 1 + c; lowering it is never clipped
    torch.testing.assert_close(OT.clipped_surrogate(ratio, torch.ones(5), c),
                               torch.tensor([-0.5, -0.9, -1.0, -1.1, -1.2]))
    # A = -1: max(r, 0.8): the gain from lowering the ratio stops at 1 - c; raising it is never clipped
    torch.testing.assert_close(OT.clipped_surrogate(ratio, -torch.ones(5), c),
                               torch.tensor([0.8, 0.9, 1.0, 1.1, 1.5]))
    # A = 2 / -3 and mixed signs per sample, clip 0.1
    torch.testing.assert_close(OT.clipped_surrogate(torch.tensor([1.3, 0.7, 0.95]), torch.tensor([2.0, -3.0, 0.0]), 0.1),
                               torch.tensor([-2.2, 2.7, 0.0]))


def _by_hand(ratio, adv, clip):
    """The same loss written another way: -A min(r, 1 + c) where A >= 0, -A max(r, 1 - c) where A < 0."""
    return torch.where(adv >= 0, -adv * torch.minimum(ratio, torch.tensor(1 + clip)),
                       -adv * torch.maximum(ratio, torch.tensor(1 - clip)))


def test_the_group_step_loss_is_the_clipped_surrogate_of_its_own_ratios(base_dir, tok, batch, monkeypatch):
    calls = []
    real = OT.clipped_surrogate

    def spy(ratio, adv, clip):
        calls.append((ratio.detach().clone(), adv.detach().clone(), clip))
        return real(ratio, adv, clip)

    monkeypatch.setattr(OT, "clipped_surrogate", spy)
    model = GPT2LMHeadModel.from_pretrained(base_dir)
    trainer = OT.GroupRelative(model, OT.GroupConfig(k=8, epochs=3, lr=0.05, clip=0.1), banned_ids(tok))
    prompts, table = batch
    stats = trainer.step(prompts, table, torch.Generator().manual_seed(0))
    assert len(calls) == 3 and all(c == 0.1 for *_, c in calls)
    assert torch.equal(calls[0][0], torch.ones_like(calls[0][0]))      # epoch 1 reuses the sampling pass
    ratio, adv, _ = calls[-1]
    outside = (ratio - 1).abs() > 0.1
    assert outside.any()                                                # by epoch 3 clipping matters ...
    assert stats["clipfrac"] == pytest.approx(outside.float().mean().item())
    assert stats["loss_policy"] == pytest.approx(_by_hand(ratio, adv, 0.1).mean().item(), abs=1e-6)
    assert stats["loss_policy"] != pytest.approx((-adv * ratio).mean().item(), abs=1e-4)  # ... and changes the loss


def test_the_group_update_follows_the_gradient_of_the_clipped_surrogate(base_dir, tok, batch, monkeypatch):
    """A surrogate that is 0 everywhere leaves the weights alone (no KL, no entropy term): the step's
    gradient comes through this function, not through a copy of its formula."""
    prompts, table = batch

    def moved():
        model = GPT2LMHeadModel.from_pretrained(base_dir)
        start = copy.deepcopy(model.state_dict())
        OT.GroupRelative(model, OT.GroupConfig(k=8, lr=1e-2), banned_ids(tok)).step(
            prompts, table, torch.Generator().manual_seed(0))
        return _delta(model, start).abs().max().item()

    assert moved() > 1e-3
    monkeypatch.setattr(OT, "clipped_surrogate", lambda ratio, adv, clip: ratio * 0.0)
    assert moved() == 0.0


def test_the_ppo_step_uses_the_same_clipped_surrogate(base_dir, tok, batch, monkeypatch):
    calls = []
    real = OT.clipped_surrogate

    def spy(ratio, adv, clip):
        out = real(ratio, adv, clip)
        calls.append((clip, out.mean().item()))
        return out

    monkeypatch.setattr(OT, "clipped_surrogate", spy)
    prompts, table = batch
    trainer = OT.OneTokenPPO(GPT2LMHeadModel.from_pretrained(base_dir),
                             OT.PPOConfig(lr=1e-3, ppo_epochs=2, mini_batch_size=6, cliprange=0.15), banned_ids(tok))
    answers = torch.arange(3, 3 + len(prompts))
    out = trainer.step(prompts, answers, table.gather(1, answers[:, None])[:, 0])
    assert len(calls) == 2 * 2 and all(c == 0.15 for c, _ in calls)   # 2 epochs x 2 mini-batches
    assert out["loss_policy"] == pytest.approx(sum(v for _, v in calls) / len(calls), abs=1e-7)


# ----------------------------------------------------------------------------- KL to a frozen reference
def _masked_logp(model, prompts, ban):
    with eval_mode(model):
        return OT.masked_log_softmax(OT.last_position(model, prompts), ban, True)


def test_a_kl_run_keeps_a_frozen_copy_of_the_start_as_reference(base_dir, tok, batch):
    prompts, table = batch
    ban = banned_ids(tok)
    model = GPT2LMHeadModel.from_pretrained(base_dir)
    start = GPT2LMHeadModel.from_pretrained(base_dir)
    trainer = OT.GroupRelative(model, OT.GroupConfig(k=8, epochs=1, lr=3e-2, kl_coef=0.5, total_steps=50), ban)
    assert trainer.ref is not None and trainer.ref is not trainer.model
    policy_storage = {p.data_ptr() for p in model.parameters()}
    assert not policy_storage & {p.data_ptr() for p in trainer.ref.parameters()}  # no shared weights
    assert not any(p.requires_grad for p in trainer.ref.parameters())
    gen = torch.Generator().manual_seed(0)
    kls = []
    for _ in range(6):
        # the KL the step reports (one epoch: computed before its update) against the start, computed here
        p, q = _masked_logp(model, prompts, ban), _masked_logp(start, prompts, ban)
        expected = (p.exp() * (p - q).nan_to_num(0.0, posinf=0.0, neginf=0.0)).sum(-1).mean().item()
        kls.append(trainer.step(prompts, table, gen)["kl"])
        assert kls[-1] == pytest.approx(expected, rel=1e-3, abs=1e-7)
    assert abs(kls[0]) < 1e-6 and kls[-1] > 1e-3
    for name, value in trainer.ref.state_dict().items():                # the reference never moved ...
        torch.testing.assert_close(value, start.state_dict()[name], rtol=0, atol=0, msg=name)
    assert _delta(model, start.state_dict()).abs().max() > 1e-2         # ... while the policy did


def test_the_kl_term_holds_the_policy_closer_to_its_start(base_dir, tok, batch):
    prompts, table = batch
    ban = banned_ids(tok)
    start = GPT2LMHeadModel.from_pretrained(base_dir)

    def final_kl(kl_coef):
        model = GPT2LMHeadModel.from_pretrained(base_dir)
        trainer = OT.GroupRelative(model, OT.GroupConfig(k=8, lr=3e-2, kl_coef=kl_coef, total_steps=100), ban,
                                   ref_model=copy.deepcopy(start))
        gen = torch.Generator().manual_seed(0)
        for _ in range(8):
            trainer.step(prompts, table, gen)
        p, q = _masked_logp(model, prompts, ban), _masked_logp(start, prompts, ban)
        return (p.exp() * (p - q).nan_to_num(0.0, posinf=0.0, neginf=0.0)).sum(-1).mean().item()

    free, held = final_kl(0.0), final_kl(5.0)
    assert free > 0.05 and held < 0.5 * free


# ----------------------------------------------------------------------------- the arithmetic mapping
@pytest.mark.parametrize("kl_reference", ["frozen", "policy"])
def test_arithmetic_kl_reference_picks_the_group_trainers_reference(base_dir, tok, kl_reference):
    from rlformal_utils.arithmetic.params import PARAMS, check
    from rlformal_utils.arithmetic.train import make_trainer
    from rlformal_utils.params import defaults
    config = check(dict(defaults(PARAMS), algorithm="group", kl_reference=kl_reference, kl_coef=0.3,
                        kl_controller="fixed"))
    trainer = make_trainer(config, base_dir, tok)
    assert isinstance(trainer, OT.GroupRelative)
    if kl_reference == "policy":  # the paper's code: the policy is its own reference, KL is 0, nothing to hold
        assert trainer.cfg.kl_coef == 0.0 and trainer.ref is None
        return
    assert trainer.cfg.kl_coef == 0.3
    assert trainer.ref is not None and trainer.ref is not trainer.model
    start = GPT2LMHeadModel.from_pretrained(base_dir).state_dict()
    for name, value in trainer.ref.state_dict().items():
        torch.testing.assert_close(value, start[name], rtol=0, atol=0, msg=name)
