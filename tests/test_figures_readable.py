"""Sentiment and games figures as JupyterLab and GitHub show them: one quantity per axis, every
point inside its axes, no issue numbers in legends, and no text below ~9 px at display scale."""
import json
from pathlib import Path

import matplotlib
import matplotlib.collections
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlformal_utils.figures import style  # noqa: E402
from rlformal_utils.games import plots as G  # noqa: E402
from rlformal_utils.sentiment import plots as S  # noqa: E402
from test_sentiment import _runs_and_table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DISPLAY_PX = 1100  # width of a notebook's output area in Lab at 1400 px, and about GitHub's


def _heldout():
    rows = []
    for seed in (0, 1):
        for arm, share, reward in [("original", 1.0, 0.94), ("sft", 0.12, 0.11), ("ppo", 0.19, 0.18)]:
            rows.append(dict(run=f"r{seed}", seed=seed, arm=arm, compile_share=share, playable_share=share,
                             mean_reward=reward, exact_share=share / 2, novel_playable_share=share / 4, n=48,
                             novel_playable_games=1, ppo_steps=4, seconds_per_step=1.0, train_seconds=4.0))
    return pd.DataFrame(rows)


def _smallest_font_px(fig) -> float:
    fig.canvas.draw()
    scale = min(1.0, DISPLAY_PX / (fig.get_figwidth() * fig.dpi))
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip() and t.get_visible()]
    return min(sizes) * fig.dpi / 72 * scale


def _figures():
    style()
    runs, table = _runs_and_table()
    metrics = pd.DataFrame(dict(step=range(1, 6), reward=0.2, playable_share=0.3, compile_share=0.4, run="r0"))
    summary = {arm: g.iloc[0].to_dict() for arm, g in _heldout()[lambda d: d.seed == 0].groupby("arm")}
    return {"games held-out": G.fig_heldout(_heldout()), "games run": G.run_figure(metrics.drop(columns="run"), summary),
            "games training": G.fig_training(metrics), "sentiment KL sweep": S.fig_kl_sweep(table),
            "sentiment trade-off": S.fig_tradeoff(table)}


@pytest.fixture(scope="module")
def figures():
    figs = _figures()
    yield figs
    plt.close("all")


def test_games_figures_put_one_quantity_on_each_axis(figures):
    for name in ("games held-out", "games run"):
        labels = [a.get_ylabel() for a in figures[name].axes if a.get_ylabel()]
        assert not [l for l in labels if "/" in l], (name, labels)
        assert any("share" in l for l in labels) and any("reward" in l and "share" not in l for l in labels), labels


def test_sentiment_perplexity_points_lie_inside_their_axes(figures):
    for name in ("sentiment KL sweep", "sentiment trade-off"):
        for a in figures[name].axes:
            if "perplexity" not in a.get_ylabel():
                continue
            low, high = a.get_ylim()
            ys = [y for c in a.collections if isinstance(c, matplotlib.collections.PathCollection)  # the dots
                  for _, y in c.get_offsets()] + [y for l in a.lines for y in l.get_ydata()]
            assert ys and all(low <= y <= high for y in ys), (name, (low, high), max(ys))
            assert max(t for t in a.get_yticks() if low <= t <= high) >= max(ys) or high >= max(ys)


def test_legends_name_no_issue_and_text_is_readable_at_display_scale(figures):
    for name, fig in figures.items():
        texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
        assert not [t for t in texts if "issue" in t.lower()], name
        assert _smallest_font_px(fig) >= 9, name


def test_games_figures_notebook_renders_the_samples_as_markdown():
    nb = json.loads((REPO / "notebooks" / "games_figures.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "display(Markdown(text))" in code and "print(text)" not in code
