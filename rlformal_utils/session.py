"""The start of every run notebook: thread count, seed, run folder, and one small table of the settings.

* ``torch_threads=0`` means :func:`default_threads`: half the cores, at least 1, at most 8. torch's own
  default (every core) oversubscribes a shared or busy machine and slows a run several-fold.
* With the default ``output_dir`` (``../scratch/<experiment>``) a run writes to
  ``../scratch/<experiment>/<run name>-<hash of its configuration>``, so two interactive runs with
  different parameters never overwrite each other; a rerun with the same parameters replaces its own
  folder. The runner always passes its own ``output_dir`` (``results/<experiment>/<run>/``).
* ``torch_threads``, the device and the library versions go to ``summary.json`` (``session``): the same
  seed gives the same numbers only with the same thread count and library versions, because a
  different number of threads sums floats in a different order and the rounding then grows.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .runs import RunLog, config_key, set_seed

DEFAULT_OUTPUT_DIRS = {e: f"../scratch/{e}" for e in ("arithmetic", "sentiment", "games")}


def default_threads(cpu_count: int | None = None) -> int:
    """Half the cores, at least 1, at most 8."""
    n = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, min(8, n // 2))


def resolve_threads(torch_threads: int) -> int:
    return int(torch_threads) if torch_threads else default_threads()


def run_label(experiment: str, config: dict) -> str:
    """A short readable name from the parameters that tell the arms of an experiment apart."""
    c = config
    if experiment == "arithmetic":
        label = c.get("algorithm", "run")
        if label not in ("none", "supervised"):
            label += f"_{c.get('regulariser')}_kl-{c.get('kl_reference')}"
    elif experiment == "sentiment":
        label = f"{c.get('policy')}" + (f"-lora{c['lora_rank']}" if c.get("lora_rank") else "") + f"_kl{c.get('kl_coef', 0):g}"
    elif experiment == "games":
        label = f"{c.get('model_size')}_ppo{c.get('ppo_steps')}"
    else:
        label = experiment
    return f"{label}_s{c.get('seed', 0)}"


def run_folder(experiment: str, output_dir: str, config: dict) -> Path:
    """``output_dir`` itself, unless it is the experiment's default scratch folder: then a subfolder named
    by the run's parameters (readable label + 8 characters of the configuration's hash)."""
    if output_dir.rstrip("/") == DEFAULT_OUTPUT_DIRS.get(experiment):
        return Path(output_dir) / f"{run_label(experiment, config)}-{config_key(config)[:8]}"
    return Path(output_dir)


@dataclass
class Session:
    experiment: str
    config: dict
    log: RunLog
    threads: int
    device: str
    info: dict = field(default_factory=dict)   # what goes to summary.json as "session"

    def table(self, defaults: dict) -> str:
        """The settings as a small text table: folder, threads, device, and every parameter that differs
        from the notebook's defaults."""
        changed = {k: v for k, v in self.config.items() if defaults.get(k, object()) != v}
        rows = [("run folder", os.path.relpath(self.log.dir)),  # relative: no machine paths in executed copies
                ("torch threads", f"{self.threads} (of {os.cpu_count()} cores)"),
                ("device", self.device), ("seed", str(self.config.get("seed")))]
        rows += [(k, repr(v)) for k, v in changed.items() if k != "seed"] or [("parameters", "the defaults")]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        lines.append("same seed, same threads and same library versions give the same numbers")
        return "\n".join(lines)


def start(experiment: str, config: dict, output_dir: str, torch_threads: int, seed: int, device,
          declared: list | None = None, show: bool = True) -> Session:
    """Set torch's threads, seed everything, open the run folder (``config.json`` is written now) and
    print the settings once."""
    threads = resolve_threads(torch_threads)
    torch.set_num_threads(threads)
    set_seed(seed)
    log = RunLog(run_folder(experiment, output_dir, config), config)
    import numpy, transformers
    info = dict(torch_threads=threads, device=str(device), python=platform.python_version(),
                torch=torch.__version__, numpy=numpy.__version__, transformers=transformers.__version__)
    s = Session(experiment, config, log, threads, str(device), info)
    if show:
        print(s.table({p.name: p.default for p in declared or []}))
    return s
