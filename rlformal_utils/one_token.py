"""RL when the answer is ONE token: a contextual bandit, trained from one forward pass per prompt.

The arithmetic answer is a single token, so one forward pass over a prompt gives the whole
answer distribution: all k samples of a group, their log-probabilities, both entropy terms and
the exact KL to a reference come from it. Three updates share that pass:

* ``GroupRelative``: k answers per prompt, advantage = (r - group mean) / (group std + eps)
  (GRPO / RLOO style, no value head), a clipped ratio for several epochs, an optional exact
  KL(pi || pi_ref) to a frozen reference, token- and batch-entropy bonuses, cosine lr.
* ``OneTokenPPO``: the paper's PPO (trl 0.11.4's ``PPOTrainer`` algorithm) specialised to one
  token: value head on the last hidden state, KL in the reward with trl's adaptive controller,
  advantage whitening, clipped policy and value losses, minus the entropy bonuses. A test
  checks its loss and weights against trl's own ``step`` on the same batch.
* ``Supervised``: cross-entropy on the true answer, the reference RL is compared with.

``banned_ids`` are never sampled. With ``mask_banned=True`` (our default) they are also removed
from the distribution the update trains; trl's engine cannot do that (see the arithmetic
notebook for why it matters).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import devices
from .entropy import batch_entropy_stats
from .modes import disable_dropout, eval_mode
from .pretrain import left_pad


# ----------------------------------------------------------------------------- the forward pass
def pad_prompts(prompts: list[torch.Tensor]):
    """The batch ``last_position`` runs: (ids, mask, positions) of the left-padded prompts, with mask
    and positions None when all prompts have one length."""
    width = max(len(p) for p in prompts)
    if all(len(p) == width for p in prompts):
        return torch.stack(list(prompts)), None, None
    ids, mask = left_pad(prompts)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def select_rows(padded, idx: torch.Tensor):
    """``pad_prompts([prompts[i] for i in idx])`` read off ``pad_prompts(prompts)``: those rows, without
    the leading columns that are padding in all of them (so PPO pads a batch once per step)."""
    ids, mask, _ = padded
    ids = ids[idx]
    if mask is None:
        return ids, None, None
    mask = mask[idx]
    lengths = mask.sum(-1)
    width = int(lengths.max())
    ids, mask = ids[:, -width:].contiguous(), mask[:, -width:].contiguous()
    if bool((lengths == width).all()):
        return ids, None, None
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def last_position(model, prompts: list[torch.Tensor], with_hidden: bool = False, padded=None):
    """Logits (B, V) of the token after each prompt, and optionally the last hidden state
    (B, D) there, from ONE forward call: prompts are left-padded to a common length, with the
    attention mask and position ids that make each row compute exactly what it would alone.
    Differentiable; the caller decides about ``no_grad``. A GPT-2 with dropout off takes
    ``gpt2_last_position`` (the same function, less work); any other model its own forward.
    The model may sit on a GPU; the results always come back to the CPU (differentiably), where
    answers are sampled and scored. ``padded``: ``pad_prompts(prompts)`` when the caller has it."""
    ids, mask, positions = pad_prompts(prompts) if padded is None else padded
    device = devices.of(model)
    if device.type != "cpu":
        ids, mask, positions = (None if t is None else t.to(device) for t in (ids, mask, positions))
    if _plain_gpt2(model):
        hidden = gpt2_last_position(model, ids, mask, positions)
        logits = model.lm_head(hidden).float()
    else:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    output_hidden_states=with_hidden, logits_to_keep=1)  # no LM head on the other positions
        logits, hidden = out.logits[:, -1, :].float(), out.hidden_states[-1][:, -1, :] if with_hidden else None
    return (logits.cpu(), hidden.cpu()) if with_hidden else logits.cpu()  # .cpu() of a CPU tensor is itself


def _plain_gpt2(model) -> bool:
    """A transformers GPT2LMHeadModel whose forward ``gpt2_last_position`` reproduces: no
    cross-attention, no upcast/reordered attention, and every dropout off (or eval mode)."""
    config = getattr(model, "config", None)
    return (type(model).__name__ == "GPT2LMHeadModel" and not config.add_cross_attention
            and not config.reorder_and_upcast_attn
            and not any(m.p > 0 and m.training for m in model.modules() if isinstance(m, torch.nn.Dropout)))


def gpt2_last_position(model, ids: torch.Tensor, mask: torch.Tensor | None = None,
                       positions: torch.Tensor | None = None) -> torch.Tensor:
    """GPT-2's final hidden state (after ``ln_f``) at the LAST position of each row, (B, D).

    Only the last position is read, so the last block needs the keys and values of every
    position but its query, attention output and MLP at the last position alone: with 2 layers
    that is ~35 % less work in both passes than the full forward (measured in the arithmetic
    benchmark). ``mask`` (B, T) marks real tokens of left-padded rows; a padding position
    attends to itself only, so it stays finite and is never attended to."""
    gpt = model.transformer
    B, T = ids.shape
    h = gpt.wte(ids) + gpt.wpe(positions if positions is not None else torch.arange(T, device=ids.device)[None])
    allowed = None
    if mask is not None:
        causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()
        allowed = (causal & mask[:, None, :].bool()) | torch.eye(T, dtype=torch.bool, device=ids.device)  # (B, T, T)
        allowed = allowed[:, None]                                                       # (B, 1, T, T)
    for i, block in enumerate(gpt.h):
        last = i == len(gpt.h) - 1
        attn = block.attn
        q, k, v = attn.c_attn(block.ln_1(h)).split(attn.embed_dim, dim=2)
        if last:  # only the last query is needed
            q, h = q[:, -1:], h[:, -1:]
        heads = lambda x: x.view(B, x.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2)  # noqa: E731
        a = torch.nn.functional.scaled_dot_product_attention(
            heads(q), heads(k), heads(v), scale=attn.scaling,
            attn_mask=None if allowed is None else (allowed[:, :, -1:] if last else allowed),
            is_causal=allowed is None and not last)
        h = h + attn.c_proj(a.transpose(1, 2).reshape(B, -1, attn.embed_dim))
        h = h + block.mlp(block.ln_2(h))
    return gpt.ln_f(h[:, -1])


def masked_log_softmax(logits: torch.Tensor, banned_ids, mask_banned: bool) -> torch.Tensor:
    if mask_banned and banned_ids:
        logits = logits.clone()
        logits[:, list(banned_ids)] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def sample(logits: torch.Tensor, k: int, banned_ids, generator: torch.Generator | None = None) -> torch.Tensor:
    """k answers per row (B, k) by pure sampling (no top-k/top-p, temperature 1), banned removed."""
    logits = logits.detach().clone()
    if banned_ids:
        logits[:, list(banned_ids)] = float("-inf")
    return torch.multinomial(torch.softmax(logits, -1), k, replacement=True, generator=generator)


def _entropy_terms(logp: torch.Tensor) -> dict:
    """Token entropy (mean_i H(p_i)) and the batch-entropy statistics of rows of log-probs."""
    stats = batch_entropy_stats(logp[:, None, :], torch.ones(logp.shape[0], 1))
    stats["token_entropy"] = stats["sample_entropy"]
    return stats


def cosine_lr(step: int, total: int, warmup: int = 0) -> float:
    """Multiplier of the base lr: linear warm-up, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class _Trainer:
    """Shared plumbing: an Adam optimizer with a cosine schedule and gradient clipping."""

    def __init__(self, model, lr: float, total_steps: int, max_grad_norm: float | None, warmup: int = 0,
                 extra_params=()):
        self.model = disable_dropout(model)
        params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
        self.params = params
        self.opt = torch.optim.Adam(params, lr=lr, foreach=True)  # one call per op for all tensors (CPU default: a loop)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: cosine_lr(s, total_steps, warmup))
        self.max_grad_norm = max_grad_norm

    def _apply(self, loss: torch.Tensor) -> float:
        return apply_gradients(self.opt, self.params, loss, self.max_grad_norm)


