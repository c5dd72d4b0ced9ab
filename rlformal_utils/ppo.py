"""PPO with entropy regularisers: trl 0.11.4's classic PPOTrainer, subclassed.

The only change to trl's algorithm is the policy loss:

    L = L_clip + vf_coef * L_value - c_tok * H_tok - c_batch * H_batch

where H_tok is the mean per-token entropy over the response mask and H_batch the batch
entropy of the answer distributions (see ``rlformal_utils.entropy``). Both terms and their
parts are logged under ``ppo/policy/...`` in the stats that ``step`` returns.

``lean_forward=True`` (the sentiment runs) computes the same quantities as trl's forward passes
with less work, and a test holds it to trl's own ``batched_forward_pass``:
  * the LM head runs only on the positions that predict a response token (trl computes the
    logits of every position and then masks most of them);
  * the no-grad passes take the whole batch at once (trl: chunks of ``mini_batch_size``);
  * ``trainer.rollout``, when set before ``step``, replaces the policy's no-grad pass: the
    log-probabilities and value-head inputs recorded while sampling the responses (see
    ``sentiment.sampling.sample_responses(rollout=True)``). They are those of the same model on
    the same tokens, computed token by token with a KV cache instead of in one pass, so they
    differ from trl's by float rounding only.

KL modes:
  * ``"frozen"`` (default): trl's frozen copy of the initial policy is the KL reference.
  * ``"policy"``: the policy is its own reference, so the KL penalty is always 0. This is
    what the paper's scripts did (by accident); we keep it as a named ablation.
"""
from __future__ import annotations

import warnings

import torch
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from trl.core import logprobs_from_logits

from .entropy import batch_entropy_stats, token_entropy
from .modes import disable_dropout

KL_MODES = ("frozen", "policy")


class EntropyPPOTrainer(PPOTrainer):
    """``PPOTrainer`` whose loss adds a token-entropy and a batch-entropy bonus."""

    def __init__(self, *args, token_entropy_coef: float = 0.0, batch_entropy_coef: float = 0.0,
                 entropy_positions: str = "first", lean_forward: bool = False, **kwargs):
        self.lean_forward = lean_forward
        self.rollout = None  # (log-probs, hidden states) per response, for the next step (lean_forward)
        self.token_entropy_coef = float(token_entropy_coef)
        self.batch_entropy_coef = float(batch_entropy_coef)
        self.entropy_positions = entropy_positions
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "PPOTrainer is deprecated": we pin 0.11.4 on purpose
            warnings.filterwarnings("ignore", message="No dataset is provided")  # we hand it every batch ourselves
            super().__init__(*args, **kwargs)

    def loss(self, old_logprobs, values, logits, vpreds, logprobs, mask, advantages, returns):
        pg_loss, vf_term, stats = super().loss(old_logprobs, values, logits, vpreds, logprobs,
                                               mask, advantages, returns)
        h_tok = token_entropy(logits, mask)
        batch = batch_entropy_stats(logits, mask, self.entropy_positions)
        bonus = self.token_entropy_coef * h_tok + self.batch_entropy_coef * batch["batch_entropy"]
        stats["policy/token_entropy"] = h_tok.detach()
        for name, value in batch.items():
            stats[f"policy/{name}"] = value.detach()
        stats["loss/entropy_bonus"] = bonus.detach()
        return pg_loss - bonus, vf_term, stats

    def batched_forward_pass(self, model, queries, responses, model_inputs, return_logits=False,
                             response_masks=None):
        """trl's outputs (log-probs, logits or None, values, masks over positions 1..L-1 of the
        padded query + response), computed leanly when ``lean_forward`` (see the module docstring).
        Positions outside the response mask hold zeros instead of trl's unused numbers."""
        if not self.lean_forward or self.is_encoder_decoder:
            return super().batched_forward_pass(model, queries, responses, model_inputs, return_logits, response_masks)
        model.eval()
        ids, att = model_inputs["input_ids"], model_inputs["attention_mask"]
        width = ids.shape[1]
        # response j's tokens sit at ids[j, start + 1 : end + 1]; log-prob position p scores token p + 1
        pad_left = [int(att[j].nonzero()[0]) if att[j, 0] == 0 else 0 for j in range(len(queries))]
        starts = [len(q) - 1 + off for q, off in zip(queries, pad_left)]
        ends = [s + len(r) for s, r in zip(starts, responses)]
        masks = torch.zeros_like(att[:, :-1])
        for j, (s, e) in enumerate(zip(starts, ends)):
            masks[j, s:e] = 1 if response_masks is None else response_masks[j][:e - s]
        logprobs = torch.zeros(masks.shape, device=ids.device)
        values = torch.zeros(masks.shape, device=ids.device)
        rollout, self.rollout = self.rollout, None
        if rollout is not None and not torch.is_grad_enabled() and not return_logits:
            # the policy's no-grad pass (trl's first forward pass in step): read off the sampling
            for j, (s, e) in enumerate(zip(starts, ends)):
                logprobs[j, s:e] = rollout[0][j].to(ids.device)
                values[j, s:e] = model.v_head(rollout[1][j].to(ids.device)).squeeze(-1)
            return logprobs, None, values, masks
        lo, hi = min(starts), max(ends)
        keep = torch.arange(lo, hi, device=ids.device)  # logits only where a response token is predicted
        chunk = len(queries) if not torch.is_grad_enabled() else self.config.mini_batch_size
        all_logits = []
        for c in range(0, len(queries), chunk):
            part = {k: v[c:c + chunk] for k, v in model_inputs.items()}
            logits, _, v = model(**part, logits_to_keep=keep)
            values[c:c + chunk] = v[:, :-1]
            logprobs[c:c + chunk, lo:hi] = logprobs_from_logits(logits, ids[c:c + chunk, lo + 1:hi + 1])
            if return_logits:
                full = logits.new_zeros(logits.shape[0], width - 1, logits.shape[2])
                full[:, lo:hi] = logits
                all_logits.append(full)
        return logprobs, torch.cat(all_logits) if return_logits else None, values, masks


def make_trainer(model_dir: str, tokenizer, *, learning_rate: float, batch_size: int,
                 mini_batch_size: int, ppo_epochs: int, kl_mode: str = "frozen",
                 kl_coef: float = 0.2, adaptive_kl: bool = True, token_entropy_coef: float = 0.0,
                 batch_entropy_coef: float = 0.0, seed: int = 0, **ppo_kwargs) -> EntropyPPOTrainer:
    """Load a causal LM from ``model_dir`` with a fresh value head and wrap it in the trainer.
    Dropout is disabled in the policy, its value head and so in the reference copy: trl's
    ``step`` leaves the model in train mode, and sampling must not depend on that."""
    if kl_mode not in KL_MODES:
        raise ValueError(f"kl_mode must be one of {KL_MODES}, got {kl_mode!r}")
    model = disable_dropout(AutoModelForCausalLMWithValueHead.from_pretrained(model_dir))
    config = PPOConfig(learning_rate=learning_rate, batch_size=batch_size,
                       mini_batch_size=mini_batch_size, ppo_epochs=ppo_epochs,
                       init_kl_coef=kl_coef, adap_kl_ctrl=adaptive_kl, seed=seed, **ppo_kwargs)
    ref_model = model if kl_mode == "policy" else None  # None: trl makes a frozen copy
    return EntropyPPOTrainer(config=config, model=model, ref_model=ref_model, tokenizer=tokenizer,
                             token_entropy_coef=token_entropy_coef,
                             batch_entropy_coef=batch_entropy_coef)
