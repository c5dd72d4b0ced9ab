"""The speed-ups of ``OneTokenPPO`` change no number: a few steps give bit-identical weights and step
statistics to the plain step (written out below as the trainer computed it before: eval-mode pass for
the old log-probs, entropy terms always in the graph, statistics read off tensors with gradients)."""
import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from rlformal_utils import one_token as OT
from rlformal_utils.arithmetic import task
from rlformal_utils.arithmetic.evaluate import banned_ids, prompt_tensors
from rlformal_utils.arithmetic.reward import reward_table
from rlformal_utils.modes import eval_mode


def _plain_step(self, prompts, answers, scores):
    cfg, B = self.cfg, len(prompts)
    answers, scores = answers.view(-1, 1), scores.float().view(-1)
    pending, self._pending = self._pending, None
    if pending is not None and pending[0] is not prompts:
        pending = None
    with eval_mode(self.model):
        if pending is None:
            _, logp_all, values = self.forward(prompts)
        else:
            logp_all, values = pending[1].detach(), pending[2].detach()
        logp_old = logp_all.gather(1, answers).squeeze(1)
        ref_logp_all = logp_all if self.ref is None else OT.masked_log_softmax(
            OT.last_position(self.ref, prompts), self.banned, cfg.mask_banned)
        ref_logp = ref_logp_all.gather(1, answers).squeeze(1)
        kl = logp_old - ref_logp
        exact_kl = (logp_all.exp() * (logp_all - ref_logp_all).nan_to_num(0.0, posinf=0.0, neginf=0.0)).sum(-1)
        returns = scores - self.kl_ctl.value * kl
        advantages = OT.whiten(returns - values)
    stats = []
    self.model.train()
    for _ in range(cfg.ppo_epochs):
        order = np.random.permutation(B)
        for start in range(0, B, cfg.mini_batch_size):
            idx = torch.as_tensor(order[start:start + cfg.mini_batch_size])
            reuse = (pending[1][idx], pending[2][idx]) if pending is not None else None
            pending = None
            stats.append(_plain_minibatch(self, [prompts[i] for i in idx.tolist()], answers[idx], logp_old[idx],
                                          values[idx], advantages[idx], returns[idx], reuse))
    self.model.eval()
    self.sched.step()
    mean_kl = kl.mean().item()
    kl_coef = self.kl_ctl.value
    self.kl_ctl.update(mean_kl, B)
    out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
    out["value_var_explained"] = 1 - out.pop("value_error") / returns.var(unbiased=True).item()
    out.update(kl=mean_kl, exact_kl=exact_kl.mean().item(), kl_coef=kl_coef, reward=scores.mean().item(),
               value_mean=values.mean().item(), return_mean=returns.mean().item(),
               value_return_corr=float(np.corrcoef(values.numpy(), returns.numpy())[0, 1]))
    return out


def _plain_minibatch(self, prompts, answers, logp_old, values, advantages, returns, reuse):
    cfg = self.cfg
    logp_all, vpred = reuse if reuse is not None else self.forward(prompts)[1:]
    logp = logp_all.gather(1, answers).squeeze(1)
    vclipped = torch.max(torch.min(vpred, values + cfg.cliprange_value), values - cfg.cliprange_value)
    vf_loss = 0.5 * torch.max((vpred - returns) ** 2, (vclipped - returns) ** 2).mean()
    ratio = torch.exp(logp - logp_old)
    pg_loss = OT.clipped_surrogate(ratio, advantages, cfg.cliprange).mean()
    if ratio.mean().item() > cfg.ratio_threshold:
        pg_loss, vf_loss = pg_loss * 0.0, vf_loss * 0.0
    ent = OT._entropy_terms(logp_all)
    bonus = cfg.token_entropy_coef * ent["token_entropy"] + cfg.batch_entropy_coef * ent["batch_entropy"]
    grad_norm = self._apply(pg_loss + cfg.vf_coef * vf_loss - bonus)
    return dict(loss_policy=pg_loss.item(), loss_value=vf_loss.item(), grad_norm=grad_norm,
                clipfrac=((ratio - 1).abs() > cfg.cliprange).float().mean().item(),
                approxkl=(0.5 * (logp - logp_old) ** 2).mean().item(),
                value_error=((vpred - returns) ** 2).mean().item(),
                train_token_entropy=ent["token_entropy"].item(), train_batch_entropy=ent["batch_entropy"].item())


