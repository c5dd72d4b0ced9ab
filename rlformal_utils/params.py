"""Declared parameters: each experiment lists every parameter ONCE (name, default, allowed values
or range, one line of help); the notebook check, ``config.json`` and the parameter reference
(``python -m rlformal_utils.params arithmetic``) all come from that list."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from .runs import ParameterError


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    help: str
    choices: tuple | None = None    # allowed values, or
    low: float | None = None        # an inclusive range for numbers
    high: float | None = None
    kind: type | None = None        # int, float, str, bool, list; default: the type of ``default``
    config: bool = True             # False: bookkeeping (output folder, threads), not part of config.json
    rule: str | None = None         # the allowed values in words, when the experiment's check() enforces them

    def allowed(self) -> str:
        if self.rule is not None:
            return self.rule
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        kind = (self.kind or type(self.default)).__name__
        if kind not in ("int", "float"):
            return f"a {kind}"
        lo = "-inf" if self.low is None else self.low
        hi = "inf" if self.high is None else self.high
        return f"{'an integer' if kind == 'int' else 'a number'} in [{lo}, {hi}]"

    def check(self, value) -> None:
        ok = True
        kind = self.kind or type(self.default)
        if self.choices is not None:
            ok = any(value == c and type(value) is type(c) for c in self.choices)  # True is not 1
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif kind is not type(None):
            ok = isinstance(value, kind)
        if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        if not ok:
            raise ParameterError(f"parameter {self.name}={value!r} is not allowed: it must be {self.allowed()}")


def check_all(declared: list[Param], values: dict) -> dict:
    """Check every declared parameter in ``values`` (e.g. a notebook's ``globals()``); return the
    ``config.json`` dict of the ones marked ``config``. A missing parameter is an error too."""
    config = {}
    for p in declared:
        if p.name not in values:
            raise ParameterError(f"parameter {p.name} is missing")
        p.check(values[p.name])
        if p.config:
            config[p.name] = values[p.name]
    return config


def defaults(declared: list[Param]) -> dict:
    return {p.name: p.default for p in declared}


def reference(declared: list[Param]) -> str:
    """A Markdown table of the parameters: name, default, allowed values, help."""
    rows = ["| parameter | default | allowed | what it does |", "|---|---|---|---|"]
    rows += [f"| `{p.name}` | `{p.default!r}` | {p.allowed()} | {p.help} |" for p in declared]
    return "\n".join(rows)


if __name__ == "__main__":  # python -m rlformal_utils.params arithmetic games
    import importlib
    for name in sys.argv[1:] or ["arithmetic"]:
        module = importlib.import_module(f"rlformal_utils.{name}.params")
        print(f"## {name}\n\n{reference(module.PARAMS)}\n")
