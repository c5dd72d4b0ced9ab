"""PPO with entropy regularisers: trl 0.11.4's classic PPOTrainer, subclassed.

The only change to trl's algorithm is the policy loss:

    L = L_clip + vf_coef * L_value - c_tok * H_tok - c_batch * H_batch

where H_tok is the mean per-token entropy over the response mask and H_batch the batch
entropy of the answer distributions (see ``rlformal_utils.entropy``). Both terms and their
parts are logged under ``ppo/policy/...`` in the stats that ``step`` returns.

KL modes:
  * ``"frozen"`` (default): trl's frozen copy of the initial policy is the KL reference.
  * ``"policy"``: the policy is its own reference, so the KL penalty is always 0. This is
    what the paper's scripts did (by accident); we keep it as a named ablation.
"""
from __future__ import annotations

import warnings

import torch
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

from .entropy import batch_entropy_stats, token_entropy
from .modes import disable_dropout

KL_MODES = ("frozen", "policy")


class EntropyPPOTrainer(PPOTrainer):
    """``PPOTrainer`` whose loss adds a token-entropy and a batch-entropy bonus."""

    def __init__(self, *args, token_entropy_coef: float = 0.0, batch_entropy_coef: float = 0.0,
                 entropy_positions: str = "first", **kwargs):
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