def apply_gradients(opt, params, loss: torch.Tensor, max_grad_norm: float | None) -> float:
    """One optimizer step on ``loss``: gradients, clipped to ``max_grad_norm`` (if set), then the
    step. Returns the gradient norm before clipping (NaN without clipping)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = float("nan")
    if max_grad_norm:
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    opt.step()
    return norm


# ----------------------------------------------------------------------------- group-relative
@dataclass
class GroupConfig:
    k: int = 8                      # answers sampled per prompt (one forward pass)
    epochs: int = 2                 # clipped updates per batch
    clip: float = 0.2               # ratio clipping
    lr: float = 1e-3
    total_steps: int = 1000         # for the cosine schedule
    std_normalise: bool = True      # divide by the group's std (GRPO); False: only subtract the mean (RLOO-like)
    eps: float = 1e-4
    kl_coef: float = 0.0            # exact KL(pi || pi_ref) per prompt; needs a reference model
    token_entropy_coef: float = 0.0
    batch_entropy_coef: float = 0.0
    max_grad_norm: float | None = 1.0
    mask_banned: bool = True


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's clipped policy loss per sample (the caller averages): max(-A r, -A clip(r, 1 - c, 1 + c)).
    The ratio is clipped only where that lowers the objective: above 1 + c for a positive advantage,
    below 1 - c for a negative one. Both trainers use it."""
    return torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))


