"""Scoring many descriptions: worker processes that can be killed at a timeout, and a cache keyed by the reward's version."""
from __future__ import annotations

import hashlib
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from ..executors import exit_with_parent
from . import reward as R
from .fim import normalise
from .reward import REWARD_FAILURE, REWARD_TIMEOUT, GameResult, _short, description_hash, evaluate_in_process

WORKER_MODULE = "rlformal_utils.games.rewarder"  # python -m rlformal_utils.games.rewarder --worker


def reward_cache_path() -> Path:
    """The reward cache the notebooks share: ``<cache>/games-rewards.jsonl`` (``RLFORMAL_CACHE``)."""
    from ..runs import CACHE_DIR
    return CACHE_DIR / "games-rewards.jsonl"


def _worker_main() -> None:
    """Worker loop (``python -m rlformal_utils.games.rewarder --worker``): JSON lines in on stdin, out on
    the original stdout; anything the engine prints goes to stderr. One evaluation at a time."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    exit_with_parent(os.getppid())
    R._prepare_ludax()
    R.set_board_cache(os.environ.get("RLFORMAL_BOARD_CACHE") or None)
    if os.environ.get("RLFORMAL_JAX_CACHE"):  # reuse XLA executables across processes and runs
        import jax
        jax.config.update("jax_compilation_cache_dir", os.environ["RLFORMAL_JAX_CACHE"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    if "--warmup" in sys.argv:  # pay jax's first-use costs before any clock starts
        from ludax import games
        evaluate_in_process(normalise(games.tic_tac_toe), n_playouts=2, max_turns=10)
    protocol.write('"ready"\n')
    protocol.flush()
    for line in sys.stdin:
        task = json.loads(line)
        if task is None:
            break
        protocol.write(json.dumps(asdict(evaluate_in_process(**task))) + "\n")
        protocol.flush()


class _Worker:
    """One worker subprocess with a line-based pipe protocol and a kill switch."""

    def __init__(self, warmup: bool, start_timeout: float, log_path: str | None = None,
                 jax_cache_dir: str | None = None, board_cache_dir: str | None = None):
        env = dict(os.environ, JAX_PLATFORMS="cpu",  # one CPU thread per worker, no GPU probing
                   RLFORMAL_JAX_CACHE=jax_cache_dir or "", RLFORMAL_BOARD_CACHE=board_cache_dir or "",
                   XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                              " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip())
        cmd = [sys.executable, "-m", WORKER_MODULE, "--worker"] + (["--warmup"] if warmup else [])
        self.log = open(log_path, "a") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=env, text=True, bufsize=1)
        self.tasks = 0
        if self.receive(start_timeout) != "ready":
            self.kill()
            raise RuntimeError("a ludax worker process did not start (set GameRewarder(log_path=...) to see why)")

    def send(self, obj) -> None:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float):
        """The next message, or None if none came within ``timeout`` seconds; EOFError if the
        worker died."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise EOFError(f"worker exited with code {self.proc.poll()}")
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        if self.log is not subprocess.DEVNULL:
            self.log.close()

    def close(self) -> None:
        try:
            self.send(None)
            self.proc.wait(10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()


class GameRewarder:
    """Batch reward evaluation with worker processes, a timeout and a cache.

    ``workers=0`` evaluates in this process (no timeout is possible then). ``cache_path``, if
    given, is a JSON-lines file that keeps results across sessions. ``jax_cache_dir`` is jax's
    persistent compilation cache for the workers ("default": ``.cache/jax``; None, the default: off).
    ``fast=False`` turns off the speed-ups that change no score (see ``reward.py``), including the
    on-disk board tables in ``board_cache_dir`` ("default": ``<cache>/ludax-boards``; None: off).
    Use as a context manager or call ``close()`` to stop the workers.
    """

    def __init__(self, workers: int = 1, timeout: float = 120.0, n_playouts: int = 100,
                 max_turns: int = 500, seed: int = 0, cache_path: str | os.PathLike | None = None,
                 max_tasks_per_worker: int = 40, warmup: bool = True, start_timeout: float = 300.0,
                 log_path: str | os.PathLike | None = None, jax_cache_dir: str | os.PathLike | None = None,
                 fast: bool = True, board_cache_dir: str | os.PathLike | None = "default"):
        self.workers, self.timeout = int(workers), float(timeout)
        self.settings = dict(n_playouts=int(n_playouts), max_turns=int(max_turns), seed=int(seed))
        self.max_tasks_per_worker = max_tasks_per_worker
        self.warmup, self.start_timeout = warmup, start_timeout
        self.log_path = str(log_path) if log_path else None
        if jax_cache_dir == "default":
            from ..runs import CACHE_DIR
            jax_cache_dir = CACHE_DIR / "jax"
        self.jax_cache_dir = str(jax_cache_dir) if jax_cache_dir else None
        self.fast = bool(fast)  # not part of the cache key: the scores are the same either way
        if board_cache_dir == "default":
            from ..runs import CACHE_DIR
            board_cache_dir = CACHE_DIR / "ludax-boards"
        self.board_cache_dir = str(board_cache_dir) if board_cache_dir and self.fast else None
        self.cache: dict[str, dict] = {}
        self.cache_path = Path(cache_path) if cache_path else None
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.cache[row.pop("key")] = row
                except (ValueError, KeyError):
                    continue  # a line cut by a killed process
        self._idle: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._started = 0
        self.busy_pids: set[int] = set()  # worker processes evaluating right now
        self.stats = dict(evaluated=0, cache_hits=0, timeouts=0, failures=0, seconds=0.0)

    # -- cache
    def key(self, description: str) -> str:
        blob = json.dumps(dict(self.settings, description=description, reward_version=R.REWARD_VERSION), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _store(self, key: str, result: GameResult) -> None:
        row = asdict(result)
        with self._lock:
            self.cache[key] = row
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps(dict(row, key=key)) + "\n")

    # -- workers
    def _get_worker(self) -> _Worker:
        while True:
            try:
                return self._idle.get(timeout=0.2)
            except queue.Empty:
                pass
            with self._lock:
                start = self._started < self.workers
                if start:
                    self._started += 1
            if start:
                try:
                    return _Worker(self.warmup, self.start_timeout, self.log_path, self.jax_cache_dir,
                                   self.board_cache_dir)
                except Exception:
                    with self._lock:
                        self._started -= 1
                    raise

    def _release(self, worker: _Worker | None) -> None:
        if worker is None:  # killed: a new one may be started in its place
            with self._lock:
                self._started -= 1
        else:
            self._idle.put(worker)

    def _run_one(self, description: str) -> GameResult:
        if self.workers == 0:
            return evaluate_in_process(description, fast=self.fast, **self.settings)
        worker = self._get_worker()
        pid = worker.proc.pid
        self.busy_pids.add(pid)
        t0 = time.perf_counter()
        try:
            worker.send(dict(description=description, fast=self.fast, **self.settings))
            reply = worker.receive(self.timeout)
            if reply is not None:
                result = GameResult(**reply)
                worker.tasks += 1
                if worker.tasks >= self.max_tasks_per_worker:  # bound the jax caches of a worker
                    worker.close()
                    worker = None
                return result
            worker.kill()
            worker = None
            self.stats["timeouts"] += 1
            return GameResult("timeout", REWARD_TIMEOUT, description_hash(description),
                              error=f"no result within {self.timeout:g} s", n_playouts=self.settings["n_playouts"],
                              seconds=time.perf_counter() - t0)
        except (EOFError, OSError, ValueError) as err:  # the worker died (crash, out of memory, killed)
            if worker is not None:
                worker.kill()
            worker = None
            self.stats["failures"] += 1
            return GameResult("failure", REWARD_FAILURE, description_hash(description),
                              error=f"worker died: {_short(err)}", seconds=time.perf_counter() - t0)
        finally:
            self.busy_pids.discard(pid)
            self._release(worker)

    # -- public
    def evaluate(self, descriptions: list[str], progress: bool = False) -> list[GameResult]:
        """One ``GameResult`` per description (in order); duplicates and cached ones are free."""
        keys = [self.key(d) for d in descriptions]
        todo = {}
        for k, d in zip(keys, descriptions):
            if k not in self.cache and k not in todo:
                todo[k] = d
        t0 = time.perf_counter()
        if todo:
            from concurrent.futures import ThreadPoolExecutor

            from ..progress import Progress

            n_threads = max(1, min(self.workers, len(todo)))
            bar = Progress(len(todo), "ludax") if progress else None
            with ThreadPoolExecutor(n_threads) as pool:
                futures = {k: pool.submit(self._run_one, d) for k, d in todo.items()}
                for k, fut in futures.items():
                    self._store(k, fut.result())
                    if bar:
                        bar.update()
            if bar:
                bar.close()
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["evaluated"] += len(todo)
        self.stats["cache_hits"] += len(descriptions) - len(todo)
        out = []
        for k in keys:
            result = GameResult(**self.cache[k])
            result.cached = k not in todo
            out.append(result)
        return out

    def rewards(self, descriptions: list[str]) -> list[float]:
        return [r.reward for r in self.evaluate(descriptions)]

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break
        self._started = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker_main()
