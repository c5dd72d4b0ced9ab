"""The arithmetic stability criterion, its tables and its paragraph, on hand-made trajectories and a
tiny results folder written here (no training)."""
import json

import numpy as np
import pandas as pd
import pytest

from rlformal_utils.arithmetic import stability as S

ANSWERS = np.arange(0, 100_001, 500)  # a run of 100k answers logged every 500


def trajectory(high: dict, base: float = 0.1) -> np.ndarray:
    """max p̄ = ``base``, and ``value`` on [start, end) for each (start, end): value of ``high``."""
    share = np.full(len(ANSWERS), base)
    for (start, end), value in high.items():
        share[(ANSWERS >= start) & (ANSWERS < end)] = value
    return share


# ----------------------------------------------------------------------------- the criterion
def test_a_spike_shorter_than_ten_percent_is_not_a_collapse():
    j = S.judge(ANSWERS, trajectory({(40_000, 48_000): 0.9}))
    assert j["judged"] and not j["collapsed"] and not j["ended_collapsed"]
    assert np.isnan(j["collapsed_at_answers"])
    assert 0.05 < j["longest_stretch"] < 0.10  # the stretch is seen, it is only too short


def test_a_sustained_stretch_is_a_collapse_and_says_where_it_began():
    j = S.judge(ANSWERS, trajectory({(40_000, 60_000): 0.9}))
    assert j["collapsed"] and not j["ended_collapsed"]  # it recovered before the end
    assert 40_000 <= j["collapsed_at_answers"] <= 42_500  # the trailing median needs half a window
    assert j["longest_stretch"] == pytest.approx(0.20, abs=0.01)


def test_a_run_that_ends_in_a_sustained_collapse_ended_collapsed():
    j = S.judge(ANSWERS, trajectory({(85_000, 100_001): 0.9}))
    assert j["collapsed"] and j["ended_collapsed"]


def test_one_high_final_point_is_not_a_collapse():
    """What a judgement on the final evaluation alone would call collapsed."""
    assert not S.judge(ANSWERS, trajectory({(99_500, 100_001): 0.9}))["collapsed"]
    assert not S.judge(ANSWERS, trajectory({(95_000, 100_001): 0.9}))["collapsed"]  # 5 %: too short


def test_the_threshold_itself_is_not_above_it():
    assert not S.judge(ANSWERS, np.full(len(ANSWERS), S.THRESHOLD))["collapsed"]
    assert S.judge(ANSWERS, np.full(len(ANSWERS), S.THRESHOLD + 1e-6))["collapsed"]
    assert S.judge(ANSWERS, np.full(len(ANSWERS), 0.31))["ended_collapsed"]


def test_the_window_and_the_stretch_are_counted_in_answers_not_in_logged_steps():
    """Early steps are logged densely: 60 steps in the first 1 % of answers, all at 0.9."""
    early = np.linspace(0, 1_000, 60)
    answers = np.concatenate([early, np.arange(2_000, 100_001, 2_000)])
    share = np.concatenate([np.full(60, 0.9), np.full(50, 0.1)])
    assert not S.judge(answers, share)["collapsed"]  # 55 % of the rows, 1 % of the answers


def test_the_median_ignores_single_noisy_batches():
    share = trajectory({(20_000, 80_000): 0.9})
    share[::4] = 0.05  # every fourth batch dips: a collapse all the same
    assert S.judge(ANSWERS, share)["collapsed"]
    spikes = np.full(len(ANSWERS), 0.1)
    spikes[::3] = 0.95  # a third of the batches spike: no sustained collapse
    assert not S.judge(ANSWERS, spikes)["collapsed"]


def test_a_run_without_training_batches_is_not_judged():
    j = S.judge([], [])
    assert not j["judged"] and not j["collapsed"]
    assert not S.judge([0, 10], [np.nan, np.nan])["judged"]


