"""Where the runs execute: local processes (the default) or a Dask distributed cluster.

A run is one papermill execution of a notebook into its run folder (a ``Job``). An executor takes
the jobs, runs them in parallel and yields ``(job, outcome)`` as each finishes:

    with LocalProcesses(jobs=2) as ex:                    # subprocesses on this machine
        for job, outcome in ex.run(jobs): ...
    with DaskCluster("tcp://host:8786") as ex: ...        # an existing Dask scheduler
    with DaskCluster("local", jobs=2) as ex: ...          # a LocalCluster started here

Shared filesystem. Dask workers execute a run exactly as a local process does: they read the
notebook from the repository and write ``results/<experiment>/<run>/`` (and the model cache)
themselves, at the same absolute paths as the client. Nothing but the job description and a small
outcome travels over the network, so the repository, its ``.venv``, ``results/`` and ``.cache/``
must be on a filesystem every worker mounts at the same path (a home or project directory on a
SLURM cluster). A worker that cannot see the notebook fails that run with a message saying so.

Faults. A run that fails keeps ``notebook.partial.ipynb`` and ``papermill.log``; only success
renames the executed notebook to its final name, so a failed, killed or interrupted run never looks
complete. A run whose notebook fails is not retried (tasks are submitted with ``retries=0``). A run
whose worker dies is retried once on another worker: Dask hands runs to workers ahead of time, so
a dying worker takes its queued runs down with the one it executes, and one retry lets those go on.
``--dask-scheduler local`` starts its scheduler with ``allowed_failures=1``; for a cluster of your
own, set ``distributed.scheduler.allowed-failures`` where the scheduler starts (its default is 3;
the README's SLURM recipe sets 1). A retry starts the run afresh in the same folder; if that worker
dies too, the run fails (``KilledWorker``) and stays incomplete, and the other runs go on. Every
papermill process watches its parent and kills itself and its kernel when the process that started
it (runner or Dask worker) is gone, so a dead worker leaves no orphan writing into a run folder.
Ctrl-C (or SIGTERM) stops cleanly: queued runs are cancelled, running papermill processes and their
kernels are killed, the Dask client and a local cluster are closed.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import yaml

CONNECT_TIMEOUT_S = 10    # an unreachable scheduler fails after this long
POLL_S = 0.5              # how often a running papermill is checked (exit, stop request)
# jupyter_client can lose a race for a kernel's ports when kernels start at the same moment; the kernel
# then dies before its first reply and no cell has run, so the run is simply started again
KERNEL_START_FAILED = "Kernel died before replying to kernel_info"
START_ATTEMPTS = 2
DASK_STOP_POLL_S = 2.0    # how often a Dask task asks the scheduler whether the client asked to stop
FORWARDED_ENV = ("HF_HUB_OFFLINE", "PYTHONWARNINGS")  # plus every RLFORMAL_* variable of the client
ALLOWED_FAILURES = 1      # a LocalCluster reruns a run once when its worker dies (see the module docstring)


@dataclass(frozen=True)
class Job:
    """One papermill execution: ``notebook`` into ``out_dir``, renamed to ``final_name`` on success."""
    name: str                   # what progress lines and logs call it, e.g. "arithmetic/group_..._s0"
    notebook: str               # absolute path of the source notebook
    out_dir: str                # absolute path of the folder the executed copy (and the run) goes to
    params: dict                # papermill parameters
    final_name: str             # the executed notebook's name once it succeeded
    threads: int | None = None  # torch/BLAS threads; None: the Dask worker decides (its cores / its slots)
    thread_param: str | None = "torch_threads"  # the notebook parameter that receives the thread count
    env: tuple = ()             # (name, value) pairs set for the notebook (the client's RLFORMAL_* etc.)
    prefix: str = ""            # of its notebook.partial.ipynb and papermill.log, when jobs share out_dir


@dataclass
class Outcome:
    ok: bool
    seconds: float
    error: str = ""
    where: str = ""             # the host (and Dask worker) that ran it
    threads: int = 0
    cpus: int = 0               # cores usable where it ran


def forwarded_env() -> tuple:
    """The variables of this process that a run must see wherever it executes."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("RLFORMAL_") or k in FORWARDED_ENV))


