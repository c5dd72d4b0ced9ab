"""Group-relative RL for a causal LM whose responses are several tokens long.

The caller samples k responses for each prompt and scores them; ``GroupLM.step`` then updates the
policy with no value head:

* advantage of a response = (reward - its group's mean) / (its group's std + eps), the same for every
  token of the response (``one_token.group_advantages``);
* PPO's clipped ratio per token (``one_token.clipped_surrogate``) against the log-probs of the
  policy that sampled, for ``epochs`` passes over shuffled mini-batches of responses;
* a per-token KL penalty to a reference, with the k3 estimator
  ``exp(ref - logp) - (ref - logp) - 1`` (>= 0, unbiased for KL(pi || ref) on tokens sampled from
  pi; its gradient is ``(1 - pi_ref / pi) * grad logp``);
* optionally the batch entropy of each response's FIRST token across the mini-batch
  (``entropy.batch_entropy_stats``), a bonus weighted by ``entropy_coef``;
* gradient clipping and Adam with a constant lr.

The loss of a mini-batch is the mean over its responses of the mean over each response's tokens of
(clipped surrogate + kl_coef * k3), minus entropy_coef * batch entropy.

The reference is either a separate frozen model, or a callable returning a context manager inside
which the policy itself computes the reference (``peft_model.disable_adapter`` for a LoRA policy
against its base model). Dropout is switched off in the policy, so the old log-probs come from the
first gradient pass when a step has one mini-batch, else from one no-grad pass before the updates.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from . import devices
from .entropy import batch_entropy_stats
from .modes import disable_dropout
from .one_token import apply_gradients, clipped_surrogate, group_advantages


@dataclass
class GroupLMConfig:
    lr: float = 1e-3
    epochs: int = 1                 # passes over each batch of responses
    mini_batch_size: int = 0        # responses per gradient update; 0 means the whole batch
    clip: float = 0.2               # ratio clipping
    kl_coef: float = 0.05           # weight of the per-token k3 KL estimate; 0 means no reference pass
    entropy_coef: float = 0.0       # weight of the first-token batch entropy; 0 means off
    max_grad_norm: float | None = 1.0
    std_normalise: bool = True      # divide by the group's std (GRPO); False: only subtract the mean
    eps: float = 1e-4


def pad_pairs(prompts, responses, pad_id: int):
    """Right-padded prompt + response rows: (ids, attention mask, index of each response token's
    position in the row (N, T), response mask (N, T)). Logits at position ``index - 1`` predict
    the response token at ``index``."""
    prompts = [torch.as_tensor(p, dtype=torch.long) for p in prompts]
    responses = [torch.as_tensor(r, dtype=torch.long) for r in responses]
    rows = [torch.cat([p, r]) for p, r in zip(prompts, responses)]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(r) for r in rows])
    attention = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    n_resp = torch.tensor([len(r) for r in responses])
    steps = torch.arange(int(n_resp.max()))[None]
    mask = steps < n_resp[:, None]
    index = torch.tensor([len(p) for p in prompts])[:, None] + steps
    index = torch.where(mask, index, torch.zeros_like(index) + 1)  # padding cells read a harmless position
    return ids, attention, index, mask


def response_logits(model, padded) -> torch.Tensor:
    """Logits (N, T, V) that predict each response token, in float32 on the CPU."""
    ids, attention, index, _ = padded
    device = devices.of(model)
    logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float().cpu()
    return logits[torch.arange(len(ids))[:, None], index - 1]


def token_logprobs(logits: torch.Tensor, padded) -> torch.Tensor:
    """Log-probability (N, T) of each response token; 0 at padding."""
    ids, _, index, mask = padded
    tokens = ids.gather(1, index)
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    return logp * mask


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref) from the log-probs of sampled tokens."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


class GroupLM:
    """Group-relative policy gradient for a causal LM (any module returning ``.logits``; LoRA or full).
    ``reference``: None (no KL), a frozen model, or a callable returning a context manager inside which
    ``model`` is the reference."""

    def __init__(self, model, config: GroupLMConfig, pad_id: int, reference=None):
        self.model, self.cfg, self.pad_id = disable_dropout(model), config, pad_id
        if isinstance(reference, torch.nn.Module):
            reference = disable_dropout(reference).requires_grad_(False)
        self.reference = reference
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=config.lr)

    def _no_grad_logprobs(self, padded, as_reference: bool) -> torch.Tensor:
        model, context = self.model, contextlib.nullcontext()
        if as_reference:
            if isinstance(self.reference, torch.nn.Module):
                model = self.reference
            else:
                context = self.reference()
        with torch.no_grad(), context:
            return token_logprobs(response_logits(model, padded), padded)

    def step(self, prompts: list, responses: list, rewards) -> dict:
        """One update from B prompts (token ids), their B * k responses (token ids; the k of prompt
        i are ``responses[i * k: (i + 1) * k]``) and ``rewards`` (B, k). Returns the step's log row."""
        t0 = time.time()
        cfg = self.cfg
        rewards = torch.as_tensor(rewards, dtype=torch.float32)
        n_prompts, k = rewards.shape
        if len(prompts) != n_prompts or len(responses) != n_prompts * k:
            raise ValueError(f"{len(prompts)} prompts and {len(responses)} responses do not match rewards "
                             f"of shape {tuple(rewards.shape)}")
        advantages = group_advantages(rewards, cfg.std_normalise, cfg.eps).reshape(-1)       # (N,)
        pairs = [p for p in prompts for _ in range(k)]
        padded = pad_pairs(pairs, responses, self.pad_id)
        mask = padded[3].float()
        self.model.train()  # dropout is off: the same function as eval mode
        n = len(responses)
        size = min(cfg.mini_batch_size or n, n)
        # with one mini-batch, the first gradient pass is the sampling policy's pass: it gives the old log-probs
        old_logp = None if size == n else self._no_grad_logprobs(padded, as_reference=False)
        use_kl = cfg.kl_coef > 0 and self.reference is not None
        ref_logp = self._no_grad_logprobs(padded, as_reference=True) if use_kl else None

        stats = dict(loss=[], clipfrac=[], approxkl=[], batch_entropy=[], grad_norm=[])
        for _ in range(cfg.epochs):
            order = torch.randperm(n)
            for start in range(0, n, size):
                rows = order[start:start + size]
                part = (padded[0][rows], padded[1][rows], padded[2][rows], padded[3][rows])
                logits = response_logits(self.model, part)
                logp = token_logprobs(logits, part)
                if old_logp is None:
                    old_logp = torch.zeros_like(logp)
                    old_logp[rows] = logp.detach()
                m = mask[rows]
                ratio = torch.exp(logp - old_logp[rows])
                per_token = clipped_surrogate(ratio, advantages[rows, None], cfg.clip)
                if use_kl:
                    per_token = per_token + cfg.kl_coef * k3_kl(logp, ref_logp[rows])
                loss = ((per_token * m).sum(1) / m.sum(1)).mean()
                entropy = batch_entropy_stats(logits, m)["batch_entropy"]  # each response's first token
                if cfg.entropy_coef:
                    loss = loss - cfg.entropy_coef * entropy
                norm = apply_gradients(self.opt, self.params, loss, cfg.max_grad_norm)
                with torch.no_grad():
                    log_ratio = logp - old_logp[rows]
                    stats["loss"].append(loss.item())
                    stats["clipfrac"].append(float((((ratio - 1).abs() > cfg.clip).float() * m).sum() / m.sum()))
                    stats["approxkl"].append(float((0.5 * log_ratio ** 2 * m).sum() / m.sum()))
                    stats["batch_entropy"].append(entropy.item())
                    stats["grad_norm"].append(norm)
        self.model.eval()
        kl = float((old_logp - ref_logp).sum(1).mean()) if ref_logp is not None else 0.0
        return dict(reward=rewards.mean().item(), reward_sd=rewards.std(unbiased=False).item(), kl=kl,
                    entropy=float(-old_logp.sum(1).mean()),  # summed over response tokens, as trl's
                    zero_advantage_groups=float((rewards.std(dim=1) == 0).float().mean()),
                    **{name: sum(v) / len(v) for name, v in stats.items()}, seconds=time.time() - t0)
