"""Run bookkeeping: seeding, parameter checks, atomic result files, the model cache.

A run directory holds ``config.json`` (written first), ``metrics.csv`` (one row per step)
and ``summary.json`` (written last). While a run trains, its rows go to
``metrics.partial.csv``; only a finished run renames it to ``metrics.csv`` and then writes
``summary.json``. So a killed run never leaves files that look complete:
``is_complete(run_dir)`` is true only after the last write.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("RLFORMAL_CACHE", REPO_ROOT / ".cache"))


def set_seed(seed: int) -> None:
    """One call seeds Python's random, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- parameters
class ParameterError(ValueError):
    """A notebook parameter has a value that is not allowed (checked by ``rlformal_utils.params``)."""


# ----------------------------------------------------------------------------- atomic files
def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


class RunLog:
    """Writes a run's ``config.json``, its metrics rows and, at the end, its summary."""

    def __init__(self, run_dir: str | os.PathLike, config: dict):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in ("summary.json", "metrics.csv"):  # a rerun starts incomplete
            (self.dir / stale).unlink(missing_ok=True)
        atomic_write_json(self.dir / "config.json", config)
        self.rows: list[dict] = []

    def log(self, row: dict) -> None:
        self.rows.append({k: _scalar(v) for k, v in row.items()})

    def flush(self, name: str = "metrics.partial.csv") -> None:
        if not self.rows:
            return
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        lines = _csv_text(fields, self.rows)
        atomic_write_text(self.dir / name, lines)

    def finish(self, summary: dict) -> None:
        """Rename the metrics to their final name, then write ``summary.json`` last."""
        self.flush("metrics.csv")
        (self.dir / "metrics.partial.csv").unlink(missing_ok=True)
        atomic_write_json(self.dir / "summary.json", summary)


def _scalar(v):
    if isinstance(v, torch.Tensor):
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _csv_text(fields, rows) -> str:
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def is_complete(run_dir: str | os.PathLike) -> bool:
    d = Path(run_dir)
    return all((d / f).exists() for f in ("config.json", "metrics.csv", "summary.json"))


def complete_runs(results_dir: str | os.PathLike):
    """Yield (run folder, parsed summary.json) for every complete run under ``results_dir``."""
    for summary_path in sorted(Path(results_dir).glob("*/summary.json")):
        if (summary_path.parent / "metrics.csv").exists():
            yield summary_path.parent, json.loads(summary_path.read_text())


# ----------------------------------------------------------------------------- model cache
def config_key(config: dict) -> str:
    """A short stable hash of a JSON-able configuration."""
    blob = json.dumps(config, sort_keys=True, default=_jsonable).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_path(kind: str, config: dict, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``cached_dir`` keeps (or will keep) the folder of this configuration."""
    return Path(cache_dir or CACHE_DIR) / kind / config_key(config)


def is_cached(folder: Path) -> bool:
    """True once a ``cached_dir`` build of ``folder`` has finished."""
    return (folder / "rlformal_config.json").exists()


def cached_dir(kind: str, config: dict, build, cache_dir: str | os.PathLike | None = None,
               wait: bool = True) -> Path | None:
    """Return ``<cache>/<kind>/<hash of config>``, calling ``build(tmp_dir)`` first when it
    is missing. ``build`` writes into a temporary folder that is renamed only when it
    returns, so an interrupted build is never mistaken for a finished one. While another
    process builds the same folder, wait for it, or with ``wait=False`` return None at once."""
    final = cache_path(kind, config, cache_dir)
    if is_cached(final):
        return final
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{final.name}.lock", "w") as lock:
        try:  # parallel runs wait for one build instead of racing
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return None
        if is_cached(final):
            return final
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
        try:
            build(tmp)
            atomic_write_json(tmp / "rlformal_config.json", config)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def cached_value(kind: str, config: dict, compute, cache_dir: str | os.PathLike | None = None):
    """``compute()`` once per configuration, pickled in a ``cached_dir``; later calls read it back."""
    import pickle

    def build(tmp: Path) -> None:
        (tmp / "value.pkl").write_bytes(pickle.dumps(compute(), protocol=5))

    return pickle.loads((cached_dir(kind, config, build, cache_dir) / "value.pkl").read_bytes())
