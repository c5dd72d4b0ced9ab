"""95 % intervals: per run, a paired bootstrap over the held-out prompts of ``eval_samples.csv``;
across seeds, a t-interval of the runs' values."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

# what a run's interval is computed for: name -> (columns it needs, statistic of resampled row indices)
MEASURES = ("reward_gain", "judge_positive_after", "perplexity_ratio", "review_share_after")


def _statistics(samples: pd.DataFrame) -> dict:
    """name -> function of an index array (rows of ``samples``, a resample) giving the statistic."""
    out = {}
    if {"reward_before", "reward_after"} <= set(samples):
        diff = (samples["reward_after"] - samples["reward_before"]).to_numpy(dtype=float)
        out["reward_gain"] = lambda idx: diff[idx].mean(-1)  # paired: one resample of prompts for both
    if "judge_positive_after" in samples:
        judge = samples["judge_positive_after"].astype(float).to_numpy()
        out["judge_positive_after"] = lambda idx: judge[idx].mean(-1)
    cols = ["response_nll_before", "response_tokens_before", "response_nll_after", "response_tokens_after"]
    if set(cols) <= set(samples):
        nb, tb, na, ta = (samples[c].to_numpy(dtype=float) for c in cols)

        def ratio(idx):  # perplexity after / before, each exp(sum NLL / sum tokens) over the same prompts
            return np.exp(na[idx].sum(-1) / np.maximum(ta[idx].sum(-1), 1.0)
                          - nb[idx].sum(-1) / np.maximum(tb[idx].sum(-1), 1.0))
        out["perplexity_ratio"] = ratio
    if "review_after" in samples:
        review = samples["review_after"].astype(float).to_numpy()
        out["review_share_after"] = lambda idx: review[idx].mean(-1)
    return out


def bootstrap_intervals(samples: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap over held-out prompts: each of ``n_boot`` resamples draws len(samples)
    prompts with replacement, and every measure reads the same rows, before and after PPO alike (a
    paired bootstrap). Returns {measure: (estimate on all prompts, low, high)} for the measures
    whose columns ``samples`` has: the reward gain (mean of after - before), the judge's positive
    share after PPO, the perplexity ratio (after / before) and the share judged a review after."""
    n = len(samples)
    stats = _statistics(samples)
    if not n or not stats:
        return {}
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    alpha = (1 - level) / 2
    out = {}
    for name, f in stats.items():
        values = f(idx)
        lo, hi = np.quantile(values, [alpha, 1 - alpha])
        out[name] = (float(f(np.arange(n))), float(lo), float(hi))
    return out


def interval_columns(samples: pd.DataFrame, **kwargs) -> dict:
    """``bootstrap_intervals`` as flat columns: ``<measure>_lo`` and ``<measure>_hi``."""
    out = {}
    for name, (_, lo, hi) in bootstrap_intervals(samples, **kwargs).items():
        out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
    return out


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided Student-t quantile (``scipy.stats.t``)."""
    from scipy.stats import t
    return float(t.ppf(1 - (1 - level) / 2, df))


BOUNDS = {"judge_positive_after": (0.0, 1.0), "review_share_after": (0.0, 1.0), "perplexity_ratio": (0.0, math.inf)}


def t_interval(values, level: float = 0.95, bounds: tuple[float, float] = (-math.inf, math.inf)
               ) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the mean over seeds: mean ± t(n-1) * sd / sqrt(n) with the sample sd
    (ddof=1), cut to ``bounds`` (a share stays in [0, 1], a ratio above 0: with few seeds the
    interval is wide); low and high are NaN for fewer than two values. NaNs are dropped."""
    v = np.asarray([x for x in values if x == x], dtype=float)
    if not len(v):
        return float("nan"), float("nan"), float("nan"), 0
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan"), 1
    half = t_quantile(len(v) - 1, level) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return m, max(m - half, bounds[0]), min(m + half, bounds[1]), len(v)


def difference_interval(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): Welch's t-interval of the difference of two settings' means
    over their seeds (sample variances, Welch-Satterthwaite degrees of freedom); low and high are
    NaN when either side has fewer than two values. NaNs are dropped."""
    a = np.asarray([x for x in a if x == x], dtype=float)
    b = np.asarray([x for x in b if x == x], dtype=float)
    if not len(a) or not len(b):
        return float("nan"), float("nan"), float("nan")
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    from scipy.stats import t
    half = float(t.ppf(1 - (1 - level) / 2, df)) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def fmt_interval(m: float, lo: float, hi: float, digits: int = 2, signed: bool = False, unit: str = "") -> str:
    """``2.37 [0.80, 3.94]``; without an interval the value alone."""
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    text = f.format(m) + unit
    return text if lo != lo or hi != hi else f"{text} [{f.format(lo)}, {f.format(hi)}]"
