"""The sentiment evaluation that decides: the review-vs-other classifier (its texts, and its check on
held-out text and on the committed runs' collapse and drift), the review share in the evaluation
and its summary, the paired bootstrap and the t-interval against hand-worked values, the
median seed of the example table, and the findings per algorithm with intervals and target counts."""
import math

import numpy as np
import pandas as pd
import pytest

from rlformal_utils import sentiment as S
from rlformal_utils.runs import REPO_ROOT
from rlformal_utils.sentiment import intervals as I
from rlformal_utils.sentiment import ontask as O
from rlformal_utils.sentiment import plots

RESULTS = REPO_ROOT / "results" / "sentiment"
COLLAPSE = RESULTS.parent / "long" / "sentiment" / "smollm2-135m-lora16_kl0_s0" / "eval_samples.csv"   # KL 0: one exclamation, repeated
DRIFT = RESULTS / "smollm2-135m-lora16_kl0.2_s0" / "eval_samples.csv"    # KL 0.2, seed 0: self-help prose


# ----------------------------------------------------------------------------- the classifier's texts
def test_cut_ends_at_a_word_boundary():
    assert O.cut("one two three four", 9) == "one two"
    assert O.cut("one two three four", 7) == "one two"
    assert O.cut("  one\ntwo  ", 50) == "one two"
    assert O.cut("abcdefghij klm", 4) == "abcd"  # one long word: cut inside it


def test_texts_are_balanced_split_by_movie_and_spliced_after_a_review_start():
    config = O.ontask_config(per_class=200)
    texts = O.ontask_texts(config)
    train, held = texts[texts["split"] == "train"], texts[texts["split"] == "heldout"]
    assert (train["label"] == 1).sum() == (train["label"] == 0).sum() == 200
    assert (held["label"] == 1).sum() == (held["label"] == 0).sum() == 50
    assert set(train.loc[train["label"] == 0, "source"]) == set(O.SOURCES)
    assert train["text"].str.len().max() <= config["cut_chars"][1]
    assert held["text"].str.len().max() <= config["check_chars"]
    # a spliced text starts with the first words of a real review, whatever its label
    reviews = S.load_reviews()
    starts = {" ".join(t.split()[:1]) for t in reviews["text"]}
    for _, row in texts[texts["spliced"]].sample(40, random_state=0).iterrows():
        assert row["text"].split()[0] in starts
    # plot synopses of held-out movies never train the classifier
    others = O.other_texts()
    held_movies = set(reviews.loc[reviews["split"] == "heldout", "movie"])
    plots_ = others[others["source"] == "plot synopses"]
    assert set(plots_.loc[plots_["split"] == "train", "doc"].str[6:]).isdisjoint(held_movies)


# ----------------------------------------------------------------------------- its check
@pytest.fixture(scope="module")
def ontask():
    """The classifier the quick profile's runs use (all train movies), built in the test cache."""
    return S.ontask.make_ontask()


def test_the_classifier_tells_reviews_from_other_text_and_sees_collapse_and_drift(ontask):
    m = ontask.metrics
    assert m["heldout_review_share"] >= 0.8, m     # real reviews of held-out movies, cut to 80 characters
    assert m["heldout_other_share"] <= 0.15, m     # speeches, debates, headlines, synopses of held-out documents
    assert m["heldout_spliced_other_share"] < 0.5 < m["heldout_spliced_review_share"], m
    collapse = O.review_shares(ontask, pd.read_csv(COLLAPSE))
    drift = O.review_shares(ontask, pd.read_csv(DRIFT))
    # each against its own run's base-model responses (the runs may hold different numbers of prompts)
    assert collapse["after"] <= collapse["before"] - 0.15, collapse
    assert drift["after"] <= drift["before"] - 0.05, drift
    table = plots.runs_table(plots.load_runs(COLLAPSE.parent.parent, ontask=lambda config: ontask, n_boot=50)[1])
    text = O.check_text(ontask.metrics, table)
    assert f"smollm2-135m-lora16_kl0_s0: review share {collapse['before']:.2f} before -> {collapse['after']:.2f} after" in text
    print(text)


