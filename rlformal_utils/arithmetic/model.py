"""The weak base model: a small GPT-2 pretrained from scratch on solved chains, cached by its config."""
from __future__ import annotations

import math

from transformers import GPT2LMHeadModel

from ..modes import disable_dropout
from ..pretrain import build_gpt2, train_lm
from ..runs import cached_dir
from . import task

ACTIVATION = "gelu_pytorch_tanh"  # GPT-2's gelu, fused: the same function, ~13 % less time per PPO step


def pretrain_steps(config: dict) -> int:
    """Optimizer steps of pretraining; 0 in the config means one epoch (the paper's budget)."""
    return config["pretrain_steps"] or math.ceil(config["pretrain_examples"] / config["pretrain_batch_size"])


def base_model_dir(config: dict, chains: list[task.Problem], tokenizer):
    """Folder of the pretrained base model, built once per configuration (``.cache/arithmetic-base``)."""
    key = dict(task="arithmetic", vocab=task.VOCAB, model_size=config["model_size"],
               examples=config["pretrain_examples"], steps=pretrain_steps(config),
               batch_size=config["pretrain_batch_size"], lr=config["pretrain_lr"],
               seed=config["pretrain_seed"], data_seed=config["data_seed"], splits="unseen-pairs-v1",
               activation=ACTIVATION)

    def build(folder):
        model = build_gpt2(config["model_size"], tokenizer, seed=config["pretrain_seed"], activation=ACTIVATION)
        losses = train_lm(model, [task.encode_chain(tokenizer, p) for p in chains], tokenizer.pad_token_id,
                          steps=key["steps"], batch_size=key["batch_size"], lr=key["lr"], seed=key["seed"])
        print(f"pretrained {key['steps']} steps on {len(chains)} chains, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return cached_dir("arithmetic-base", key, build)


def load_policy(folder) -> GPT2LMHeadModel:
    """The base model as a policy: dropout disabled, eval mode."""
    return disable_dropout(GPT2LMHeadModel.from_pretrained(folder)).eval()
