"""The paper's game reward on ludax: compile a description, play random playouts, score them.

    0.00  the description does not parse or compile (building a ``LudaxEnvironment`` fails)
    0.05  it compiles but cannot be played (no legal first move, or an engine error in play)
    (B^(1/3) + C^(1/3) + D^(1/3)) / 3   otherwise, from N random-vs-random playouts of at most
          ``max_turns`` actions: B = 1 - |wins_P1 - wins_P2| / N (balance), C = share of playouts
          that end with a winner (completion), D = 1 - share of draws. A draw is a game that the
          rules end without a single winner, or one where the mover has no legal action; a game
          cut by the turn limit is neither a win nor a draw, so it lowers C only.
    0.03  the evaluation did not finish within the timeout (compile + play; see ``rewarder.py``)
    0.01  any other failure (the worker process died, e.g. out of memory)

Every exception raised by the engine is caught, so the reward is total on any string. Each result
reports the engine's compile cost (``build_seconds``: parse + rule compilation, ``jit_seconds``:
XLA compilation of the playout loop) beside ``play_seconds``.

``_prepare_ludax`` wraps a few ludax functions (its files stay as installed) and works around one
ludax bug: its ``RenderingInfo`` keeps the piece-to-shape map as a class attribute, shared by every
game built in a process, so after a few games with differently named pieces the shapes run out and
a valid game fails to build ("IndexError: pop from empty list"). Each build gets its own map here,
in both settings below.

With ``fast=True`` (the default) an evaluation is cheaper and scores the same (checked against
scores captured without these in ``tests/games_reward_scores.json``; compare the costs with
``python -m rlformal_utils.games.benchmark``); ``fast=False`` runs ludax as installed.

* ludax builds its constant tables from the board's geometry with eager jax.numpy calls, one small
  operation per cell or line, and every new array shape is an XLA compilation: on a board shape
  not seen before that cost seconds. The board-adjacency table (ludax puts one piece on each cell
  in turn and convolves the board with one 0/1 kernel per direction) is the same integer sums,
  taken for all cells at once with numpy (``_whole_board_adjacency``); the index tables of lines,
  custodial captures, edges, rows, columns and corners (``NUMPY_TABLES``) run ludax's own code
  with numpy standing in for jax.numpy (``_with_numpy``). The tests compare both with ludax's
  tables on square, rectangular, hexagonal and hex-rectangle boards, dtype included.
* The Lark parser is built once instead of once per game; the adjacency and slide tables are
  memoised per board geometry, and kept on disk when ``set_board_cache(folder)`` names a folder
  (the rewarder's workers use ``<cache>/ludax-boards``), so a restarted worker or a later run
  reads them.
* XLA compiles the playout loop with its optimisations off and with the CPU backend's loop
  emitters instead of its fusion emitters (``FAST_COMPILE_OPTIONS``): compiling, tracing
  included, costs about a third as much. Unoptimised code plays up to ~15x slower, which matters
  for long games only, so the loop runs a slice of turns at a time and, once the playouts have
  taken as long as that compilation, is compiled again optimised to finish them
  (``_staged_playouts``). The loop is the same, only cut into slices, over the same counter-based
  random bits; the captured scores show the outcomes are the same.
* The first position's legal moves come out of the compiled playout function instead of an
  eager ``env.init`` (dozens of small eagerly dispatched operations).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

# Part of every reward-cache key: bump it whenever the reward's computation changes, so that old
# cached scores are never reused for a different reward.
REWARD_VERSION = 3

REWARD_NO_COMPILE = 0.0
REWARD_NOT_PLAYABLE = 0.05
REWARD_TIMEOUT = 0.03
REWARD_FAILURE = 0.01
STATUSES = ("no_compile", "not_playable", "playable", "timeout", "failure")


def description_hash(description: str) -> str:
    return hashlib.sha256(description.encode("utf-8", "surrogatepass")).hexdigest()[:20]  # any str, even a lone surrogate


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


_LUDAX_READY = False
_SPEEDUPS = {"on": True}  # off while evaluate_in_process(fast=False) runs: ludax runs as installed
_BOARD_CACHE: dict = {"folder": None}

# XLA options of jax's ``jax_disable_most_optimizations``, given to one compilation only, and the
# CPU backend's older loop emitters instead of its fusion emitters (half the compile time again).
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                        "xla_cpu_use_fusion_emitters": False}


def set_board_cache(folder) -> None:
    """Keep ludax's per-board tables in ``folder`` too (None: in memory only)."""
    _BOARD_CACHE["folder"] = str(folder) if folder else None


