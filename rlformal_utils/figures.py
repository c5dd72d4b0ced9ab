"""One figure style and one save for every figure notebook: PNG + PDF written atomically and
byte-stable (no timestamps), and mean ± sd over seeds with ddof=1 everywhere."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

STABLE_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None}}


def style() -> None:
    """Readable at the size the README shows the figures: 10-11 pt text, light grid."""
    import seaborn as sns  # here, not at the top: the run notebooks never need it (it imports scipy, ~0.5 s)

    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "legend.fontsize": 9, "axes.titlesize": 11,
                         "svg.hashsalt": "rlformal"})


def save(fig, name: str, figures_dir, show: bool = True) -> None:
    """``<figures_dir>/<name>.png`` and ``.pdf``; a redraw of the same data changes no byte."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        tmp = figures_dir / f".{name}.tmp.{ext}"
        fig.savefig(tmp, bbox_inches="tight", metadata=STABLE_METADATA[ext])
        tmp.replace(figures_dir / f"{name}.{ext}")
    if show:
        plt.show()
    else:
        plt.close(fig)


def mean_sd(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; nan for one value) and count."""
    v = np.asarray(pd.Series(values).dropna(), dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v)


def fmt_mean_sd(values, digits: int = 3, count: bool = True, missing: str = "n/a") -> str:
    """'0.953 ± 0.012 (3)' for reading in tables (without '(3)' if not ``count``); one value prints
    without a spread, no value as ``missing``."""
    m, s, n = mean_sd(values)
    if n == 0:
        return missing
    suffix = f" ({n})" if count else ""
    if n == 1:
        return f"{m:.{digits}f}{suffix}"
    return f"{m:.{digits}f} ± {s:.{digits}f}{suffix}"


def thousands(ax, axis: str = "x", n_ticks: int = 5) -> None:
    """Ticks such as 50k, 100k, 1.5M on a linear axis of counts, at most ``n_ticks`` of them."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    def short(v, _pos):
        if abs(v) >= 1e6:
            return f"{v / 1e6:g}M"
        return f"{v / 1e3:g}k" if abs(v) >= 1e3 else f"{v:g}"

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(MaxNLocator(n_ticks))
    target.set_major_formatter(FuncFormatter(short))


def band(ax, df: pd.DataFrame, x: str, y: str, label: str, color=None, **kw) -> None:
    """Mean line and ± sd (ddof=1) band over the runs in ``df`` (one value per run and x)."""
    g = df.dropna(subset=[y]).groupby(x)[y]
    mean, sd = g.mean(), g.std(ddof=1).fillna(0.0)
    line, = ax.plot(mean.index, mean.values, label=label, color=color, **kw)
    ax.fill_between(mean.index, (mean - sd).values, (mean + sd).values, color=line.get_color(), alpha=0.18, lw=0)
