"""A reader of an executed run notebook sees a figure of the run within about three screens.

The offset is estimated from the notebook's content with JupyterLab 4's default metrics at 1400 px:
about 17 px per line of code or text output, 24-40 px per Markdown line, 30 px per table row. Measured
in a real browser (Chromium, 1400x900, file browser open), the estimate lies 4-9 % above the true
offset, so the limit below is a safe one. The run notebooks of the quick and classroom profiles are
checked; `results/long` keeps the executed copies of its own, older runs.
"""
import base64
import json
import struct
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIMIT_PX = 3000
RUNS = sorted(p for folder in ("results", "results/classroom") for exp in ("arithmetic", "sentiment", "games")
              for p in (REPO / folder / exp).glob(f"*/{exp}.ipynb"))


def _text(x) -> str:
    return x if isinstance(x, str) else "".join(x)


def _markdown_px(text: str) -> int:
    px = 20
    for line in text.splitlines():
        if line.startswith("#"):
            px += 40
        elif line.startswith("|"):
            px += 30
        elif line.strip():
            px += 26 * (len(line) // 130 + 1)
        else:
            px += 10
    return px


def first_figure_px(nb: dict) -> int | None:
    """Estimated pixels from the top of the notebook to its first image, or None without one."""
    y = 0
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            y += _markdown_px(_text(cell["source"]))
            continue
        y += 18 * len(_text(cell["source"]).splitlines()) + 30
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if out["output_type"] == "stream":
                y += 18 * _text(out["text"]).count("\n")
            elif "image/png" in data:
                return y
            elif "text/html" in data:
                y += 30 * _text(data["text/html"]).count("<tr") + 30
            elif "text/markdown" in data:
                y += _markdown_px(_text(data["text/markdown"]))
            elif "text/plain" in data:
                y += 18 * (_text(data["text/plain"]).count("\n") + 1)
    return None


def _png(height: int) -> str:
    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 100, height)
    return base64.b64encode(header).decode()


def test_the_estimate_counts_what_stands_above_the_figure():
    code = dict(cell_type="code", source="a = 1\nb = 2", outputs=[])
    text = dict(cell_type="code", source="print(a)", outputs=[dict(output_type="stream", text="1\n2\n3\n")])
    figure = dict(cell_type="code", source="plot()", outputs=[dict(output_type="display_data", data={"image/png": _png(50)})])
    heading = dict(cell_type="markdown", source="# Title\n\nOne line.")
    assert first_figure_px(dict(cells=[figure])) == 18 + 30
    assert first_figure_px(dict(cells=[code, figure])) == (36 + 30) + (18 + 30)
    assert first_figure_px(dict(cells=[text, figure])) == (18 + 30 + 54) + (18 + 30)
    assert first_figure_px(dict(cells=[heading, figure])) == (20 + 40 + 10 + 26) + (18 + 30)
    assert first_figure_px(dict(cells=[code, text])) is None


def test_run_notebooks_are_checked():
    assert {p.parent.parent.name for p in RUNS} == {"arithmetic", "sentiment", "games"}
    assert any("classroom" in p.parts for p in RUNS)


@pytest.mark.parametrize("path", RUNS, ids=lambda p: str(p.relative_to(REPO / "results")))
def test_first_figure_of_an_executed_run_is_within_three_screens(path):
    px = first_figure_px(json.loads(path.read_text()))
    assert px is not None, f"{path}: no figure"
    assert px <= LIMIT_PX, f"{path}: first figure ~{px} px down (limit {LIMIT_PX})"
