"""Where the time goes in arithmetic RL: sampled answers per second of each engine on this machine.

    python -m rlformal_utils.arithmetic.benchmark                  # tiny GPT-2, batch 64, 1 thread
    python -m rlformal_utils.arithmetic.benchmark --size small --batch 128 --steps 10

Same model, same batch, same PPO updates (4 epochs, one mini-batch): trl 0.11.4's
``PPOTrainer.step`` (with our sampling) against the one-token PPO of ``rlformal_utils.one_token``,
plus the group-relative update (k answers per prompt from one forward pass), and how much of a
one-token PPO step is the model's own forward and backward passes. Prints numbers and asserts
nothing (speed targets are not tests).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from .. import one_token
from ..modes import eval_mode
from ..ppo import make_trainer
from ..pretrain import build_gpt2
from ..progress import quiet_libraries
from ..runs import set_seed
from . import task
from .evaluate import banned_ids, prompt_tensors
from .model import ACTIVATION
from .reward import reward, reward_table


def _batches(tok, batch: int, steps: int):
    problems = task.make_splits(batch * (steps + 1), 8, seed=0).train
    return [problems[i * batch:(i + 1) * batch] for i in range(steps + 1)]


def bench_trl(size, batch, steps, epochs) -> float:
    tok = task.make_tokenizer()
    with tempfile.TemporaryDirectory() as d:
        build_gpt2(size, tok, activation=ACTIVATION).save_pretrained(d)
        tok.save_pretrained(d)
        trainer = make_trainer(d, tok, learning_rate=1e-4, batch_size=batch, mini_batch_size=batch, ppo_epochs=epochs,
                               kl_mode="frozen")
    lm, ban, t = trainer.model.pretrained_model, banned_ids(tok), 0.0
    for i, problems in enumerate(_batches(tok, batch, steps)):  # step 0 warms up
        t0 = time.perf_counter()
        q = prompt_tensors(tok, problems)
        with eval_mode(lm):
            answers = one_token.sample(one_token.last_position(lm, q), 1, ban)[:, 0]
        words = tok.convert_ids_to_tokens(answers.tolist())
        rewards = [torch.tensor(reward(f"{p.prompt} {w}")) for p, w in zip(problems, words)]
        trainer.step(q, [a[None] for a in answers], rewards)
        t += (time.perf_counter() - t0) if i else 0.0
    return batch * steps / t


def bench_fast(size, batch, steps, epochs, algorithm, k=8) -> float:
    tok = task.make_tokenizer()
    model, ban, numbers = build_gpt2(size, tok, activation=ACTIVATION), banned_ids(tok), task.number_token_ids(tok)
    if algorithm == "ppo":
        trainer = one_token.OneTokenPPO(model, one_token.PPOConfig(lr=1e-4, mini_batch_size=batch, ppo_epochs=epochs,
                                                                   mask_banned=False),  # exactly trl's updates
                                        ban, kl_reference="frozen")
    else:
        trainer = one_token.GroupRelative(model, one_token.GroupConfig(k=k, epochs=2, lr=1e-3), ban)
    t = 0.0
    for i, problems in enumerate(_batches(tok, batch, steps)):
        t0 = time.perf_counter()
        q = prompt_tensors(tok, problems)
        table = reward_table([p.answer for p in problems], numbers, len(tok))
        if algorithm == "ppo":
            answers = one_token.sample(trainer.rollout_logits(q), 1, ban)
            trainer.step(q, answers[:, 0], table.gather(1, answers)[:, 0])
        else:
            trainer.step(q, table)
        t += (time.perf_counter() - t0) if i else 0.0
    return batch * steps * (k if algorithm == "group" else 1) / t


def ppo_step_split(size, batch, steps, epochs) -> tuple[float, float]:
    """CPU seconds per step of the one-token PPO (one mini-batch, KL 0 to the policy, as the quick
    profile's runs), and the share of it that is the model itself: ``epochs`` forward and backward
    passes over the same prompts. The rest is the update's own arithmetic, the optimizer and Python."""
    tok = task.make_tokenizer()
    model, ban, numbers = build_gpt2(size, tok, activation=ACTIVATION), banned_ids(tok), task.number_token_ids(tok)
    trainer = one_token.OneTokenPPO(model, one_token.PPOConfig(lr=3e-4, mini_batch_size=batch, ppo_epochs=epochs),
                                    ban, kl_reference="policy")
    step_cpu, passes_cpu = 0.0, 0.0
    for i, problems in enumerate(_batches(tok, batch, steps)):  # step 0 warms up
        q = prompt_tensors(tok, problems)
        table = reward_table([p.answer for p in problems], numbers, len(tok))
        t0 = time.process_time()
        answers = one_token.sample(trainer.rollout_logits(q), 1, ban)
        trainer.step(q, answers[:, 0], table.gather(1, answers)[:, 0])
        t1 = time.process_time()
        model.train()
        for _ in range(epochs):
            logits, hidden = one_token.last_position(model, q, with_hidden=True)
            (logits.logsumexp(-1).mean() + trainer.value_head(hidden).mean()).backward()
        model.zero_grad(set_to_none=True)
        model.eval()
        if i:
            step_cpu, passes_cpu = step_cpu + t1 - t0, passes_cpu + time.process_time() - t1
    return step_cpu / steps, passes_cpu / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(args.threads)
    set_seed(0)
    print(f"GPT-2 {args.size}, batch {args.batch}, {args.epochs} PPO epochs, {args.steps} timed steps, "
          f"{args.threads} thread(s)")
    trl = bench_trl(args.size, args.batch, args.steps, args.epochs)
    fast = bench_fast(args.size, args.batch, args.steps, args.epochs, "ppo")
    group = bench_fast(args.size, max(2, args.batch // 2), args.steps, args.epochs, "group")
    step, passes = ppo_step_split(args.size, args.batch, args.steps, args.epochs)
    print(f"trl PPOTrainer.step   {trl:8.0f} sampled answers/s")
    print(f"one-token PPO (fast)  {fast:8.0f} sampled answers/s   ({fast / trl:.1f}x trl, same updates)")
    print(f"group-relative, k=8   {group:8.0f} sampled answers/s   ({group / trl:.1f}x trl; "
          f"{max(2, args.batch // 2)} prompts x 8 answers, 2 epochs)")
    print(f"one-token PPO step    {1e3 * step:8.1f} CPU-ms, of which {args.epochs} forward+backward passes of the model "
          f"{1e3 * passes:.1f} ({100 * passes / step:.0f} %)")


if __name__ == "__main__":
    main()