def _run(base_dir, tok, plain, steps=3, **cfg):
    torch.manual_seed(0)
    kl_reference = cfg.pop("kl_reference", "policy")
    trainer = OT.OneTokenPPO(GPT2LMHeadModel.from_pretrained(base_dir),
                             OT.PPOConfig(lr=3e-3, ppo_epochs=3, max_grad_norm=1.0, **cfg), banned_ids(tok),
                             kl_reference=kl_reference)
    pool = task.make_splits(600, 16, seed=2).train
    short = [p for p in pool if len(p.prompt.split()) < 28]   # prompts of two lengths: padded batches, and
    long = [p for p in pool if len(p.prompt.split()) >= 28]   # mini-batches of either one length or both
    numbers, gen, out = task.number_token_ids(tok), torch.Generator().manual_seed(1), []
    np.random.seed(3)
    for s in range(steps):
        batch = long[14 * s:14 * s + 7] + short[2 * s:2 * s + 2] + long[14 * s + 7:14 * (s + 1)]
        q = prompt_tensors(tok, batch)
        table = reward_table([p.answer for p in batch], numbers, len(tok))
        answers = OT.sample(trainer.rollout_logits(q), 1, banned_ids(tok), gen)
        step = _plain_step if plain else OT.OneTokenPPO.step
        out.append(step(trainer, q, answers[:, 0], table.gather(1, answers)[:, 0]))
    weights = dict(trainer.model.state_dict(), **{f"v_head.{k}": v for k, v in trainer.value_head.state_dict().items()})
    return out, weights, trainer.model.training


@pytest.mark.parametrize("cfg", [
    dict(mini_batch_size=16),                                                 # the quick profile's PPO: no entropy
    dict(mini_batch_size=16, token_entropy_coef=0.3),
    dict(mini_batch_size=8, batch_entropy_coef=0.3),                          # two mini-batches: no reuse after the first
    dict(mini_batch_size=16, kl_reference="frozen", mask_banned=False),       # a reference pass in the step
])
def test_ppo_steps_are_bit_identical_to_the_plain_step(base_dir, tok, cfg):
    fast_stats, fast_w, fast_training = _run(base_dir, tok, plain=False, **dict(cfg))
    plain_stats, plain_w, plain_training = _run(base_dir, tok, plain=True, **dict(cfg))
    assert fast_stats == plain_stats                      # every statistic, exactly (dict order too)
    assert list(fast_stats[0]) == list(plain_stats[0])
    for name, value in plain_w.items():
        assert torch.equal(fast_w[name], value), name
    start = GPT2LMHeadModel.from_pretrained(base_dir).state_dict()
    assert max((plain_w[k] - v).abs().max().item() for k, v in start.items()) > 1e-3  # the steps did move the weights
    assert not fast_training and not plain_training       # both leave the policy in eval mode


def test_the_training_loops_prompt_encoder_gives_the_tokenizers_ids(tok):
    from rlformal_utils.arithmetic.train import prompt_encoder
    splits = task.make_splits(2000, 200, seed=4)
    problems = splits.train + splits.heldout + splits.unseen
    problems.append(task.Problem(expression="3+4", chain="", prompt="3 + 4 = 7 ? =", answer=7))  # an unknown word
    fast, slow = prompt_encoder(tok)(problems), prompt_tensors(tok, problems)
    assert len({len(q) for q in slow}) > 1  # prompts of several lengths
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(fast, slow))


def test_rows_of_a_padded_batch_are_the_padded_batch_of_those_rows():
    """PPO pads a step's prompts once; each mini-batch's rows must be exactly what padding them anew gives."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 50, (n,), generator=g) for n in (5, 9, 9, 5, 7, 9, 5)]
    padded = OT.pad_prompts(prompts)
    for rows in ([0, 3, 6], [1, 2, 5], [6, 1], [4, 0], list(range(7)), [5, 4, 3, 2, 1, 0, 6]):
        expected = OT.pad_prompts([prompts[i] for i in rows])
        got = OT.select_rows(padded, torch.tensor(rows))
        for e, x in zip(expected, got):
            assert (e is None and x is None) or (torch.equal(e, x) and e.dtype == x.dtype), rows
    same = [torch.arange(4) + i for i in range(3)]  # one length: no mask at all
    assert OT.select_rows(OT.pad_prompts(same), torch.tensor([2, 0]))[1:] == (None, None)