def _prepare_ludax() -> None:
    """Import jax and ludax, wrap the functions of the result-neutral speed-ups (on while
    ``_SPEEDUPS["on"]``) and apply the shared-map fix (module doc)."""
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
        if not _SPEEDUPS["on"]:
            return Lark(grammar, **options)
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

    def by_board(fn, faster=None):
        memo: dict = {}

        @functools.wraps(fn)
        def wrapper(game_info):
            if not _SPEEDUPS["on"]:
                return fn(game_info)
            key = (game_info.board_shape, tuple(game_info.board_dims or ()), game_info.board_size,
                   game_info.hex_diameter)
            if key not in memo:
                memo[key] = _on_disk(faster or fn, game_info, key)
            return memo[key]

        wrapper.uncached = fn
        return wrapper

    if not hasattr(ludax.utils._get_adjacency_lookup, "uncached"):
        per_cell = ludax.utils._get_adjacency_lookup
        ludax.utils._get_adjacency_lookup = by_board(per_cell, _whole_board_adjacency(per_cell))
    if not hasattr(ludax.utils._get_slide_lookup, "uncached"):
        ludax.utils._get_slide_lookup = by_board(ludax.utils._get_slide_lookup)
    for name in NUMPY_TABLES:
        fn = getattr(ludax.utils, name)
        if not hasattr(fn, "jax_only"):
            setattr(ludax.utils, name, _with_numpy(fn))
    _LUDAX_READY = True


# ludax helpers that build constant index tables from the board's geometry with jax.numpy calls,
# one small eager operation (compiled anew for every new shape) per line or cell.
NUMPY_TABLES = ("_get_line_indices", "_get_custodial_indices", "_get_edge_indices", "_get_row_indices",
                "_get_column_indices", "_get_corner_indices")
_IN_NUMPY = {"depth": 0}


def _with_numpy(fn):
    """``fn`` run with ludax.utils' ``jnp`` standing for numpy, its arrays then handed to jax.

    These helpers only call array constructors (arange, array, stack, astype, slicing) that numpy
    has with the same meaning, and cast their result to an explicit dtype, so the tables are the
    same; jax's array of numpy's result has the dtype jax would have given. Anything else (an
    error, a result that is not an array or a tuple of arrays) runs ``fn`` as ludax wrote it.
    The swap is module-wide while ``fn`` runs: one game is built at a time in a process (as the
    rewarder's workers do)."""
    import functools

    import jax.numpy as jnp
    import numpy as np
    import ludax.utils as U

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _SPEEDUPS["on"] or _IN_NUMPY["depth"]:
            return fn(*args, **kwargs)
        real, U.jnp = U.jnp, np
        _IN_NUMPY["depth"] += 1
        try:
            out = fn(*args, **kwargs)
        except Exception:
            out = None
        finally:
            _IN_NUMPY["depth"] -= 1
            U.jnp = real
        leaves = out if isinstance(out, tuple) else (out,)
        if not all(type(x) is np.ndarray for x in leaves):
            return fn(*args, **kwargs)
        arrays = tuple(jnp.asarray(x) for x in leaves)
        return arrays if isinstance(out, tuple) else arrays[0]

    wrapper.jax_only = fn
    return wrapper


