"""What an experiment's grid is made of: runs with their parameters and an estimated cost.

Each experiment declares its own runs per profile in ``rlformal_utils/<experiment>/grid.py`` as a
function ``runs(profile) -> list[Run]`` (an empty list for a profile it does not take part in); the
runner knows experiments only through ``rlformal_utils.runner.EXPERIMENTS``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Run:
    experiment: str
    name: str
    params: dict = field(default_factory=dict)
    estimate_s: float = 60.0  # seconds of one reference CPU thread, from the grid's measured constants

    def out_dir(self, results: Path) -> Path:
        return results / self.experiment / self.name
