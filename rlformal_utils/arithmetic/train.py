"""The training loop of one arithmetic run: any algorithm, either engine, evaluations on a
log-spaced schedule of answers seen, one metrics row per logged step."""
from __future__ import annotations

import random
import time

import numpy as np
import torch

from .. import devices, one_token
from ..modes import eval_mode
from ..progress import Progress
from . import task
from .evaluate import answer_stats, banned_ids, evaluate
from .model import load_policy
from .params import answers_per_step, entropy_coefs
from .reward import reward, reward_table


def eval_schedule(steps: int, n_evals: int) -> set[int]:
    """Steps after which to evaluate: n_evals points spaced evenly in log(step), always the last."""
    if steps == 0:
        return set()
    points = np.unique(np.round(np.geomspace(1, steps, n_evals)).astype(int))
    return set(points.tolist()) | {steps}


def prompt_encoder(tokenizer):
    """``prompt_tensors(tokenizer, problems)`` with the vocabulary looked up in a dict: the same ids
    ([BOS] + the prompt's words, unknown words as the tokenizer's unk id) without the tokenizer's
    per-word calls, which cost about as much as a PPO step's sampling and scoring together."""
    vocab, bos, unk = tokenizer.get_vocab(), tokenizer.bos_token_id, tokenizer.unk_token_id
    return lambda problems: [torch.tensor([bos] + [vocab.get(w, unk) for w in p.prompt.split()]) for p in problems]


def evaluate_sets(model, tokenizer, sets: dict, seed: int) -> tuple[dict, dict]:
    """Evaluate on every named problem set: a flat metrics row and the full results."""
    full = {name: evaluate(model, tokenizer, problems, seed=seed) for name, problems in sets.items()}
    row = {f"{name}_{k}": v for name, res in full.items() for k, v in res.items() if not k.endswith("answers")}
    return row, full


class _TrlEngine:
    """trl 0.11.4's own ``PPOTrainer.step`` (slow; kept to check the fast path against)."""

    def __init__(self, config, policy_dir, tokenizer, device):
        from ..ppo import make_trainer
        c_tok, c_batch = entropy_coefs(config)
        self.trainer = make_trainer(
            str(policy_dir), tokenizer, learning_rate=config["rl_lr"], batch_size=config["prompts_per_step"],
            mini_batch_size=config["mini_batch_size"] or config["prompts_per_step"], ppo_epochs=config["epochs"],
            kl_mode=config["kl_reference"], kl_coef=config["kl_coef"], adaptive_kl=config["kl_controller"] != "fixed",
            target=kl_target(config),
            token_entropy_coef=c_tok, batch_entropy_coef=c_batch, seed=config["seed"], **devices.trl_kwargs(device))
        self.model = self.trainer.model.pretrained_model

    def step(self, prompts, answers, problems, words):
        rewards = [torch.tensor(reward(f"{p.prompt} {w}")) for p, w in zip(problems, words)]
        s = self.trainer.step(prompts, [a[None] for a in answers], rewards)
        return dict(kl=s["objective/kl"], kl_coef=s["objective/kl_coef"], loss_policy=s["ppo/loss/policy"],
                    loss_value=s["ppo/loss/value"], clipfrac=s["ppo/policy/clipfrac"],
                    approxkl=s["ppo/policy/approxkl"], value_var_explained=s["ppo/val/var_explained"],
                    train_token_entropy=s["ppo/policy/token_entropy"], train_batch_entropy=s["ppo/policy/batch_entropy"])


def kl_target(config: dict) -> float:
    """The KL target of the adaptive controllers: trl's own 6 nats, or ``kl_target``."""
    return one_token.PPOConfig.kl_target if config["kl_controller"] == "trl" else config["kl_target"]


def make_trainer(config: dict, policy_dir, tokenizer, device="cpu"):
    """The update named by ``config['algorithm']`` and ``config['engine']`` around a fresh policy on ``device``."""
    algorithm, c = config["algorithm"], config
    c_tok, c_batch = entropy_coefs(config)
    ban = banned_ids(tokenizer)
    torch.manual_seed(c["seed"])  # value-head init
    if algorithm == "ppo" and c["engine"] == "trl":
        return _TrlEngine(config, policy_dir, tokenizer, device)
    policy = load_policy(policy_dir).to(device)
    if algorithm == "group":
        kl_coef = c["kl_coef"] if c["kl_reference"] == "frozen" else 0.0
        cfg = one_token.GroupConfig(k=c["k"], epochs=c["epochs"], lr=c["rl_lr"], total_steps=c["steps"],
                                    std_normalise=c["std_normalise"], kl_coef=kl_coef, token_entropy_coef=c_tok,
                                    batch_entropy_coef=c_batch, mask_banned=c["mask_banned"])
        return one_token.GroupRelative(policy, cfg, ban)
    if algorithm == "ppo":
        cfg = one_token.PPOConfig(lr=c["rl_lr"], total_steps=c["steps"], ppo_epochs=c["epochs"],
                                  mini_batch_size=c["mini_batch_size"] or c["prompts_per_step"],
                                  init_kl_coef=c["kl_coef"], adaptive_kl=c["kl_controller"] != "fixed",
                                  kl_target=kl_target(c), token_entropy_coef=c_tok,
                                  batch_entropy_coef=c_batch, mask_banned=c["mask_banned"])
        return one_token.OneTokenPPO(policy, cfg, ban, kl_reference=c["kl_reference"])
    if algorithm == "supervised":
        return one_token.Supervised(policy, c["rl_lr"], c["steps"])
    return None  # "none": the base model, evaluated only


