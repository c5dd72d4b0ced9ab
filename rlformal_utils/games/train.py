"""RL from the playout reward: sample middles, cut, rebuild, score, and update: trl's ``PPOTrainer.step``
(one middle per prompt), or the group-relative update of ``rlformal_utils.group_lm`` (k middles per
prompt, advantages within each prompt's group, KL to the frozen SFT model)."""
from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from .. import devices
from ..ppo import make_trainer as make_ppo_trainer
from ..progress import Progress
from ..runs import set_seed
from .evaluate import score_middles
from .fim import FimExample
from .lm import encode_prompt, generate_middles


def ppo_prompts(examples: list[FimExample], ppo_games: list[str]) -> list[FimExample]:
    """The training examples that supply PPO prompts: those of ``ppo_games``, or all when it is empty."""
    return [e for e in examples if not ppo_games or e.game in ppo_games]


def make_trainer(config: dict, sft_dir, tokenizer, device="cpu"):
    """trl's PPOTrainer (with the entropy terms of ``rlformal_utils.ppo``) around the SFT model, or
    with ``algorithm="group"`` the group-relative trainer (``make_group_trainer``); seeds everything
    first, so the run's sampling does not depend on what ran before."""
    c = config
    set_seed(c["seed"])
    if c.get("algorithm", "ppo") == "group":
        return make_group_trainer(config, sft_dir, tokenizer, device)
    if c.get("lora_rank"):
        return make_lora_ppo_trainer(config, sft_dir, tokenizer, device)
    return make_ppo_trainer(str(sft_dir), tokenizer, learning_rate=c["ppo_lr"], batch_size=c["ppo_batch_size"],
                            mini_batch_size=c["ppo_mini_batch_size"], ppo_epochs=c["ppo_epochs"],
                            kl_mode=c["kl_mode"], kl_coef=c["kl_coef"], adaptive_kl=c["adaptive_kl"],
                            token_entropy_coef=c["token_entropy_coef"],
                            batch_entropy_coef=c["batch_entropy_coef"], seed=c["seed"], **devices.trl_kwargs(device))


def make_lora_ppo_trainer(config: dict, sft_dir, tokenizer, device="cpu"):
    """trl's PPOTrainer around the merged SFT model with fresh LoRA adapters (rank ``lora_rank``) on
    every linear layer and a value head: only adapters and value head train, and trl's KL reference,
    the model with its adapter disabled, is exactly the SFT model (no second copy is kept).
    ``kl_mode="policy"`` makes the policy its own reference (KL always 0), as without LoRA."""
    import json

    from trl import AutoModelForCausalLMWithValueHead, PPOConfig

    from ..modes import disable_dropout
    from ..ppo import EntropyPPOTrainer
    from .lm import lora_config
    c = config
    model_type = json.loads((Path(sft_dir) / "config.json").read_text()).get("model_type")
    torch.manual_seed(c["seed"])  # the LoRA and value-head initialisations
    model = disable_dropout(AutoModelForCausalLMWithValueHead.from_pretrained(
        str(sft_dir), peft_config=lora_config(c["lora_rank"], model_type)))
    ppo_config = PPOConfig(learning_rate=c["ppo_lr"], batch_size=c["ppo_batch_size"],
                           mini_batch_size=c["ppo_mini_batch_size"], ppo_epochs=c["ppo_epochs"],
                           init_kl_coef=c["kl_coef"], adap_kl_ctrl=c["adaptive_kl"], seed=c["seed"],
                           **devices.trl_kwargs(device))
    return EntropyPPOTrainer(config=ppo_config, model=model, ref_model=model if c["kl_mode"] == "policy" else None,
                             tokenizer=tokenizer, token_entropy_coef=c["token_entropy_coef"],
                             batch_entropy_coef=c["batch_entropy_coef"])