# ----------------------------------------------------------------------------- the evaluation
class Stub:
    """Judges a text a review when its length is even, and remembers what it was shown."""
    name, threshold = "stub", 0.0

    def __init__(self):
        self.seen = []

    def __call__(self, texts):
        self.seen.append(list(texts))
        return np.array([len(t) % 2 == 0 for t in texts])


def test_the_review_share_is_the_share_of_texts_judged_reviews():
    df = pd.DataFrame(dict(reward=[1.0, 2.0, 3.0, 4.0], reward_positive=[True] * 4, judge_positive=[True, False] * 2,
                           judge_score=[0.1] * 4, response_nll=[2.0] * 4, response_tokens=[2] * 4,
                           response=["a b", "c d", "e f", "g h"], review=[True, False, True, True]))
    assert S.eval_summary(df)["review_share"] == 0.75
    assert "review_share" not in S.eval_summary(df.drop(columns="review"))


def test_the_evaluation_judges_review_start_plus_response():
    from rlformal_utils.pretrain import build_gpt2, train_bpe_tokenizer
    texts = list(S.load_rotten_tomatoes().query("label >= 0")["text"].head(300))
    tok = train_bpe_tokenizer(texts, 300, padding_side_in_config=True)
    model = build_gpt2("tiny", tok, n_positions=64, seed=0).eval()
    prompts = S.make_prompts(tok, texts, 24, seed=0, prefix=S.prompt_prefix(tok, "instruction"))

    class Length:
        name, threshold = "length", 0.0

        def __call__(self, t):
            return [float(len(x)) for x in t]
    ontask = Stub()
    df = S.evaluate(model, model, tok, prompts, Length(), Length(), seed=0, ontask=ontask)
    assert ontask.seen == [[p["query_text"] + r for p, r in zip(prompts, df["response"])]] == [df["text"].tolist()]
    assert df["review"].tolist() == [len(t) % 2 == 0 for t in df["text"]]
    assert all(S.INSTRUCTION not in t for t in df["text"])


# ----------------------------------------------------------------------------- intervals
def test_the_bootstrap_is_paired_over_prompts():
    rng = np.random.default_rng(1)
    before = rng.normal(0, 5, 200)  # large differences between prompts ...
    samples = pd.DataFrame(dict(reward_before=before, reward_after=before + 1.5))  # ... the same gain on each
    est, lo, hi = I.bootstrap_intervals(samples)["reward_gain"]
    assert est == pytest.approx(1.5) and lo == pytest.approx(1.5) and hi == pytest.approx(1.5)


def test_the_bootstrap_interval_of_a_mean_matches_the_normal_approximation():
    rng = np.random.default_rng(2)
    diff = rng.normal(1.0, 2.0, 400)
    samples = pd.DataFrame(dict(reward_before=np.zeros(400), reward_after=diff))
    est, lo, hi = I.bootstrap_intervals(samples, n_boot=4000)["reward_gain"]
    se = diff.std(ddof=1) / math.sqrt(400)
    assert est == pytest.approx(diff.mean())
    assert lo == pytest.approx(diff.mean() - 1.96 * se, abs=0.2 * se)
    assert hi == pytest.approx(diff.mean() + 1.96 * se, abs=0.2 * se)
    # two prompts, judged 0 and 1: the resampled share is 0, 1/2 or 1 (1/4, 1/2, 1/4): 95 % spans [0, 1]
    est, lo, hi = I.bootstrap_intervals(pd.DataFrame(dict(judge_positive_after=[False, True])))["judge_positive_after"]
    assert (est, lo, hi) == (0.5, 0.0, 1.0)
    # the same seed, the same interval
    assert I.bootstrap_intervals(samples, seed=3) == I.bootstrap_intervals(samples, seed=3)