def _whole_board_adjacency(per_cell):
    """ludax's adjacency table computed for all cells at once (``per_cell``: ludax's own function).

    ludax puts a single piece on each cell in turn (invalid hexagon cells read as EMPTY, -1),
    convolves the board with one 0/1 kernel per direction ('SAME', zero padding) and marks the cells
    where the sum is positive: thousands of small eager operations. Here the same integer sums are
    taken for every cell at once with numpy, with ludax's kernels and its cell-to-board map; any
    board this cannot handle goes to ``per_cell``, so errors are ludax's own."""
    import functools

    import jax.numpy as jnp
    import numpy as np
    import ludax.utils as U

    def kernels_and_cells(game_info):
        directions = U.BOARD_SHAPE_TO_DIRECTIONS[game_info.board_shape]
        kernels = [np.asarray(U._get_adjacency_kernel(game_info, {U.OptionalArgs.DIRECTION: d}))[0, 0]
                   for d in directions]
        _, _, board_to_mask = U._get_mask_board_conversion_fns(game_info)
        height, width = (int(d) for d in game_info.board_dims)
        row_of, col_of = np.indices((height, width))  # numpy boards: ludax's own cell order, no jax op
        rows, cols = (np.asarray(board_to_mask(grid)).astype(np.int64) for grid in (row_of, col_of))
        return kernels, rows, cols

    @functools.wraps(per_cell)
    def adjacency(game_info):
        try:
            kernels, rows, cols = kernels_and_cells(game_info)
            n = int(game_info.board_size)
            height, width = (int(d) for d in game_info.board_dims)
            if n <= 0 or rows.shape != (n,) or cols.shape != (n,):
                raise ValueError("unexpected board")
        except Exception:
            return per_cell(game_info)
        boards = np.full((n, height, width), int(U.EMPTY), dtype=np.int32)  # invalid cells read as EMPTY
        boards[:, rows, cols] = 0
        boards[np.arange(n), rows, cols] = 1
        table = np.zeros((len(kernels), n, n), dtype=np.int8)
        for c, kernel in enumerate(kernels):
            kh, kw = kernel.shape
            padded = np.pad(boards, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)))
            sums = np.zeros((n, height, width), dtype=np.int32)
            for a, b in zip(*np.nonzero(kernel)):
                sums += int(kernel[a, b]) * padded[:, a:a + height, b:b + width]
            table[c] = sums[:, rows, cols] > 0
        return jnp.asarray(table, dtype=U.BOARD_DTYPE)

    adjacency.per_cell = per_cell
    return adjacency


def _on_disk(fn, game_info, key):
    """``fn(game_info)``, read from / written to the board cache folder if one is set."""
    import os

    import jax.numpy as jnp
    import numpy as np
    folder = _BOARD_CACHE["folder"]
    if not folder:
        return fn(game_info)
    import ludax
    name = hashlib.sha256(repr((fn.__name__, getattr(ludax, "__version__", ""), key)).encode()).hexdigest()[:24]
    path = os.path.join(folder, name + ".npy")
    try:
        return jnp.asarray(np.load(path, allow_pickle=False))
    except Exception:  # missing or unreadable: computed again (a bad file must not fail a game)
        pass
    table = fn(game_info)
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(table), allow_pickle=False)
        os.replace(tmp, path)  # atomic: a reader never sees half a table
    except Exception:
        pass
    return table


def _loop(env, n_playouts: int):
    """(start, cond, body) of the random-playout loop: ``start(key)`` is the first carry (states,
    key, turn, stuck), ``cond(carry, max_turns)`` whether to go on, ``body(carry)`` one turn."""
    import jax
    import jax.numpy as jnp

    def finished(s, stuck):
        return s.terminated | s.truncated | stuck

    def start(key):
        key, init_key = jax.random.split(key)
        state = jax.vmap(env.init)(jax.random.split(init_key, n_playouts))
        return state, key, 0, jnp.zeros(n_playouts, dtype=bool)

    def cond(carry, max_turns):
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

    return start, cond, body