class _Adapter:
    """Inside the context the LoRA policy computes with another adapter (no gradients meant); back after."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name

    def __enter__(self):
        self.model.set_adapter(self.name, inference_mode=True)

    def __exit__(self, *exc):
        self.model.set_adapter("default")


def make_group_trainer(config: dict, sft_dir, tokenizer, device="cpu"):
    """``group_lm.GroupLM`` around the SFT model, its KL reference the SFT model frozen. With LoRA the
    SFT adapter is loaded twice: "default" (trained) and "reference" (frozen; the trainer switches to it
    for the reference pass), so the reference is the SFT model, not the base with the adapter disabled.
    Full fine-tuning: a frozen second copy of the SFT model."""
    from transformers import AutoModelForCausalLM

    from ..group_lm import GroupLM, GroupLMConfig
    from .lm import load_base, sft_info
    c = config
    if sft_info(sft_dir)["lora_rank"]:
        from peft import PeftModel
        adapter = Path(sft_dir) / "adapter"
        model = PeftModel.from_pretrained(load_base(sft_dir, device), adapter, is_trainable=True)
        model.load_adapter(adapter, adapter_name="reference", is_trainable=False)
        model.set_adapter("default")
        reference = lambda: _Adapter(model, "reference")  # noqa: E731
    else:
        model = AutoModelForCausalLM.from_pretrained(sft_dir).to(device)
        reference = AutoModelForCausalLM.from_pretrained(sft_dir).to(device)
    cfg = GroupLMConfig(lr=c["ppo_lr"], epochs=c["group_epochs"], mini_batch_size=c["ppo_mini_batch_size"],
                        clip=c["clip"], kl_coef=c["kl_coef"], entropy_coef=c["batch_entropy_coef"])
    return GroupLM(model, cfg, tokenizer.pad_token_id, reference=reference)


def group_step(config: dict, trainer, tokenizer, batch: list[FimExample], rewarder, known: set[str]) -> dict:
    """One group-relative step: ``group_size`` middles for each prompt of ``batch``, scored, then the update."""
    c, k = config, config["group_size"]
    queries = [encode_prompt(tokenizer, e, c["context_chars"]) for e in batch]
    t = time.time()
    gens = generate_middles(trainer.model, tokenizer, [q for q in queries for _ in range(k)],
                            max_new_tokens=c["max_new_tokens"], batch_size=len(queries) * k)
    t_generate, t = time.time() - t, time.time()
    hits = rewarder.stats["cache_hits"]
    summary, rows = score_middles(rewarder, [e for e in batch for _ in range(k)], [g["middle"] for g in gens], known)
    t_reward, t = time.time() - t, time.time()
    rewards = torch.tensor([float(r["reward"]) for r in rows]).reshape(len(batch), k)
    stats = trainer.step(queries, [g["ids"] for g in gens], rewards)
    return dict(reward=summary["mean_reward"], compile_share=summary["compile_share"],
                playable_share=summary["playable_share"], exact_share=summary["exact_share"],
                novel_playable_share=summary["novel_playable_share"],
                middle_tokens=sum(len(g["ids"]) for g in gens) / len(gens), kl=stats["kl"], kl_coef=c["kl_coef"],
                loss_policy=stats["loss"], clipfrac=stats["clipfrac"], approxkl=stats["approxkl"],
                batch_entropy=stats["batch_entropy"], zero_advantage_groups=stats["zero_advantage_groups"],
                distinct_middles_per_prompt=len({(i // k, g["middle"]) for i, g in enumerate(gens)}) / len(batch),
                reward_cache_hits=rewarder.stats["cache_hits"] - hits,
                time_generate=t_generate, time_reward=t_reward, time_ppo_step=time.time() - t)


def train(config: dict, trainer, tokenizer, prompts: list[FimExample], rewarder, known: set[str], log) -> float:
    """``ppo_steps`` RL steps (PPO, or group-relative with ``algorithm="group"``: ``ppo_batch_size /
    group_size`` prompts a step) over ``prompts`` in shuffled passes; one metrics row per step
    (the batch's reward and shares, trl's statistics, the time of each phase). Returns the wall seconds."""
    c = config
    rng = random.Random(c["seed"])
    order: list[int] = []
    group = c.get("algorithm", "ppo") == "group"
    size = c["ppo_batch_size"] // c["group_size"] if group else c["ppo_batch_size"]
    bar = Progress(c["ppo_steps"], "group" if group else "PPO")
    t_start = time.time()
    for step in range(1, c["ppo_steps"] + 1):
        if len(order) < size:
            order += rng.sample(range(len(prompts)), len(prompts))
        batch, order = [prompts[i] for i in order[:size]], order[size:]
        if group:
            row = dict(step=step, **group_step(config, trainer, tokenizer, batch, rewarder, known))
            log.log(row)
            if step % 5 == 0:
                log.flush()
            bar.update(reward=row["reward"], playable=row["playable_share"])
            continue
        queries = [torch.tensor(encode_prompt(tokenizer, e, c["context_chars"])) for e in batch]
        t = time.time()
        gens = generate_middles(trainer.model, tokenizer, [q.tolist() for q in queries],
                                max_new_tokens=c["max_new_tokens"], batch_size=c["ppo_batch_size"])
        t_generate, t = time.time() - t, time.time()
        hits = rewarder.stats["cache_hits"]
        summary, rows = score_middles(rewarder, batch, [g["middle"] for g in gens], known)
        t_reward, t = time.time() - t, time.time()
        stats = trainer.step(queries, [g["ids"] for g in gens], [torch.tensor(float(r["reward"])) for r in rows])
        row = dict(step=step, reward=summary["mean_reward"], compile_share=summary["compile_share"],
                   playable_share=summary["playable_share"], exact_share=summary["exact_share"],
                   novel_playable_share=summary["novel_playable_share"],
                   middle_tokens=sum(len(g["ids"]) for g in gens) / len(gens),
                   kl=stats["objective/kl"], kl_coef=stats["objective/kl_coef"],
                   loss_policy=stats["ppo/loss/policy"], loss_value=stats["ppo/loss/value"],
                   clipfrac=stats["ppo/policy/clipfrac"], approxkl=stats["ppo/policy/approxkl"],
                   train_token_entropy=stats["ppo/policy/token_entropy"],
                   reward_cache_hits=rewarder.stats["cache_hits"] - hits,
                   time_generate=t_generate, time_reward=t_reward, time_ppo_step=time.time() - t)
        log.log(row)
        if step % 5 == 0:
            log.flush()
        bar.update(reward=row["reward"], playable=row["playable_share"])
    bar.close()
    return time.time() - t_start