def test_rolling_median_by_hand():
    med = S.rolling_median([0, 1, 2, 10, 11], [0.1, 0.5, 0.9, 0.2, 0.4], window=3)
    # windows (a-3, a]: {0}, {0,1}, {0,1,2}, {10}, {10,11}
    assert med == pytest.approx([0.1, 0.3, 0.5, 0.2, 0.3])


# ----------------------------------------------------------------------------- a tiny results folder
def write_run(folder, name, final, collapsed, algorithm="ppo", regulariser="none", seed=0, **cfg):
    run = folder / name
    run.mkdir(parents=True)
    total = 150_016
    answers = np.linspace(0, total, 101).round()
    share = np.where(answers > total * 0.3, 0.6, 0.1) if collapsed else np.full(len(answers), 0.1)
    metrics = pd.DataFrame(dict(step=range(len(answers)), answers_seen=answers, rollout_max_share=share,
                                heldout_greedy_exact_match=np.linspace(0, final, len(answers)),
                                unseen_greedy_exact_match=np.linspace(0, final / 2, len(answers)),
                                heldout_sampled_reward=0.9))
    metrics.loc[0, "rollout_max_share"] = np.nan  # the step-0 evaluation has no training batch
    metrics.to_csv(run / "metrics.csv", index=False)
    config = dict(algorithm=algorithm, regulariser=regulariser, kl_reference="policy", pretrain_examples=256,
                  pretrain_steps=0, seed=seed, rl_lr=3e-4, entropy_coef=0.3, steps=2344, kl_controller="trl",
                  kl_coef=0.2, kl_target=3.0, mask_banned=True)
    config.update(cfg)
    ev = dict(greedy_exact_match=final, sampled_exact_match=final, sampled_reward=0.9, eval_max_share=0.1,
              eval_mutual_information=1.0, eval_batch_entropy=3.0, sampled_answers={"25": 3})
    summary = dict(config=config, answers_seen=total, final=dict(heldout=ev, unseen=dict(ev, greedy_exact_match=final / 2)),
                   naive_answer=25, naive_reward=0.75, true_answers={"25": 10, "3": 90}, train_seconds=1.0,
                   train_cpu_seconds=1.0)
    (run / "summary.json").write_text(json.dumps(summary))


def tiny_results(folder, batch=(0.5, 0.7, 0.9), token=(0.6, 0.8), none=(0.1, 0.2, 0.3), batch_collapsed=()):
    for seed, v in enumerate(none):
        write_run(folder, f"ppo_none_s{seed}", v, collapsed=True, seed=seed)
    for seed, v in enumerate(batch):
        write_run(folder, f"ppo_batch_s{seed}", v, collapsed=seed in batch_collapsed, regulariser="batch", seed=seed)
    for seed, v in enumerate(token):
        write_run(folder, f"ppo_token_s{seed}", v, collapsed=False, regulariser="token", seed=seed)
    return S.load([folder])


def test_tables_by_hand(tmp_path):
    judged = tiny_results(tmp_path / "arithmetic")
    table = S.stability_table(judged).set_index("arm")
    batch = table.loc["PPO, batch entropy, KL 0"]
    assert batch["seeds"] == 3 and batch["heldout_mean"] == pytest.approx(0.7)
    assert batch["heldout_sd"] == pytest.approx(0.2)  # ddof=1: sqrt((0.04 + 0 + 0.04) / 2)
    assert batch["unseen_mean"] == pytest.approx(0.35) and batch["unseen_sd"] == pytest.approx(0.1)
    token = table.loc["PPO, token entropy, KL 0"]
    assert token["heldout_sd"] == pytest.approx(np.sqrt(0.02)) and token["seeds"] == 2
    none = table.loc["PPO, no entropy term, KL 0"]
    assert (none["collapsed"], none["ended_collapsed"], none["judged"]) == (3, 3, 3)
    assert none["first_collapse_answers"] == pytest.approx(0.31 * 150_016, rel=0.05)
    assert batch["collapsed"] == 0
    md = S.stability_markdown(judged).set_index("arm")
    assert md.loc["PPO, batch entropy, KL 0", "held-out exact match"] == "0.700 ± 0.200"
    assert md.loc["PPO, no entropy term, KL 0", "collapsed"] == "3/3"
    assert md.loc["PPO, batch entropy, KL 0", "collapsed"] == "0/3"
    assert md.loc["PPO, token entropy, KL 0", "seed range"] == "0.600-0.800"