def _playout_fn(env, n_playouts: int, max_turns: int):
    """A jitted function key -> (winners, terminated, stuck, lengths) of random playouts."""
    import jax
    start, cond, body = _loop(env, n_playouts)

    def play(key):
        s, _, _, stuck = jax.lax.while_loop(lambda c: cond(c, max_turns), body, start(key))
        return s.winners, s.terminated, stuck, s.global_step_count

    return jax.jit(play)


def _staged_playouts(env, n_playouts: int, max_turns: int, seed: int):
    """The playouts of ``_playout_fn`` (the same loop, the same random bits, so the same outcome),
    cheaper to compile: the loop is compiled with XLA's optimisations off and run a slice of turns
    at a time; unoptimised code plays up to ~15x slower, so once the playouts have taken as long
    as that compilation, the rest of the loop is compiled optimised and finishes the playouts.
    Returns (winners, terminated, stuck, lengths, first position has a legal action, compile s)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    start, cond, body = _loop(env, n_playouts)

    def first(key):  # the first carry, and whether env.init(PRNGKey(seed)) has a legal action
        s, k, turn, stuck = start(key)
        return (s, k, jnp.int32(turn), stuck), env.init(jax.random.PRNGKey(seed)).legal_action_mask.any()

    def advance(carry, limit):  # the loop of _playout_fn, stopped at turn ``limit``
        return jax.lax.while_loop(lambda c: cond(c, limit), body, carry)

    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    carry, can_move = jax.jit(first).lower(key).compile(dict(FAST_COMPILE_OPTIONS))(key)
    if not bool(can_move):
        return None, None, None, None, False, time.perf_counter() - t0
    limit = jnp.int32(0)
    step = jax.jit(advance).lower(carry, limit).compile(dict(FAST_COMPILE_OPTIONS))
    compile_seconds = budget = time.perf_counter() - t0
    t1, turn, chunk, optimised = time.perf_counter(), 0, 8, False
    while True:
        s, _, _, stuck = carry
        if turn >= max_turns or bool(np.asarray(s.terminated | s.truncated | stuck).all()):
            break
        if not optimised and time.perf_counter() - t1 > budget:
            t2 = time.perf_counter()
            step = jax.jit(advance).lower(carry, limit).compile()
            compile_seconds += time.perf_counter() - t2
            optimised, chunk = True, max_turns
        turn = min(max_turns, turn + chunk)
        chunk *= 2
        carry = jax.block_until_ready(step(carry, jnp.int32(turn)))
        turn = int(carry[2])
    s, _, _, stuck = carry
    return s.winners, s.terminated, stuck, s.global_step_count, True, compile_seconds


def _short(err: BaseException) -> str:
    msg = " ".join(str(err).split())
    return f"{type(err).__name__}: {msg[:300]}"


def evaluate_in_process(description: str, n_playouts: int = 100, max_turns: int = 500,
                        seed: int = 0, fast: bool = True) -> GameResult:
    """Compile and play one description in this process (no timeout: see ``GameRewarder``).
    ``fast=False`` turns off the speed-ups that change no score: ludax runs as installed (module doc)."""
    previous = _SPEEDUPS["on"]
    _SPEEDUPS["on"] = bool(fast)
    try:
        return _evaluate(description, n_playouts, max_turns, seed, fast)
    finally:
        _SPEEDUPS["on"] = previous


def _evaluate(description: str, n_playouts: int, max_turns: int, seed: int, fast: bool) -> GameResult:
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
        if fast:
            winners, terminated, stuck, lengths, can_move, compile_seconds = _staged_playouts(
                env, n_playouts, max_turns, seed)
            result.jit_seconds = compile_seconds
            result.play_seconds = time.perf_counter() - t1 - compile_seconds
            if not can_move:
                result.error = "no legal action in the initial position"
                return result
        else:
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
