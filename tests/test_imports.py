"""Every module of rlformal_utils imports in a fresh interpreter, and the package's imports go one way:
no module imports another that imports it back (at the top or inside a function)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rlformal_utils"


def modules() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def imported(module: str) -> set[str]:
    """The package modules that ``module`` imports anywhere in its source (top level or in a function)."""
    parts = module.split(".")
    path = PACKAGE.parent.joinpath(*parts)
    is_pkg = path.is_dir()
    source = (path / "__init__.py") if is_pkg else path.with_suffix(".py")
    package = parts if is_pkg else parts[:-1]
    known = set(modules())
    found = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else [])) if node.level else (node.module or "")
            for alias in node.names:  # `from . import x` may name a module
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
            if target in known:
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
    found.discard(module)
    return {m for m in found if m != "rlformal_utils" and not module.startswith(m + ".")}


def cycles() -> list[tuple[str, ...]]:
    graph = {m: imported(m) for m in modules()}
    found, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                found.append(tuple(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_every_module_imports_in_a_fresh_interpreter():
    code = ("import importlib, sys\n"
            f"for m in {modules()!r}:\n"
            "    importlib.import_module(m)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_sentiment_params_and_sampling_import_one_way():
    assert "rlformal_utils.sentiment.sampling" in imported("rlformal_utils.sentiment.params")
    assert "rlformal_utils.sentiment.params" not in imported("rlformal_utils.sentiment.sampling")


def test_no_import_cycles():
    assert cycles() == []