def checkout_first(pythonpath: str | None) -> str:
    """``PYTHONPATH`` with the root of the checkout this code comes from in front: a notebook kernel
    then imports ``rlformal_utils`` from here, not from wherever the shared ``.venv`` installed it
    (an editable install points at the clone that created the venv)."""
    from .runs import REPO_ROOT
    rest = [p for p in (pythonpath or "").split(os.pathsep) if p and p != str(REPO_ROOT)]
    return os.pathsep.join([str(REPO_ROOT), *rest])


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what a SLURM job or taskset allows, not the whole node
    except AttributeError:  # macOS
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- one papermill execution
def execute(job: Job, should_stop: Callable[[], bool] | None = None) -> Outcome:
    """Run papermill for ``job`` in a subprocess; rename the executed copy only on success.

    ``should_stop`` is polled while papermill runs; when it returns true (or this thread is
    interrupted) papermill and its kernel are killed and the run stays incomplete."""
    out_dir, threads = Path(job.out_dir), job.threads or 1
    out_dir.mkdir(parents=True, exist_ok=True)
    partial, log = out_dir / f"{job.prefix}notebook.partial.ipynb", out_dir / f"{job.prefix}papermill.log"
    params = dict(job.params, **({job.thread_param: threads} if job.thread_param else {}))
    env = dict(os.environ, **dict(job.env))
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
               HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1"),
               RLFORMAL_PROGRESS="lines",  # a few summary lines, not bar refreshes, in executed notebooks
               PYTHONPATH=checkout_first(env.get("PYTHONPATH")))
    papermill = [job.notebook, str(partial), "--cwd", str(Path(job.notebook).parent), "--no-progress-bar",
                 "--log-level", "WARNING", "--start-timeout", "600", "-y", yaml_params(params)]
    # papermill runs under a small wrapper that kills it (and its kernel) if this process dies, and in
    # its own session, so that a Ctrl-C in the terminal reaches the runner only and the runner decides
    cmd = [sys.executable, "-m", "rlformal_utils.executors", "--child-of", str(os.getpid()), *papermill]
    t = time.time()
    for _ in range(START_ATTEMPTS):  # a kernel that dies before it answers has run nothing: start again
        rc = _launch(cmd, env, log, should_stop)
        if rc in (0, None) or KERNEL_START_FAILED not in log.read_text(errors="replace"):
            break
    seconds = time.time() - t
    if rc == 0:
        clean_executed(partial)
        os.replace(partial, out_dir / job.final_name)
        log.unlink(missing_ok=True)
        return Outcome(True, seconds, threads=threads, cpus=usable_cpus())
    if rc is None:
        return Outcome(False, seconds, "stopped before it finished", threads=threads, cpus=usable_cpus())
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    return Outcome(False, seconds, " | ".join(tail), threads=threads, cpus=usable_cpus())


def _launch(cmd: list[str], env: dict, log: Path, should_stop) -> int | None:
    """One papermill process, its output in ``log``; its exit code (None: stopped)."""
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return _wait(proc, should_stop)
        except BaseException:
            kill_tree(proc.pid)
            raise


def _wait(proc: subprocess.Popen, should_stop) -> int | None:
    """The exit code of ``proc``, or None after killing it because ``should_stop()`` said so."""
    while True:
        try:
            return proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            if should_stop is not None and should_stop():
                kill_tree(proc.pid)
                return None


def kill_tree(pid: int) -> None:
    """Kill ``pid`` and every process below it (papermill, its kernel, the kernel's workers)."""
    import psutil
    try:
        top = psutil.Process(pid)
        procs = top.children(recursive=True) + [top]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