def test_sweeps_table_finds_its_points_and_names_the_missing_ones(tmp_path):
    folder = tmp_path / "arithmetic"
    tiny_results(folder)
    write_run(folder, "ppo_batch_c1_s0", 0.4, collapsed=True, regulariser="batch", entropy_coef=1.0)
    write_run(folder, "ppo_batch_lr_s0", 0.95, collapsed=False, regulariser="batch", rl_lr=1e-3)
    judged = S.load([folder])
    sweeps = S.sweeps_table(judged).set_index(["sweep", "setting"])
    coef = "PPO, KL 0: batch-entropy coefficient"
    assert sweeps.loc[(coef, "0"), "heldout_mean"] == pytest.approx(0.2)  # no entropy term = coefficient 0
    assert sweeps.loc[(coef, "0.3"), "seeds"] == 3 and sweeps.loc[(coef, "1"), "collapsed"] == 1
    assert sweeps.loc[(coef, "0.1"), "seeds"] == 0
    lr = "PPO, KL 0, batch entropy 0.3: learning rate"
    assert sweeps.loc[(lr, "0.001"), "heldout_mean"] == pytest.approx(0.95)
    assert sweeps.loc[(lr, "0.0003"), "heldout_mean"] == pytest.approx(0.7)
    md = S.sweeps_markdown(judged).set_index(["sweep", "setting"])
    assert md.loc[(coef, "0.1"), "held-out exact match"] == "not run"
    assert md.loc[(coef, "1"), "collapsed"] == "1/1"
    # the arms of one setting with another coefficient or learning rate are not pooled with it
    arms = S.stability_table(judged)["arm"]
    assert {"PPO, batch entropy 1, KL 0", "PPO, batch entropy, KL 0, lr 0.001"} <= set(arms)


def test_claim_reads_its_numbers_from_the_runs(tmp_path):
    helps = S.claim(tiny_results(tmp_path / "a" / "arithmetic"))
    assert "does aid exploration" in helps and "0.700 ± 0.200" in helps and "3/3" in helps
    assert "not specific to the batch term" in helps  # token entropy's 0.700 is within the spread
    worse = S.claim(tiny_results(tmp_path / "b" / "arithmetic", batch=(0.1, 0.15, 0.2), batch_collapsed=(0, 1)))
    assert "does not clearly aid" in worse and "0.150 ± 0.050" in worse and "2/3" in worse
    assert "lower than token entropy" in worse
    assert worse != helps
    better = S.claim(tiny_results(tmp_path / "c" / "arithmetic", batch=(0.95, 0.96, 0.97), token=(0.5, 0.55)))
    assert "higher than token entropy" in better and "not entirely stable\" is not borne out" in better.lower()


def test_claim_with_missing_runs(tmp_path):
    one_seed = tmp_path / "smoke" / "arithmetic"
    write_run(one_seed, "ppo_none_s0", 0.1, collapsed=True)
    assert "not among these results" in S.claim(S.load([one_seed]))
    write_run(one_seed, "ppo_batch_s0", 0.8, collapsed=False, regulariser="batch")
    text = S.claim(S.load([one_seed]))  # one seed each: no spread, no token arm, no sweeps
    assert "0.800 held-out exact match over 1 seed " in text and "token" not in text
    with pytest.raises(FileNotFoundError):
        S.load([tmp_path / "nothing"])