def group_advantages(rewards: torch.Tensor, std_normalise: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(B, k) rewards -> advantages relative to each prompt's group: r - mean, divided by the
    group's (population) std + eps when ``std_normalise``. A group whose answers all earn the
    same reward gets advantage 0 everywhere."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if std_normalise:
        centred = centred / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centred


class GroupRelative(_Trainer):
    """Group-relative policy gradient for one-token answers."""

    def __init__(self, model, config: GroupConfig, banned_ids=(), ref_model=None):
        super().__init__(model, config.lr, config.total_steps, config.max_grad_norm)
        self.cfg, self.banned = config, list(banned_ids)
        if config.kl_coef > 0 and ref_model is None:
            ref_model = copy.deepcopy(model)
        self.ref = disable_dropout(ref_model).requires_grad_(False) if ref_model is not None else None

    def step(self, prompts: list[torch.Tensor], reward_table: torch.Tensor, generator=None) -> dict:
        """One batch: sample k answers per prompt, score them with ``reward_table`` (B, V: the
        reward of every possible answer token), then ``epochs`` clipped updates."""
        cfg = self.cfg
        self.model.train()  # dropout is off, so this equals eval mode; the first epoch reuses this pass
        logits = last_position(self.model, prompts)
        answers = sample(logits, cfg.k, self.banned, generator)                    # (B, k)
        rewards = reward_table.gather(1, answers)                                   # (B, k)
        adv = group_advantages(rewards, cfg.std_normalise, cfg.eps)
        first = masked_log_softmax(logits, self.banned, cfg.mask_banned)
        old_logp = first.detach().gather(1, answers)
        ref_logp = None
        if self.ref is not None and cfg.kl_coef > 0:
            with torch.no_grad():
                ref_logp = masked_log_softmax(last_position(self.ref, prompts), self.banned, cfg.mask_banned)
        for epoch in range(cfg.epochs):
            logp_all = first if epoch == 0 else masked_log_softmax(last_position(self.model, prompts),
                                                                    self.banned, cfg.mask_banned)
            ratio = torch.exp(logp_all.gather(1, answers) - old_logp)
            pg_loss = clipped_surrogate(ratio, adv, cfg.clip).mean()
            ent = _entropy_terms(logp_all)
            loss = pg_loss - cfg.token_entropy_coef * ent["token_entropy"] - cfg.batch_entropy_coef * ent["batch_entropy"]
            kl = torch.zeros(())
            if ref_logp is not None:
                p = logp_all.exp()
                kl = (p * (logp_all - ref_logp).nan_to_num(0.0, posinf=0.0, neginf=0.0)).sum(-1).mean()
                loss = loss + cfg.kl_coef * kl
            grad_norm = self._apply(loss)
        self.sched.step()
        self.model.eval()
        return dict(reward=rewards.mean().item(), answers=answers, rewards=rewards, logits=logits.detach(),
                    loss_policy=pg_loss.item(), kl=kl.item(), grad_norm=grad_norm,
                    clipfrac=((ratio - 1).abs() > cfg.clip).float().mean().item(),
                    zero_advantage_groups=(rewards.std(dim=1) == 0).float().mean().item(),
                    train_token_entropy=ent["token_entropy"].item(), train_batch_entropy=ent["batch_entropy"].item(),
                    lr=self.sched.get_last_lr()[0])


# ----------------------------------------------------------------------------- PPO (trl's algorithm)
@dataclass
class PPOConfig:
    """The defaults are trl 0.11.4's ``PPOConfig`` defaults (one-token responses)."""
    lr: float = 1.41e-5
    total_steps: int = 1000
    mini_batch_size: int = 128
    ppo_epochs: int = 4
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    init_kl_coef: float = 0.2
    adaptive_kl: bool = True
    kl_target: float = 6.0           # trl's default: out of reach for one token (see arithmetic.params)
    kl_horizon: float = 10000.0
    ratio_threshold: float = 10.0
    max_grad_norm: float | None = None
    token_entropy_coef: float = 0.0
    batch_entropy_coef: float = 0.0
    mask_banned: bool = True
    cosine: bool = False              # trl keeps the lr constant


class AdaptiveKL:
    """trl's adaptive KL controller (Ziegler et al. 2019): moves the coefficient towards a KL target."""

    def __init__(self, value: float, target: float, horizon: float, adaptive: bool = True):
        self.value, self.target, self.horizon, self.adaptive = value, target, horizon, adaptive

    def update(self, current_kl: float, n: int) -> None:
        if self.adaptive:
            error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
            self.value *= 1 + error * n / self.horizon


def whiten(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sqrt(unbiased var + 1e-8), as trl's ``masked_whiten``."""
    return (x - x.mean()) * torch.rsqrt(x.var(unbiased=True) + 1e-8)


class OneTokenPPO(_Trainer):
    """PPO with a value head for one-token responses. ``kl_reference``: ``"frozen"`` (a frozen copy
    of the start) or ``"policy"`` (the policy is its own reference: KL always 0, the paper's code)."""

    def __init__(self, model, config: PPOConfig, banned_ids=(), kl_reference: str = "frozen",
                 value_head: torch.nn.Linear | None = None):
        self.value_head = value_head or torch.nn.Linear(model.config.hidden_size, 1)
        super().__init__(model, config.lr, config.total_steps if config.cosine else 10**12, config.max_grad_norm,
                         extra_params=self.value_head.parameters())
        if kl_reference not in ("frozen", "policy"):
            raise ValueError(f"kl_reference must be 'frozen' or 'policy', got {kl_reference!r}")
        self.ref = None if kl_reference == "policy" else disable_dropout(copy.deepcopy(model)).requires_grad_(False)
        self.cfg, self.banned = config, list(banned_ids)
        self.kl_ctl = AdaptiveKL(config.init_kl_coef, config.kl_target, config.kl_horizon, config.adaptive_kl)
        self._pending = None  # (prompts, log-probs, values) of the last rollout, for its step to reuse

    def forward(self, prompts, padded=None):
        logits, hidden = last_position(self.model, prompts, with_hidden=True, padded=padded)
        return logits, masked_log_softmax(logits, self.banned, self.cfg.mask_banned), self.value_head(hidden).squeeze(-1)

    def rollout_logits(self, prompts) -> torch.Tensor:
        """The answer logits (B, V) to sample from. When the next ``step`` is on these same prompts
        in one mini-batch, its old log-probs, its values and its first gradient all come from this
        one pass (dropout is off, so it is the pass trl would repeat three times)."""
        if self.cfg.mini_batch_size >= len(prompts):
            self.model.train()
            padded = pad_prompts(prompts)
            logits, logp_all, values = self.forward(prompts, padded)
            self._pending = (prompts, logp_all, values, padded)
            return logits.detach()
        self._pending = None
        with eval_mode(self.model):
            return last_position(self.model, prompts)

    def step(self, prompts: list[torch.Tensor], answers: torch.Tensor, scores: torch.Tensor) -> dict:
        """One PPO step on (prompt, answer token, score) triples, as trl's ``PPOTrainer.step``."""
        cfg, B = self.cfg, len(prompts)
        answers, scores = answers.view(-1, 1), scores.float().view(-1)
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is not prompts:
            pending = None
        padded = pad_prompts(prompts) if pending is None else pending[3]  # once per step, for every pass
        # eval mode only around a forward pass: with the rollout's pass reused and no frozen reference
        # there is none here, and no_grad alone gives the same numbers without two walks over the modules
        with eval_mode(self.model) if pending is None or self.ref is not None else torch.no_grad():
            if pending is None:
                _, logp_all, values = self.forward(prompts, padded)
            else:
                logp_all, values = pending[1].detach(), pending[2].detach()
            logp_old = logp_all.gather(1, answers).squeeze(1)
            if self.ref is None:
                ref_logp_all = logp_all
            else:
                ref_logp_all = masked_log_softmax(last_position(self.ref, prompts, padded=padded), self.banned,
                                                  cfg.mask_banned)
            ref_logp = ref_logp_all.gather(1, answers).squeeze(1)
            kl = logp_old - ref_logp                                # trl's "kl" estimator of one token
            exact_kl = (logp_all.exp() * (logp_all - ref_logp_all).nan_to_num(0.0, posinf=0.0, neginf=0.0)).sum(-1)
            returns = scores - self.kl_ctl.value * kl              # the score plus the KL penalty
            advantages = whiten(returns - values)                  # one step: GAE reduces to r - V
        stats = []
        self.model.train()
        for _ in range(cfg.ppo_epochs):
            order = np.random.permutation(B)                        # trl's shuffle (numpy's global RNG)
            for start in range(0, B, cfg.mini_batch_size):
                idx = torch.as_tensor(order[start:start + cfg.mini_batch_size])
                # the first mini-batch of a rollout's batch reuses the rollout's pass (same weights)
                reuse = (pending[1][idx], pending[2][idx]) if pending is not None else None
                pending = None
                stats.append(self._minibatch([prompts[i] for i in idx.tolist()], answers[idx], logp_old[idx],
                                             values[idx], advantages[idx], returns[idx], reuse,
                                             None if reuse is not None else select_rows(padded, idx)))
        self.model.eval()
        self.sched.step()
        mean_kl = kl.mean().item()
        kl_coef = self.kl_ctl.value
        self.kl_ctl.update(mean_kl, B)
        out = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
        out["value_var_explained"] = 1 - out.pop("value_error") / returns.var(unbiased=True).item()
        out.update(kl=mean_kl, exact_kl=exact_kl.mean().item(), kl_coef=kl_coef, reward=scores.mean().item(),
                   value_mean=values.mean().item(), return_mean=returns.mean().item(),
                   value_return_corr=float(np.corrcoef(values.numpy(), returns.numpy())[0, 1]) if B > 2 else float("nan"))
        return out

    def _minibatch(self, prompts, answers, logp_old, values, advantages, returns, reuse=None, padded=None) -> dict:
        cfg = self.cfg
        logp_all, vpred = reuse if reuse is not None else self.forward(prompts, padded)[1:]
        logp = logp_all.gather(1, answers).squeeze(1)
        vclipped = torch.max(torch.min(vpred, values + cfg.cliprange_value), values - cfg.cliprange_value)
        vf_loss = 0.5 * torch.max((vpred - returns) ** 2, (vclipped - returns) ** 2).mean()
        ratio = torch.exp(logp - logp_old)
        pg_loss = clipped_surrogate(ratio, advantages, cfg.cliprange).mean()
        if ratio.mean().item() > cfg.ratio_threshold:               # trl skips such a batch
            pg_loss, vf_loss = pg_loss * 0.0, vf_loss * 0.0
        loss = pg_loss + cfg.vf_coef * vf_loss
        if cfg.token_entropy_coef or cfg.batch_entropy_coef:
            ent = _entropy_terms(logp_all)
            loss = loss - (cfg.token_entropy_coef * ent["token_entropy"] + cfg.batch_entropy_coef * ent["batch_entropy"])
        else:  # both coefficients 0: the bonus adds exact zeros to the gradient, so it is only logged
            with torch.no_grad():
                ent = _entropy_terms(logp_all)
        grad_norm = self._apply(loss)
        with torch.no_grad():  # logged only: no graph
            stats = torch.stack([pg_loss, vf_loss, ((ratio - 1).abs() > cfg.cliprange).float().mean(),
                                 (0.5 * (logp - logp_old) ** 2).mean(), ((vpred - returns) ** 2).mean(),
                                 ent["token_entropy"], ent["batch_entropy"]]).tolist()
        return dict(loss_policy=stats[0], loss_value=stats[1], grad_norm=grad_norm, clipfrac=stats[2],
                    approxkl=stats[3], value_error=stats[4], train_token_entropy=stats[5], train_batch_entropy=stats[6])


# ----------------------------------------------------------------------------- supervised reference
class Supervised(_Trainer):
    """Cross-entropy on the true answer token: what RL is compared with."""

    def __init__(self, model, lr: float, total_steps: int, max_grad_norm: float | None = 1.0):
        super().__init__(model, lr, total_steps, max_grad_norm)

    def step(self, prompts: list[torch.Tensor], targets: torch.Tensor) -> dict:
        self.model.train()
        logits = last_position(self.model, prompts)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        grad_norm = self._apply(loss)
        self.sched.step()
        self.model.eval()
        return dict(loss_supervised=loss.item(), grad_norm=grad_norm, lr=self.sched.get_last_lr()[0])
