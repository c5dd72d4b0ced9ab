"""The evaluation numbers against expectations worked out by hand, not against the evaluation itself:
arithmetic ``evaluate()`` on a stub model whose answer logits are made up here, and the games and
sentiment summaries on small hand-made tables."""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from rlformal_utils.arithmetic import task
from rlformal_utils.arithmetic.evaluate import evaluate, prompt_tensors


class LogitsModel(torch.nn.Module):
    """A stand-in causal LM: the logits after each prompt are looked up in ``table`` (prompt ids -> row)."""

    def __init__(self, table: dict):
        super().__init__()
        self.table = table
        self.unused = torch.nn.Parameter(torch.zeros(1))  # a device to report

    def forward(self, input_ids, attention_mask=None, **kwargs):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        rows = [self.table[tuple(ids[m.bool()].tolist())] for ids, m in zip(input_ids, mask)]
        return SimpleNamespace(logits=torch.stack(rows)[:, None, :])


def off_by_one_reward():
    return 2 / (1 + math.exp(1 / 10))   # the reward's formula at err = 1


@pytest.fixture(scope="module")
def heldout():
    return task.make_splits(0, 40, seed=3).heldout


def _stub(tok, problems, peak_of, peak=1.0, banned_peak=None):
    """Logits 0 everywhere except ``peak`` on the token of ``peak_of(i, problem)``: with 103 allowed
    answers a peak of 1 is the argmax with only e / (e + 102) = 2.6 % of the probability, so one
    sampled answer rarely equals the argmax. ``banned_peak`` puts a higher logit on [BOS]."""
    table = {}
    for i, (ids, p) in enumerate(zip(prompt_tensors(tok, problems), problems)):
        row = torch.zeros(len(tok))
        row[tok.convert_tokens_to_ids(peak_of(i, p))] = peak
        if banned_peak is not None:
            row[tok.bos_token_id] = banned_peak
        table[tuple(ids.tolist())] = row
    return LogitsModel(table)


def _wrong_by_5(answer):
    return answer + 5 if answer + 5 <= task.MAX_NUMBER else answer - 5


def test_greedy_exact_match_and_reward_when_the_argmax_is_right_on_half_the_problems(tok, heldout):
    model = _stub(tok, heldout, lambda i, p: str(p.answer if i % 2 == 0 else _wrong_by_5(p.answer)),
                  banned_peak=3.0)  # a banned token above everything: the greedy answer ignores it
    result = evaluate(model, tok, heldout, batch_size=16)
    assert result["greedy_exact_match"] == 0.5
    expected = (1.0 + 2 / (1 + math.exp(5 / 10))) / 2            # exact: 1; off by 5: 0.7551
    assert result["greedy_reward"] == pytest.approx(expected, rel=1e-9)
    assert "[BOS]" not in result["greedy_answers"] and sum(result["greedy_answers"].values()) == len(heldout)


def test_argmax_on_the_answer_minus_one_scores_zero_and_the_off_by_one_reward(tok, heldout):
    problems = [p for p in heldout if p.answer >= 1]
    model = _stub(tok, problems, lambda i, p: str(p.answer - 1), peak=30.0)   # (almost) certain
    result = evaluate(model, tok, problems)
    assert result["greedy_exact_match"] == 0.0 and result["sampled_exact_match"] == 0.0
    assert result["greedy_reward"] == pytest.approx(off_by_one_reward(), rel=1e-9)
    assert result["greedy_reward"] == pytest.approx(0.95, abs=1e-4)
    assert result["sampled_reward"] == pytest.approx(off_by_one_reward(), rel=1e-9)


def test_the_greedy_measures_come_from_the_argmax_not_from_a_sample(tok, heldout):
    """Peaked but far from certain: the argmax is always right, a sampled answer rarely."""
    result = evaluate(_stub(tok, heldout, lambda i, p: str(p.answer)), tok, heldout)
    assert result["greedy_exact_match"] == 1.0 and result["greedy_reward"] == pytest.approx(1.0)
    assert result["sampled_exact_match"] < 0.25 and result["sampled_reward"] < 0.8


# ----------------------------------------------------------------------------- games
def test_games_summary_shares_on_a_hand_made_table():
    from rlformal_utils.games.evaluate import summarise
    rows = [dict(compiles=True, playable=True, reward=0.9, exact=True, novel=False, description="A"),
            dict(compiles=True, playable=False, reward=0.05, exact=False, novel=False, description="B"),
            dict(compiles=True, playable=True, reward=0.6, exact=False, novel=True, description="C"),
            dict(compiles=False, playable=False, reward=0.0, exact=False, novel=False, description="D"),
            dict(compiles=True, playable=True, reward=0.8, exact=False, novel=True, description="C")]
    assert summarise(rows) == dict(n=5, compile_share=4 / 5, playable_share=3 / 5,
                                   mean_reward=pytest.approx(2.35 / 5), exact_share=1 / 5,
                                   novel_playable_share=2 / 5, novel_playable_games=1)  # "C" twice is one game
    assert summarise([]) == dict(n=0, compile_share=0.0, playable_share=0.0, mean_reward=0.0, exact_share=0.0,
                                 novel_playable_share=0.0, novel_playable_games=0)


# ----------------------------------------------------------------------------- sentiment
def test_sentiment_summary_on_a_hand_made_table():
    from rlformal_utils.sentiment.evaluate import eval_summary
    df = pd.DataFrame(dict(
        reward=[2.0, -1.0, 0.5, 3.5], reward_positive=[True, False, True, True],
        judge_score=[0.6, -0.2, 0.0, 0.8], judge_positive=[True, False, False, True],
        response_nll=[4.0, 6.0, 2.0, 8.0], response_tokens=[2, 3, 1, 4],
        response=["great film", "bad bad", "ok", "a great great story"],
        review_similarity=[0.4, 0.5, 0.3, 0.6]))
    s = eval_summary(df)
    assert s["n"] == 4
    assert s["reward_mean"] == pytest.approx(1.25) and s["reward_median"] == pytest.approx(1.25)
    assert s["reward_sd"] == pytest.approx(math.sqrt((0.75 ** 2 + 2.25 ** 2 + 0.75 ** 2 + 2.25 ** 2) / 4))
    assert s["reward_positive_share"] == 0.75 and s["judge_positive_share"] == 0.5
    assert s["judge_mean"] == pytest.approx(0.3)
    assert s["perplexity"] == pytest.approx(math.exp(20.0 / 10))        # 20 nats over 10 tokens
    assert s["response_tokens_mean"] == 2.5
    assert s["distinct_1"] == pytest.approx(6 / 9)   # great film bad ok a story / 9 words
    assert s["distinct_2"] == pytest.approx(5 / 5)   # (great film) (bad bad) (a great) (great great) (great story)
    assert s["repetition"] == pytest.approx(np.mean([0, 1 / 2, 0, 1 / 4]))
    assert s["review_similarity"] == pytest.approx(0.45)


def test_the_positive_share_is_the_reward_models_own_verdict():
    from rlformal_utils.sentiment.reward import is_positive
    classifier, vader = SimpleNamespace(threshold=0.0), SimpleNamespace(threshold=0.05)
    scores = [-0.3, 0.0, 0.01, 0.05, 0.7]
    assert is_positive(classifier, scores).tolist() == [False, False, True, True, True]   # logit > 0
    assert is_positive(vader, scores).tolist() == [False, False, False, True, True]       # compound >= 0.05