def test_profile_dirs_pool_quick_and_long_only(tmp_path):
    quick, long = tmp_path / "results" / "arithmetic", tmp_path / "results" / "long" / "arithmetic"
    quick.mkdir(parents=True)
    assert S.profile_dirs(quick, "quick") == [quick]
    long.mkdir(parents=True)
    assert S.profile_dirs(quick, "quick") == [quick, long]
    assert S.profile_dirs(long, "long") == [long, quick]
    assert S.profile_dirs(quick, "smoke") == [quick]


def test_fall_from_best_by_hand(tmp_path):
    folder = tmp_path / "arithmetic"
    write_run(folder, "ppo_batch_s0", 0.6, collapsed=False, regulariser="batch")
    metrics = pd.read_csv(folder / "ppo_batch_s0" / "metrics.csv")
    metrics.loc[50, "heldout_greedy_exact_match"] = 0.85  # its best evaluation, mid-run
    metrics.to_csv(folder / "ppo_batch_s0" / "metrics.csv", index=False)
    judged = S.load([folder])
    assert judged["fall_from_best"].iloc[0] == pytest.approx(0.25)
    assert S.stability_table(judged)["largest_fall_from_best"].iloc[0] == pytest.approx(0.25)


# ----------------------------------------------------------------------------- the figures
def _visible_axes(fig):
    return [a for a in fig.axes if a.get_visible()]


def test_stability_figure_one_column_per_arm_and_no_empty_panel(tmp_path):
    import matplotlib.pyplot as plt
    from rlformal_utils.arithmetic import plots

    folder = tmp_path / "arithmetic"
    tiny_results(folder)
    metrics, judged = S.load_with_metrics([folder])
    fig = plots.fig_stability(metrics, judged)  # no 'both' runs here: three columns, not four
    axes = _visible_axes(fig)
    assert len(axes) == 6 and all(a.lines for a in axes)
    assert any(line.get_ydata()[0] == S.THRESHOLD for a in axes[3:] for line in a.lines)  # the threshold drawn
    titles = " ".join(a.get_title() for a in axes)
    assert "collapsed 3/3" in titles and "0.700 ± 0.200" in titles
    plt.close(fig)


def test_ppo_diagnostics_leave_out_the_kl_panels_without_a_frozen_reference(tmp_path):
    import matplotlib.pyplot as plt
    from rlformal_utils.arithmetic import plots

    folder = tmp_path / "arithmetic"
    tiny_results(folder)
    for name in ["ppo_none_s0", "ppo_batch_s0"]:
        m = pd.read_csv(folder / name / "metrics.csv")
        m = m.assign(kl_coef=0.2, exact_kl=0.0, kl=0.0, value_return_corr=0.5, banned_mass=1e-3)
        m.to_csv(folder / name / "metrics.csv", index=False)
    metrics, _ = plots.load_runs(folder)
    fig = plots.fig_ppo_diagnostics(metrics)
    titles = [a.get_title() for a in _visible_axes(fig)]
    assert len(titles) == 2 and not any("KL" in t for t in titles)
    assert all(a.lines for a in _visible_axes(fig))
    plt.close(fig)


@pytest.mark.parametrize("n", [1, 2, 4, 5, 7])
def test_histograms_leave_no_empty_panel(tmp_path, n):
    import matplotlib.pyplot as plt
    from rlformal_utils.arithmetic import plots

    folder = tmp_path / "arithmetic"
    for i in range(n):
        write_run(folder, f"run{i}", 0.5, collapsed=False, regulariser="batch", entropy_coef=0.1 * (i + 1))
    _, runs = plots.load_runs(folder)
    fig = plots.fig_histograms(folder, runs, list(runs["arm"]), runs["start"].iloc[0])
    axes = _visible_axes(fig)
    assert len(axes) == n and all(a.patches for a in axes)
    # a short last row is centred under the full ones: no blank slot where a panel would be
    rows = {}
    for a in axes:
        box = a.get_position()
        rows.setdefault(round(box.y0, 2), []).append(box)
    middles = [(min(b.x0 for b in r) + max(b.x1 for b in r)) / 2 for r in rows.values()]
    assert max(middles) - min(middles) < 0.03, middles
    plt.close(fig)
