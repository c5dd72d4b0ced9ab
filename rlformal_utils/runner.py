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
import importlib
import os
import signal
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

from tqdm.auto import tqdm

from .executors import DaskCluster, Job, LocalProcesses, Outcome, SchedulerUnreachable, execute, forwarded_env
from .grid import Run
from .runs import REPO_ROOT, is_complete

NOTEBOOKS = REPO_ROOT / "notebooks"

# ----------------------------------------------------------------------------- the experiments
# Each experiment declares its runs per profile in rlformal_utils/<experiment>/grid.py: runs(profile).
EXPERIMENTS = {"arithmetic": "rlformal_utils.arithmetic.grid", "sentiment": "rlformal_utils.sentiment.grid",
               "games": "rlformal_utils.games.grid"}
FIGURE_NOTEBOOKS = {"arithmetic": "arithmetic_figures.ipynb", "sentiment": "sentiment_figures.ipynb",
                    "games": "games_figures.ipynb"}
# What ./run_all.sh runs without --only.
DEFAULT_EXPERIMENTS = ["arithmetic", "sentiment", "games"]


PROFILES = ["quick", "paper", "long", "smoke", "classroom"]  # classroom: minutes, results/classroom/


def runs_for(experiment: str, profile: str) -> list[Run]:
    """The runs of one experiment in a profile; none when the experiment does not take part in it."""
    import importlib
    return importlib.import_module(EXPERIMENTS[experiment]).runs(profile)


# ----------------------------------------------------------------------------- execution
# Assumed, not measured (no GPU here): how many times faster one GPU runs a paper-profile run than
# one reference CPU thread, as a range (it depends on the GPU and the batch). The games reward
# (ludax playouts, JAX on CPU) gets no speed-up, and it was 88 % of a quick-profile PPO step.
GPU_SPEEDUP = {"arithmetic": (10, 50), "sentiment": (10, 50), "games": (1, 2)}


def _rel(path: Path) -> str:
    """A path as the notebooks (which run in notebooks/) see it: relative, so executed notebooks
    carry no absolute paths of the machine that ran them."""
    return os.path.relpath(path, NOTEBOOKS)


def changed_params(experiment: str, params: dict) -> dict:
    """The parameters that differ from the notebook's defaults (a test holds the notebooks' parameter
    cells equal to ``<experiment>/params.py``): the cell papermill injects into an executed copy then
    shows what makes the run what it is, and the notebook's own defaults fill in the rest."""
    declared = importlib.import_module(f"rlformal_utils.{experiment}.params").PARAMS
    default = {p.name: p.default for p in declared}
    return {k: v for k, v in params.items()
            if k not in default or type(v) is not type(default[k]) or v != default[k]}


def run_job(run: Run, results: Path, threads: int | None) -> Job:
    """The papermill execution of one run into its folder under ``results``."""
    out = run.out_dir(results)
    return Job(f"{run.experiment}/{run.name}", str(NOTEBOOKS / f"{run.experiment}.ipynb"), str(out),
               dict(changed_params(run.experiment, run.params), output_dir=_rel(out)), f"{run.experiment}.ipynb",
               threads, env=forwarded_env())


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
          "rlformal_utils/<experiment>/grid.py; base-model pretraining on first use comes on top.")
    if slots:
        wall = sum(r.estimate_s for r in todo) / slots
        print(f"estimated wall time here with {slots} job(s): "
              + (f"{wall / 60:.0f} min" if wall < 7200 else f"{wall / 3600:.0f} h"))
    if gpu:
        print("GPU-h: one GPU running the runs one after another. ASSUMED, not measured, speed-up of one GPU\n"
              "  over one CPU thread: " + ", ".join(f"{e} {a}-{b}x" for e, (a, b) in GPU_SPEEDUP.items()
                                                   if e in experiments) + " (the games reward runs on CPU).\n"
              "  No paper-profile run has been made on a GPU, and its per-run costs are extrapolated from\n"
              "  the small models (SIZE_FACTOR, step_s in rlformal_utils/<experiment>/grid.py), not measured.")


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
                         "long: longer arithmetic runs (diagnostic); smoke: seconds, for tests; "
                         "classroom: each experiment's effect in a few minutes (docs/teaching.md)")
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
    if not args.no_figures and refreshes_findings(args.profile, results):
        from .findings import refresh
        print(f"findings: {', '.join(refresh(REPO_ROOT)) or 'unchanged'}")
    print(f"total {(time.time() - t0) / 60:.1f} min; figures in {figures}, tables in {results}")
    return 1 if failed else 0


def refreshes_findings(profile: str, results: Path) -> bool:
    """The README's findings describe the quick and long profiles' own results: never a classroom or
    smoke run, never a --results-dir elsewhere."""
    return profile in ("quick", "long") and Path(results).resolve() in (REPO_ROOT / "results", REPO_ROOT / "results" / "long")


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
