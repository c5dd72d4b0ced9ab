"""Game synthesis on ludax: fill-in-the-middle data and the playout reward.

Data. Every parenthesised sub-expression of depth >= 1 of a bundled ludax game becomes one
fill-in-the-middle example: the prompt is ``### PRE: <prefix> ### SUF: <suffix> ### MID:`` and the
target is the sub-expression itself. Descriptions are first normalised to one line (runs of
whitespace become one space, none after "(" or before ")"); ludax parses the normalised text to
the same tree. A generated middle is cut where its brackets balance and the game is rebuilt as
prefix + middle + suffix.

Reward (the paper's scheme, on ludax instead of Ludii):

    0.00  the description does not parse or compile (building a ``LudaxEnvironment`` fails)
    0.05  it compiles but cannot be played (no legal first move, or an engine error in play)
    (B^(1/3) + C^(1/3) + D^(1/3)) / 3   otherwise, from N random-vs-random playouts of at most
          ``max_turns`` actions: B = 1 - |wins_P1 - wins_P2| / N (balance), C = share of playouts
          that end with a winner (completion), D = 1 - share of draws. A draw is a game that the
          rules end without a single winner, or one where the mover has no legal action; a game
          cut by the turn limit is neither a win nor a draw, so it lowers C only.
    0.03  the evaluation did not finish within ``timeout`` seconds (compile + play)
    0.01  any other failure (the worker process died, e.g. out of memory)

Every exception raised by the engine is caught. Evaluation runs in worker processes (spawned,
one jax runtime each) so that a slow game can be stopped by killing its worker; results are
cached by the hash of the description and the playout settings. Each result reports the
engine's compile cost (``build_seconds``: parse + rule compilation, ``jit_seconds``: XLA
compilation of the playout loop) beside ``play_seconds``.

Two speed-ups are applied inside the workers, neither changes a result: the Lark parser is built
once instead of once per game, and ludax's board-adjacency tables (an eager per-cell loop that
depends only on the board) are memoised per board geometry. One ludax bug is worked around: its
``RenderingInfo`` keeps the piece-to-shape map as a class attribute, shared by every game built in
a process, so after a few games with differently named pieces the shapes run out and a valid game
fails to build ("IndexError: pop from empty list"). Each build gets its own map here.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Part of every reward-cache key: bump it whenever the reward's computation changes, so that old
# cached scores are never reused for a different reward.
REWARD_VERSION = 3

# ----------------------------------------------------------------------------- reward values
REWARD_NO_COMPILE = 0.0
REWARD_NOT_PLAYABLE = 0.05
REWARD_TIMEOUT = 0.03
REWARD_FAILURE = 0.01
STATUSES = ("no_compile", "not_playable", "playable", "timeout", "failure")

PROMPT_TEMPLATE = "### PRE: {prefix} ### SUF: {suffix} ### MID:"


# ----------------------------------------------------------------------------- descriptions
def normalise(description: str) -> str:
    """One line: whitespace runs -> one space, no space after "(" or before ")"."""
    text = " ".join(description.split())
    return re.sub(r"\s+\)", ")", re.sub(r"\(\s+", "(", text))


def bundled_games() -> dict[str, str]:
    """The games shipped with ludax, by name, normalised."""
    from ludax import games  # plain text files; importing this does not start jax

    return {name: normalise(getattr(games, name)) for name in games.__all__}


def description_hash(description: str) -> str:
    return hashlib.sha256(description.encode()).hexdigest()[:20]


def _brackets(text: str):
    """Yield (index, "(" or ")") of every bracket outside double-quoted strings."""
    in_string = False
    for i, ch in enumerate(text):
        if ch == '"':
            in_string = not in_string
        elif not in_string and ch in "()":
            yield i, ch


def paren_spans(text: str) -> list[tuple[int, int, int]]:
    """(start, end, depth) of every balanced "(...)" group; ``text[start:end]`` is the group and
    depth 0 is the outermost. Parentheses inside double-quoted strings are ignored."""
    spans, stack = [], []
    for i, ch in _brackets(text):
        if ch == "(":
            stack.append(i)
        elif stack:
            start = stack.pop()
            spans.append((start, i + 1, len(stack)))
    return sorted(spans)


@dataclass(frozen=True)
class FimExample:
    game: str
    prefix: str
    middle: str
    suffix: str
    depth: int

    @property
    def prompt(self) -> str:
        return make_prompt(self.prefix, self.suffix)

    def prompt_window(self, context_chars: int = 0) -> str:
        """The prompt with only the last ``context_chars`` characters of the prefix and the first
        ``context_chars`` of the suffix (0: all of them). The rebuilt game always uses the whole
        prefix and suffix; the window only limits what the model reads."""
        if not context_chars:
            return self.prompt
        return make_prompt(self.prefix[-context_chars:], self.suffix[:context_chars])

    def rebuild(self, middle: str | None = None) -> str:
        return self.prefix + (self.middle if middle is None else middle) + self.suffix


def make_prompt(prefix: str, suffix: str) -> str:
    return PROMPT_TEMPLATE.format(prefix=prefix, suffix=suffix)


def fim_examples(name: str, description: str, min_depth: int = 1) -> list[FimExample]:
    """One example per parenthesised sub-expression of depth >= ``min_depth``."""
    text = normalise(description)
    return [FimExample(name, text[:s], text[s:e], text[e:], d)
            for s, e, d in paren_spans(text) if d >= min_depth]


def split_games(names, heldout: list[str]) -> tuple[list[str], list[str]]:
    """(train games, held-out games): the split is by game, never by example."""
    unknown = sorted(set(heldout) - set(names))
    if unknown:
        raise ValueError(f"unknown held-out games {unknown}; bundled games: {sorted(names)}")
    return [n for n in names if n not in heldout], [n for n in names if n in heldout]


def cut_middle(text: str) -> str:
    """The generated middle up to the point where its brackets first balance.

    Leading whitespace is dropped. If the text does not start with "(", it is cut before the
    first unmatched ")" (or kept whole); if the brackets never balance, the whole text is kept
    (and the rebuilt game will not parse)."""
    text = text.lstrip()
    depth = 0
    for i, ch in _brackets(text):
        if ch == "(":
            depth += 1
        elif depth == 0:
            return text[:i]
        else:
            depth -= 1
            if depth == 0:
                return text[:i + 1]
    return text


# ----------------------------------------------------------------------------- results
@dataclass
class GameResult:
    status: str
    reward: float
    hash: str = ""
    error: str = ""
    n_playouts: int = 0
    p1_wins: int = 0
    p2_wins: int = 0
    draws: int = 0
    unfinished: int = 0
    balance: float = float("nan")
    completion: float = float("nan")
    decisiveness: float = float("nan")  # D = 1 - share of draws
    mean_length: float = float("nan")
    build_seconds: float = float("nan")
    jit_seconds: float = float("nan")
    play_seconds: float = float("nan")
    seconds: float = float("nan")  # wall time of the whole evaluation
    cached: bool = False

    @property
    def compiles(self) -> bool:
        return self.status in ("not_playable", "playable")

    @property
    def playable(self) -> bool:
        return self.status == "playable"


def playout_reward(p1_wins: int, p2_wins: int, draws: int, n: int) -> tuple[float, float, float, float]:
    """(reward, B, C, D) from playout counts; unfinished playouts are n - wins - draws."""
    balance = 1.0 - abs(p1_wins - p2_wins) / n
    completion = (p1_wins + p2_wins) / n
    decisiveness = 1.0 - draws / n
    reward = (balance ** (1 / 3) + completion ** (1 / 3) + decisiveness ** (1 / 3)) / 3
    return reward, balance, completion, decisiveness


# ----------------------------------------------------------------------------- the engine side
_LUDAX_READY = False


def _prepare_ludax() -> None:
    """Import jax and ludax, apply the two result-neutral speed-ups and the shared-map fix (module doc)."""
    global _LUDAX_READY
    if _LUDAX_READY:
        return
    import functools

    import ludax
    import ludax.environment
    import ludax.game_info
    import ludax.utils
    from lark import Lark

    parsers: dict = {}

    def cached_lark(grammar, **options):
        key = (grammar, tuple(sorted(options.items())))
        if key not in parsers:
            parsers[key] = Lark(grammar, **options)
        return parsers[key]

    ludax.environment.Lark = cached_lark

    extractor = ludax.game_info.GameInfoExtractor
    if not hasattr(extractor.__init__, "original"):
        original_init = extractor.__init__

        @functools.wraps(original_init)
        def init_with_own_maps(self):  # ludax shares these dicts between all games (class attributes)
            original_init(self)
            self.rendering_info.color_mapping = {"P1": "white", "P2": "black"}
            self.rendering_info.piece_shape_mapping = {}

        init_with_own_maps.original = original_init
        extractor.__init__ = init_with_own_maps

    def by_board(fn):
        memo: dict = {}

        @functools.wraps(fn)
        def wrapper(game_info):
            key = (game_info.board_shape, tuple(game_info.board_dims or ()), game_info.board_size,
                   game_info.hex_diameter)
            if key not in memo:
                memo[key] = fn(game_info)
            return memo[key]

        wrapper.uncached = fn
        return wrapper

    for name in ("_get_adjacency_lookup", "_get_slide_lookup"):
        fn = getattr(ludax.utils, name)
        if not hasattr(fn, "uncached"):
            setattr(ludax.utils, name, by_board(fn))
    _LUDAX_READY = True


def _playout_fn(env, n_playouts: int, max_turns: int):
    """A jitted function key -> (winners, terminated, stuck, lengths) of random playouts."""
    import jax
    import jax.numpy as jnp

    def play(key):
        key, init_key = jax.random.split(key)
        state = jax.vmap(env.init)(jax.random.split(init_key, n_playouts))
        no_move = jnp.zeros(n_playouts, dtype=bool)

        def finished(s, stuck):
            return s.terminated | s.truncated | stuck

        def cond(carry):
            s, _, turn, stuck = carry
            return (turn < max_turns) & ~finished(s, stuck).all()

        def body(carry):
            s, k, turn, stuck = carry
            k, sub = jax.random.split(k)
            stuck = stuck | (~s.legal_action_mask.any(-1) & ~finished(s, stuck))
            done = finished(s, stuck)
            logits = jnp.where(s.legal_action_mask, 0.0, -jnp.inf)
            actions = jax.random.categorical(sub, logits, axis=-1).astype(jnp.int16)
            stepped = jax.vmap(env.step)(s, actions)

            def keep_done(new, old):
                return jnp.where(jnp.reshape(done, done.shape + (1,) * (new.ndim - 1)), old, new)

            return jax.tree_util.tree_map(keep_done, stepped, s), k, turn + 1, stuck

        s, _, _, stuck = jax.lax.while_loop(cond, body, (state, key, 0, no_move))
        return s.winners, s.terminated, stuck, s.global_step_count

    return jax.jit(play)


def _short(err: BaseException) -> str:
    msg = " ".join(str(err).split())
    return f"{type(err).__name__}: {msg[:300]}"


def evaluate_in_process(description: str, n_playouts: int = 100, max_turns: int = 500,
                        seed: int = 0) -> GameResult:
    """Compile and play one description in this process (no timeout: see ``GameRewarder``)."""
    t0 = time.perf_counter()
    result = GameResult("no_compile", REWARD_NO_COMPILE, description_hash(description), n_playouts=n_playouts)
    try:
        _prepare_ludax()
        import jax
        import numpy as np
        from ludax import LudaxEnvironment
    except Exception as err:  # the engine itself is missing or broken
        result.status, result.reward, result.error = "failure", REWARD_FAILURE, _short(err)
        return result
    try:
        env = LudaxEnvironment(game_str=description)
    except Exception as err:
        result.error = _short(err)
        result.build_seconds = result.seconds = time.perf_counter() - t0
        return result
    t1 = time.perf_counter()
    result.build_seconds = t1 - t0
    result.status, result.reward = "not_playable", REWARD_NOT_PLAYABLE
    try:
        first = env.init(jax.random.PRNGKey(seed))
        if not bool(np.asarray(first.legal_action_mask).any()):
            result.error = "no legal action in the initial position"
            return result
        compiled = _playout_fn(env, n_playouts, max_turns).lower(jax.random.PRNGKey(seed)).compile()
        t2 = time.perf_counter()
        result.jit_seconds = t2 - t1
        winners, terminated, stuck, lengths = jax.block_until_ready(compiled(jax.random.PRNGKey(seed)))
        result.play_seconds = time.perf_counter() - t2
        winners, terminated, stuck = np.asarray(winners), np.asarray(terminated), np.asarray(stuck)
    except Exception as err:
        result.error = _short(err)
        return result
    finally:
        result.seconds = time.perf_counter() - t0
    p1 = (winners[:, 0] == 1) & (winners[:, 1] != 1)
    p2 = (winners[:, 1] == 1) & (winners[:, 0] != 1)
    ended = terminated | stuck
    draws = ended & ~p1 & ~p2
    result.p1_wins, result.p2_wins, result.draws = int(p1.sum()), int(p2.sum()), int(draws.sum())
    result.unfinished = n_playouts - result.p1_wins - result.p2_wins - result.draws
    result.mean_length = float(np.asarray(lengths).mean())
    reward, result.balance, result.completion, result.decisiveness = playout_reward(
        result.p1_wins, result.p2_wins, result.draws, n_playouts)
    result.status, result.reward = "playable", float(reward)
    return result


def _worker_main() -> None:
    """Worker loop (``python -m rlformal_utils.games --worker``): JSON lines in on stdin, out on
    the original stdout; anything the engine prints goes to stderr. One evaluation at a time."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    parent = os.getppid()

    def exit_with_parent():  # never outlive the process that started us, even mid-compile
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    _prepare_ludax()
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
                 jax_cache_dir: str | None = None):
        env = dict(os.environ, JAX_PLATFORMS="cpu",  # one CPU thread per worker, no GPU probing
                   RLFORMAL_JAX_CACHE=jax_cache_dir or "",
                   XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                              " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip())
        cmd = [sys.executable, "-m", "rlformal_utils.games", "--worker"] + (["--warmup"] if warmup else [])
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
    Use as a context manager or call ``close()`` to stop the workers.
    """

    def __init__(self, workers: int = 1, timeout: float = 120.0, n_playouts: int = 100,
                 max_turns: int = 500, seed: int = 0, cache_path: str | os.PathLike | None = None,
                 max_tasks_per_worker: int = 40, warmup: bool = True, start_timeout: float = 300.0,
                 log_path: str | os.PathLike | None = None, jax_cache_dir: str | os.PathLike | None = None):
        self.workers, self.timeout = int(workers), float(timeout)
        self.settings = dict(n_playouts=int(n_playouts), max_turns=int(max_turns), seed=int(seed))
        self.max_tasks_per_worker = max_tasks_per_worker
        self.warmup, self.start_timeout = warmup, start_timeout
        self.log_path = str(log_path) if log_path else None
        if jax_cache_dir == "default":
            from .runs import CACHE_DIR
            jax_cache_dir = CACHE_DIR / "jax"
        self.jax_cache_dir = str(jax_cache_dir) if jax_cache_dir else None
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
        blob = json.dumps(dict(self.settings, description=description, reward_version=REWARD_VERSION), sort_keys=True)
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
                    return _Worker(self.warmup, self.start_timeout, self.log_path, self.jax_cache_dir)
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
            return evaluate_in_process(description, **self.settings)
        worker = self._get_worker()
        pid = worker.proc.pid
        self.busy_pids.add(pid)
        t0 = time.perf_counter()
        try:
            worker.send(dict(description=description, **self.settings))
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

            from tqdm.auto import tqdm

            n_threads = max(1, min(self.workers, len(todo)))
            with ThreadPoolExecutor(n_threads) as pool:
                futures = {k: pool.submit(self._run_one, d) for k, d in todo.items()}
                for k, fut in tqdm(futures.items(), desc="ludax", disable=not progress, mininterval=2):
                    self._store(k, fut.result())
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


def novel(description: str, known: set[str] | None = None) -> bool:
    """True if ``description`` (normalised) differs from every bundled game."""
    known = known if known is not None else set(bundled_games().values())
    return normalise(description) not in known


def sample_examples(examples: list[FimExample], n: int, seed: int = 0) -> list[FimExample]:
    """``n`` examples drawn without replacement (all of them if n >= len)."""
    if n >= len(examples):
        return list(examples)
    return random.Random(seed).sample(examples, n)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _worker_main()