def test_the_perplexity_ratio_is_token_weighted_and_resampled_in_pairs():
    # before: NLL 2 over 1 token and 4 over 3 tokens -> 6/4 = 1.5 per token; after: 3 per token
    samples = pd.DataFrame(dict(response_nll_before=[2.0, 4.0], response_tokens_before=[1, 3],
                                response_nll_after=[3.0, 3.0], response_tokens_after=[1, 1]))
    assert I.bootstrap_intervals(samples)["perplexity_ratio"][0] == pytest.approx(math.exp(1.5))
    # the same NLL per token on every prompt, before and after: every resample gives exp(3 - 1)
    n = 50
    tokens = np.arange(1, n + 1)
    same = pd.DataFrame(dict(response_nll_before=1.0 * tokens, response_tokens_before=tokens,
                             response_nll_after=3.0 * tokens[::-1], response_tokens_after=tokens[::-1]))
    est, lo, hi = I.bootstrap_intervals(same)["perplexity_ratio"]
    assert est == pytest.approx(math.e ** 2) and lo == pytest.approx(math.e ** 2) and hi == pytest.approx(math.e ** 2)


def test_t_interval_against_the_t_table():
    # t(0.975, 2) = 4.3027, t(0.975, 1) = 12.7062 (printed t tables)
    m, lo, hi, n = I.t_interval([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3)
    assert lo == pytest.approx(2 - 4.3027 / math.sqrt(3), abs=1e-4) and hi == pytest.approx(2 + 4.3027 / math.sqrt(3), abs=1e-4)
    m, lo, hi, n = I.t_interval([6.0, 6.1, float("nan")])
    assert n == 2 and hi - m == pytest.approx(12.7062 * 0.1 / math.sqrt(2) / math.sqrt(2), abs=1e-4)
    # a share's interval stays in [0, 1]: 0.5 and 0.9 give 0.7 ± 12.7062 * 0.2828 / 1.4142 = 0.7 ± 2.54
    assert I.t_interval([0.5, 0.9], bounds=(0.0, 1.0))[1:3] == (0.0, 1.0)
    m, lo, hi, n = I.t_interval([5.0])
    assert (m, n) == (5.0, 1) and math.isnan(lo) and math.isnan(hi)
    assert I.fmt_interval(2.0, 1.0, 3.0, 2, True) == "+2.00 [+1.00, +3.00]" and I.fmt_interval(2.0, math.nan, math.nan) == "2.00"


# ----------------------------------------------------------------------------- tables and findings
def _runs(gains, algorithm=None, kl=0.2):
    rows = []
    for seed, gain in gains.items():
        rows.append(dict(run=f"r{kl}_{seed}_{algorithm}", setting=f"p, reward minilm-logreg, KL {kl:g}", seed=seed,
                         reward_name="minilm-logreg", judge_name="vader", policy="p", kl_coef=kl,
                         before_reward_mean=0.5, after_reward_mean=0.5 + gain, before_n=4,
                         before_judge_positive_share=0.4, after_judge_positive_share=0.75 + 0.1 * seed,
                         before_perplexity=40.0, after_perplexity=40.0 * (1.2 + 0.2 * seed),
                         before_review_share=0.6, after_review_share=0.5, algorithm=algorithm))
    return pd.DataFrame(rows)


def test_the_example_table_comes_from_the_median_seed_by_reward_gain():
    runs = _runs({0: 3.0, 1: 1.0, 2: 2.0})
    assert plots.median_seed(runs, runs["setting"].iloc[0]) == 2
    assert plots.median_seed(_runs({0: 3.0, 1: 1.0, 2: 2.0, 3: 2.5}), runs["setting"].iloc[0]) == 2  # lower middle
    samples = pd.concat([pd.DataFrame(dict(prompt=[f"p{s}"], response_before=["b"], reward_before=[0.5],
                                           response_after=[f"seed {s}"], reward_after=[0.5 + g], seed=[s],
                                           setting=[runs["setting"].iloc[0]]))
                         for s, g in {0: 3.0, 1: 1.0, 2: 2.0}.items()])
    setting, seed, table = plots.examples_table(runs, samples)
    assert seed == 2 and table["response_after"].tolist() == ["seed 2"]


def test_findings_give_intervals_seed_counts_and_targets_per_algorithm():
    runs = pd.concat([_runs({0: 1.5, 1: 2.5}), _runs({0: 2.2, 1: 3.0, 2: 2.4}, algorithm="group")],
                     ignore_index=True)
    table = plots.runs_table(runs)
    assert table["algorithm"].tolist() == ["group"] * 3 + ["ppo"] * 2  # a run without one is a PPO run
    lines = plots.findings(table).splitlines()
    assert lines[0].startswith("- PPO, p, reward minilm-logreg, KL 0.2 (2 seeds; 95 % t-interval over seeds)")
    # PPO gains 1.5 and 2.5: mean 2.0, sd 0.7071, t(0.975, 1) = 12.7062 -> half width 6.3531
    assert "reward gain +2.00 [-4.35, +8.35] (target >= 2: 1/2 seeds)" in lines[0]
    assert "perplexity ratio 1.30 [" in lines[0] and "(target <= 1.5: 2/2 seeds)" in lines[0]
    assert "review share 0.50" in lines[0]
    # group: gains 2.2, 3.0, 2.4, judge 0.75, 0.85, 0.95, ratio 1.2, 1.4, 1.6
    assert lines[1].startswith("- group-relative, p, reward minilm-logreg, KL 0.2, k4 (3 seeds;")
    assert "(target >= 2: 3/3 seeds)" in lines[1] and "(target >= 0.8: 2/3 seeds)" in lines[1]
    assert "(target <= 1.5: 2/3 seeds)" in lines[1]


def test_one_seed_shows_its_bootstrap_interval():
    table = plots.runs_table(_runs({0: 2.0}).assign(reward_gain_lo=1.1, reward_gain_hi=2.9))
    line = plots.findings(table)
    assert "(1 seed; 95 % bootstrap over prompts)" in line and "reward gain +2.00 [+1.10, +2.90]" in line


def test_findings_blocks_keep_algorithms_settings_and_profiles_apart(tmp_path):
    from rlformal_utils import findings
    runs = pd.concat([_runs({0: 1.5, 1: 2.5}), _runs({0: 2.2, 1: 3.0, 2: 2.4}, algorithm="group")], ignore_index=True)
    long = pd.concat([_runs({0: 4.0}, kl=0.0), _runs({0: 0.4}, kl=0.6),
                      _runs({0: 2.6}, algorithm="group", kl=0.05).assign(entropy_coef=0.1)], ignore_index=True)
    (tmp_path / "results" / "long").mkdir(parents=True)
    plots.runs_table(runs).to_csv(tmp_path / "results" / "sentiment_runs.csv", index=False)
    table = plots.runs_table(long)
    table.loc[table["algorithm"] == "group", "update"] = "KL 0.05, group-relative k4, entropy 0.1"
    table.to_csv(tmp_path / "results" / "long" / "sentiment_runs.csv", index=False)
    d = findings.Data(tmp_path)
    assert len(d.sentiment_rows(0.2)) == 2 and len(d.sentiment_rows(0.2, "group")) == 3  # never pooled
    rows = findings.sentiment_table(d).splitlines()
    assert rows[2].startswith("| quick | PPO | KL 0.2 | 2 | +2.00 [-4.35, +8.35] |") and rows[2].endswith("| 1/2 / 1/2 / 2/2 / 1/2 |")
    assert rows[3].startswith("| quick | group-relative | KL 0.2, k4 | 3 |") and rows[3].endswith("| 3/3 / 2/3 / 2/3 / 1/3 |")
    assert [r.split(" | ")[:3] for r in rows[4:6]] == [["| long", "PPO", "KL 0"], ["| long", "PPO", "KL 0.6"]]
    assert rows[6] == "" and "entropy 0.1" not in "\n".join(rows)  # the long group sweep has its own table
    text = findings.sentiment(d)
    assert "**KL 0 (the paper's effective setting) (long profile) stays fluent**" in text  # ratio 1.2 <= 1.5
    assert "**PPO at KL 0.2 moves the reward less than TRL's run (+2.24), within the perplexity target.**" in text
    assert "**KL 0.6 (long profile) barely moves**" in text
    assert "**Group-relative update, KL 0.2, k4** (3 seeds)" in text and "KL 0.05, k4, entropy 0.1**" not in text


def test_a_runs_statement_gives_its_bootstrap_intervals_when_the_summary_has_them():
    from rlformal_utils.params import defaults
    from rlformal_utils.sentiment import params as P
    before = dict(reward_mean=0.2, judge_positive_share=0.4, perplexity=40.0, review_similarity=0.4, review_share=0.6, n=4)
    after = dict(before, reward_mean=2.2, review_share=0.5)
    summary = dict(config=dict(defaults(P.PARAMS)), policy_label="p", judge="vader", before=before, after=after,
                   train_seconds=60.0, real_review_similarity=0.44)
    text = S.result_text(summary)
    assert "share judged a review went from 0.60 to 0.50." in text and "bootstrap" not in text
    samples = pd.DataFrame(dict(reward_before=[0.0, 1.0, 2.0], reward_after=[2.0, 3.0, 4.0],
                                judge_positive_after=[True, True, True]))
    text = S.result_text(dict(summary, intervals=I.bootstrap_intervals(samples)))
    assert text.endswith(" 95 % intervals (paired bootstrap over the held-out prompts): reward gain [2.00, 2.00], "
                         "judge positive share [1.00, 1.00].")


def test_group_settings_that_differ_only_in_the_update_never_share_a_label():
    base = dict(kl_coef=0.2, adaptive_kl=False, algorithm="group", group_size=4, group_epochs=1, entropy_coef=0.0,
                ppo_lr=1e-3, ppo_batch_size=16, ppo_mini_batch_size=16)
    labels = {plots.update_label(dict(base, **change)) for change in
              [{}, dict(ppo_mini_batch_size=4), dict(group_size=8), dict(entropy_coef=0.1), dict(ppo_lr=3e-3),
               dict(group_epochs=2), dict(kl_coef=0.1)]}
    assert len(labels) == 7
    assert plots.update_label(dict(base, ppo_mini_batch_size=4)) == "KL 0.2, group-relative k4, mini-batch 4"
    assert plots.update_label(dict(kl_coef=0.2, adaptive_kl=False)) == "KL 0.2"  # a PPO run names no group setting


def test_training_seconds_add_up_each_runs_step_times_from_zero():
    """Hand-worked: two runs, PPO's and the group update's time columns, step 0 without times."""
    import pandas as pd
    from rlformal_utils.sentiment.plots import training_seconds
    m = pd.DataFrame(dict(run=["a", "a", "a", "b", "b"], step=[0, 1, 2, 0, 1],
                          time_generate=[None, 1.0, 2.0, None, 0.5], time_reward=[None, 0.5, 0.5, None, 0.25],
                          time_ppo_step=[None, 3.0, 1.0, None, None], time_update=[None, None, None, None, 2.0]))
    assert training_seconds(m).tolist() == [0.0, 4.5, 8.0, 0.0, 2.75]


def test_difference_interval_is_welchs_t_interval():
    """Against scipy's own Welch test (an independent implementation) and a hand-worked equal case."""
    from scipy.stats import ttest_ind
    from rlformal_utils.sentiment.intervals import difference_interval
    a, b = [4.36, 3.52, 4.18], [1.88, 3.08, 2.16]
    diff, lo, hi = difference_interval(a, b)
    ci = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert abs(diff - (sum(a) / 3 - sum(b) / 3)) < 1e-12
    assert abs(lo - ci.low) < 1e-9 and abs(hi - ci.high) < 1e-9
    # equal sizes and variances: df = 2n - 2 = 4, half width t(4) * sqrt(2 s^2 / n) with s^2 = 1, n = 3
    diff, lo, hi = difference_interval([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert diff == 1.0 and abs((hi - lo) / 2 - 2.7764451051977987 * (2 / 3) ** 0.5) < 1e-9
    assert difference_interval([1.0], [0.0, 1.0])[1] != difference_interval([1.0], [0.0, 1.0])[1]  # NaN: one seed
