"""Where the time goes: PPO steps/s and samples/s on this machine, and the profile wall times.

    python -m rlformal_utils.benchmark                      # quick size (tiny, batch 64) and the paper size
    python -m rlformal_utils.benchmark --sizes tiny small --steps 20 --threads 1

Prints numbers; asserts nothing (speed targets are not tests). The paper size (GPT-2 small
config, batch 128) takes about a minute per step on 2 CPU cores, so it runs 2 steps by default.
"""
from __future__ import annotations

import argparse
import csv
import random
import tempfile
import time
import warnings
from pathlib import Path

import torch

from . import arithmetic as A
from .arithmetic_rl import banned_ids, evaluate, prompt_tensors
from .ppo import make_trainer, next_token_logits, sample_one_token
from .pretrain import build_gpt2
from .runs import REPO_ROOT, set_seed

DEFAULTS = {"tiny": (64, 20), "small": (64, 10), "medium": (64, 5), "gpt2-small": (128, 2)}  # batch, steps


def bench_ppo(size: str, batch: int, steps: int) -> dict:
    set_seed(0)
    tok = A.make_tokenizer()
    train, heldout = A.make_splits(batch * (steps + 1), 512, seed=0)
    with tempfile.TemporaryDirectory() as d:
        build_gpt2(size, tok).save_pretrained(d)
        tok.save_pretrained(d)
        trainer = make_trainer(d, tok, learning_rate=1e-4, batch_size=batch, mini_batch_size=batch,
                               ppo_epochs=4, kl_mode="frozen", batch_entropy_coef=0.3)
    times = {"generate": 0.0, "reward": 0.0, "trl_forward": 0.0, "trl_optimize": 0.0, "trl_step": 0.0}
    for step in range(steps + 1):  # step 0 warms up
        batch_problems = train[step * batch:(step + 1) * batch]
        t = time.perf_counter()
        q = prompt_tensors(tok, batch_problems)
        answers = sample_one_token(next_token_logits(trainer.model, q), banned_ids(tok))
        t_gen = time.perf_counter() - t
        t = time.perf_counter()
        words = tok.convert_ids_to_tokens(answers.tolist())
        rewards = [torch.tensor(A.reward(f"{p.prompt} {w}")) for p, w in zip(batch_problems, words)]
        t_rew = time.perf_counter() - t
        t = time.perf_counter()
        stats = trainer.step(q, [a[None] for a in answers], rewards)
        t_step = time.perf_counter() - t
        if step:
            times["generate"] += t_gen; times["reward"] += t_rew; times["trl_step"] += t_step
            times["trl_forward"] += stats["time/ppo/forward_pass"]
            times["trl_optimize"] += stats["time/ppo/optimize_step"]
    t = time.perf_counter()
    evaluate(trainer.model, tok, heldout)
    eval_s = time.perf_counter() - t
    per_step = (times["generate"] + times["reward"] + times["trl_step"]) / steps
    return dict(size=size, params_M=sum(p.numel() for p in trainer.model.parameters()) / 1e6, batch=batch,
                steps=steps, s_per_step=per_step, steps_per_s=1 / per_step, samples_per_s=batch / per_step,
                **{f"{k}_s": v / steps for k, v in times.items()}, eval_512_s=eval_s)


def profile_wall_times(results: Path) -> None:
    for log in sorted(results.rglob("runner_log.csv")):
        rows = [r for r in csv.DictReader(open(log)) if r["ok"] == "True"]
        if not rows:
            continue
        by_exp: dict[str, list[float]] = {}
        for r in rows:
            by_exp.setdefault(r["experiment"], []).append(float(r["wall_seconds"]))
        for exp, secs in by_exp.items():
            jobs = int(rows[-1]["jobs"])
            print(f"{log.parent.relative_to(REPO_ROOT)} {exp}: {len(secs)} runs, {sum(secs) / 60:.1f} run-minutes, "
                  f"mean {sum(secs) / len(secs):.0f} s/run; with {jobs} jobs ≈ {sum(secs) / jobs / 60:.1f} min wall")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", default=["tiny", "gpt2-small"], choices=list(DEFAULTS))
    ap.add_argument("--steps", type=int, help="PPO steps to time (default per size)")
    ap.add_argument("--batch", type=int, help="PPO batch size (default: 64, 128 for gpt2-small)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for size in args.sizes:
        batch, steps = DEFAULTS[size]
        r = bench_ppo(size, args.batch or batch, args.steps or steps)
        print(f"{r['size']:>10} ({r['params_M']:.1f}M params) batch {r['batch']}: {r['s_per_step']:.2f} s/step = "
              f"{r['steps_per_s']:.2f} steps/s, {r['samples_per_s']:.0f} samples/s | per step: generate "
              f"{r['generate_s']:.3f} s, reward {r['reward_s']:.3f} s, trl step {r['trl_step_s']:.2f} s "
              f"(forward+reference {r['trl_forward_s']:.2f} s, optimize {r['trl_optimize_s']:.2f} s) | "
              f"held-out eval of 512: {r['eval_512_s']:.2f} s", flush=True)
    profile_wall_times(REPO_ROOT / "results")


if __name__ == "__main__":
    main()