def train(config: dict, policy_dir, tokenizer, rl_problems: list[task.Problem], eval_sets: dict, log,
          device="cpu") -> dict:
    """Run the configured update for ``config['steps']`` steps with the policy on ``device``; log
    metrics rows to ``log``. Returns the trained model, the final evaluation and the time spent."""
    seed, P = config["seed"], config["prompts_per_step"]
    steps = 0 if config["algorithm"] == "none" else config["steps"]
    trainer = make_trainer(config, policy_dir, tokenizer, device)
    model = load_policy(policy_dir).to(device) if trainer is None else trainer.model
    ban = banned_ids(tokenizer)
    numbers = task.number_token_ids(tokenizer)
    encode = prompt_encoder(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    np.random.seed(seed)  # PPO's mini-batch shuffle (numpy, as in trl)
    order = list(range(len(rl_problems)))
    random.Random(seed).shuffle(order)
    evals, log_every = eval_schedule(steps, config["n_evals"]), max(1, steps // 200)

    row, _ = evaluate_sets(model, tokenizer, eval_sets, seed)
    log.log(dict(step=0, answers_seen=0, wall_seconds=0.0, cpu_seconds=0.0, **row))
    answers_seen, t0, c0 = 0, time.time(), time.process_time()
    bar = Progress(steps, f"{config['algorithm']} ({config['engine']})")
    for step in range(1, steps + 1):
        batch = [rl_problems[order[(j + (step - 1) * P) % len(order)]] for j in range(P)]
        prompts = encode(batch)
        table = reward_table([p.answer for p in batch], numbers, len(tokenizer))
        if config["algorithm"] == "group":
            stats = trainer.step(prompts, table, gen)
            logits = stats.pop("logits")
            answers, rewards = stats.pop("answers"), stats.pop("rewards")
        elif config["algorithm"] == "supervised":
            stats = trainer.step(prompts, torch.tensor([numbers[p.answer] for p in batch]))
            if step % log_every == 0 or step in evals:  # sample only to log what the model would answer
                with eval_mode(model):
                    logits = one_token.last_position(model, prompts)
                answers = one_token.sample(logits, 1, ban, gen)
                rewards = table.gather(1, answers)
        else:  # ppo
            if config["engine"] == "trl":
                with eval_mode(model):
                    logits = one_token.last_position(model, prompts)
            else:
                logits = trainer.rollout_logits(prompts)
            answers = one_token.sample(logits, 1, ban, gen)
            rewards = table.gather(1, answers)
            if config["engine"] == "trl":
                words = tokenizer.convert_ids_to_tokens(answers[:, 0].tolist())
                stats = trainer.step(prompts, answers[:, 0], batch, words)
            else:
                stats = trainer.step(prompts, answers[:, 0], rewards[:, 0])
        answers_seen += answers_per_step(config)
        if step % log_every and step not in evals:
            bar.update()
            continue
        bar.update(reward=round(rewards.mean().item(), 3))
        correct = torch.tensor([numbers[p.answer] for p in batch])[:, None]
        row = dict(step=step, answers_seen=answers_seen, wall_seconds=time.time() - t0,
                   cpu_seconds=time.process_time() - c0, reward=rewards.mean().item(),
                   exact_match=(answers == correct).float().mean().item(),
                   banned_mass=torch.softmax(logits, -1)[:, ban].sum(-1).mean().item(),
                   **{f"rollout_{k}": v for k, v in answer_stats(logits, tokenizer).items()},
                   **{k: v for k, v in stats.items() if k not in ("reward",)})
        if step in evals:
            row.update(evaluate_sets(model, tokenizer, eval_sets, seed)[0])
            log.flush()
        log.log(row)
    bar.close()
    wall, cpu = time.time() - t0, time.process_time() - c0
    _, final = evaluate_sets(model, tokenizer, eval_sets, seed)
    return dict(model=model, final=final, answers_seen=answers_seen, train_seconds=wall, train_cpu_seconds=cpu)