VOLATILE = ("start_time", "end_time", "duration", "input_path", "output_path", "environment_variables")


def clean_executed(path: Path) -> None:
    """Drop what changes on every execution (timestamps, durations, absolute paths) from an executed
    notebook, so that a rerun with the same results leaves ``git status`` clean."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for meta in [nb.metadata] + [c.metadata for c in nb.cells]:
        for key in VOLATILE:
            meta.get("papermill", {}).pop(key, None)
        meta.pop("execution", None)
    for cell in nb.cells:  # papermill gives the cell it injects a new random id every time
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = "injected-parameters"
    nbformat.write(nb, path)


def yaml_params(params: dict) -> str:
    """Parameters as YAML for papermill's ``-y``. PyYAML writes 1e-05 as 1.0e-05, which YAML reads
    back as a float (a JSON dump would give ``1e-05``, which YAML reads as a string)."""
    return yaml.safe_dump(params, default_flow_style=True, width=10_000).strip()


# ----------------------------------------------------------------------------- local processes
class LocalProcesses:
    """``jobs`` papermill subprocesses at a time on this machine."""

    def __init__(self, jobs: int):
        self.slots = jobs
        self.name = "local"
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self):
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="papermill")
        return self

    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, Outcome]]:
        futures = {self._pool.submit(execute, job, self._stop.is_set): job for job in jobs}
        for fut in as_completed(futures):
            try:
                outcome = fut.result()
            except Exception as e:  # e.g. the run folder cannot be written
                outcome = Outcome(False, float("nan"), f"{type(e).__name__}: {e}")
            outcome.where = outcome.where or socket.gethostname()
            yield futures[fut], outcome

    def describe(self) -> dict:
        return dict(executor=self.name, jobs=self.slots, cpu_count=os.cpu_count())

    def __exit__(self, *exc):
        self._stop.set()  # running papermill processes are killed within POLL_S; queued runs never start
        self._pool.shutdown(wait=True, cancel_futures=True)
        return False


# ----------------------------------------------------------------------------- Dask
class SchedulerUnreachable(RuntimeError):
    pass


class DaskCluster:
    """Send each run to a Dask distributed cluster: an existing scheduler (``tcp://host:port``) or,
    with ``"local"``, a LocalCluster of ``jobs`` single-threaded worker processes on this machine."""

    def __init__(self, address: str, jobs: int = 1, connect_timeout: float = CONNECT_TIMEOUT_S):
        self.address, self.local = address, address == "local"
        self.name = "dask-local" if self.local else f"dask {address}"
        self.slots = jobs if self.local else 0  # a remote cluster's slots are its workers' threads, seen at run time
        self.connect_timeout = connect_timeout
        self._cluster = self._client = self._stop = None
        self._futures: list = []
        self._seen_cpus: dict[str, int] = {}

    def __enter__(self):
        import distributed
        if self.local:
            # the worker processes ignore Ctrl-C (they inherit SIG_IGN): the runner stops them in order
            main = threading.current_thread() is threading.main_thread()
            old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
            try:
                self._cluster = distributed.LocalCluster(
                    n_workers=self.slots, threads_per_worker=1, processes=True, dashboard_address=None,
                    memory_limit=0,  # the memory is the papermill subprocesses', not the workers'
                    scheduler_kwargs={"allowed_failures": ALLOWED_FAILURES}, silence_logs=logging.ERROR)
            finally:
                if main:
                    signal.signal(signal.SIGINT, old)
            self._client = distributed.Client(self._cluster)
        else:
            try:
                self._client = distributed.Client(self.address, timeout=self.connect_timeout)
            except (OSError, ValueError) as e:
                raise SchedulerUnreachable(
                    f"cannot reach the Dask scheduler at {self.address} within {self.connect_timeout:g} s ({e}). "
                    "Is it running, and is the address its tcp://host:port (e.g. dask-jobqueue's "
                    "cluster.scheduler_address)? Nothing was run.") from None
        self._stop = distributed.Event(f"rlformal-stop-{uuid.uuid4().hex}", client=self._client)
        return self

    def run(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, Outcome]]:
        import distributed
        jobs = list(jobs)
        token = uuid.uuid4().hex[:8]
        futures = {self._client.submit(run_on_worker, job, self._stop.name, key=f"{job.name}-{token}",
                                       pure=False, retries=0): job for job in jobs}
        self._futures = list(futures)
        for fut in distributed.as_completed(self._futures):
            if not self.local:
                self.slots = max(self.slots, sum(self._client.nthreads().values()))
            try:
                outcome = fut.result()
            except Exception as e:  # KilledWorker (the worker died mid-run), an error raised on the worker
                outcome = Outcome(False, float("nan"), f"{type(e).__name__}: {e}")
            if outcome.where:
                self._seen_cpus[outcome.where] = outcome.cpus
            yield futures[fut], outcome

    def describe(self) -> dict:
        cpus = os.cpu_count() if self.local else sum(self._seen_cpus.values())
        return dict(executor=self.name, jobs=self.slots, cpu_count=cpus)

    def __exit__(self, exc_type, *exc):
        if self._client is not None:
            pending = [f for f in self._futures if not f.done()]
            if pending:  # interrupted: running tasks see the event and kill their papermill; queued ones go
                try:
                    self._stop.set()
                    self._client.cancel(pending)
                except Exception:
                    pass
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        return False


def run_on_worker(job: Job, stop_event: str | None = None) -> Outcome:
    """The Dask task: one run, executed on the worker as a local process would (see ``execute``)."""
    import distributed
    worker = distributed.get_worker()
    where = f"{socket.gethostname()} {worker.address}"
    if not Path(job.notebook).exists():
        raise FileNotFoundError(f"worker {where} cannot see {job.notebook}: the Dask executor needs the repository "
                                "and results/ on a filesystem shared by the client and the workers, at the same path")
    if job.threads is None:
        job = replace(job, threads=max(1, usable_cpus() // max(1, worker.state.nthreads)))
    outcome = execute(job, _stop_poller(stop_event) if stop_event else None)
    outcome.where = where
    return outcome


def _stop_poller(name: str) -> Callable[[], bool]:
    """A ``should_stop`` for a Dask task: is the client's stop event set? (asked every few seconds)"""
    import distributed
    event, last = distributed.Event(name), [0.0]

    def should_stop() -> bool:
        if time.time() - last[0] < DASK_STOP_POLL_S:
            return False
        last[0] = time.time()
        try:
            return event.is_set()
        except Exception:  # scheduler gone: the worker closes soon, and the papermill watchdog follows
            return False
    return should_stop


# ----------------------------------------------------------------------------- the papermill wrapper
def exit_with_parent(parent: int) -> None:
    """Kill this process and everything below it when ``parent`` is no longer its parent (a papermill
    run, a games reward worker: never outlive the process that started it, even mid-compile)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        import psutil
        for p in psutil.Process().children(recursive=True):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


if __name__ == "__main__":  # python -m rlformal_utils.executors --child-of PID <papermill arguments>
    import runpy
    if sys.argv[1:2] != ["--child-of"]:
        sys.exit("usage: python -m rlformal_utils.executors --child-of PID <papermill arguments>")
    exit_with_parent(int(sys.argv[2]))
    sys.argv = ["papermill", *sys.argv[3:]]
    # jsonschema (under nbformat) imports rfc3987_syntax when it is installed, and that builds a grammar
    # at import: ~0.9 s of every run. Notebook validation never checks an IRI format, so skip the import.
    sys.modules["rfc3987_syntax"] = None
    runpy.run_module("papermill", run_name="__main__", alter_sys=True)
