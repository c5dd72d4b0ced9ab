"""PPO from the playout reward: sample a middle per prompt, cut, rebuild, score, and hand them to trl's ``PPOTrainer.step``."""
from __future__ import annotations

import random
import time

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
    """trl's PPOTrainer (with the entropy terms of ``rlformal_utils.ppo``) around the SFT model;
    seeds everything first, so the run's sampling does not depend on what ran before."""
    c = config
    set_seed(c["seed"])
    return make_ppo_trainer(str(sft_dir), tokenizer, learning_rate=c["ppo_lr"], batch_size=c["ppo_batch_size"],
                            mini_batch_size=c["ppo_mini_batch_size"], ppo_epochs=c["ppo_epochs"],
                            kl_mode=c["kl_mode"], kl_coef=c["kl_coef"], adaptive_kl=c["adaptive_kl"],
                            token_entropy_coef=c["token_entropy_coef"],
                            batch_entropy_coef=c["batch_entropy_coef"], seed=c["seed"], **devices.trl_kwargs(device))


def train(config: dict, trainer, tokenizer, prompts: list[FimExample], rewarder, known: set[str], log) -> float:
    """``ppo_steps`` PPO steps over ``prompts`` in shuffled passes; one metrics row per step
    (the batch's reward and shares, trl's statistics, the time of each phase). Returns the wall seconds."""
    c = config
    rng = random.Random(c["seed"])
    order: list[int] = []
    bar = Progress(c["ppo_steps"], "PPO")
    t_start = time.time()
    for step in range(1, c["ppo_steps"] + 1):
        if len(order) < c["ppo_batch_size"]:
            order += rng.sample(range(len(prompts)), len(prompts))
        batch, order = [prompts[i] for i in order[:c["ppo_batch_size"]]], order[c["ppo_batch_size"]:]
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
