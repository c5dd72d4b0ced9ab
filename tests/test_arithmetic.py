"""The arithmetic task: generator, chains, splits, tokenizer and the paper's reward."""
import math
import random
import statistics

import pytest

from rlformal_utils.arithmetic import reward as R
from rlformal_utils.arithmetic import task as T


# ----------------------------------------------------------------------------- reward
@pytest.mark.parametrize("off_by, expected", [(0, 1.0), (1, 0.95), (2, 0.90), (5, 0.76), (10, 0.54), (20, 0.24)])
def test_reward_hand_worked_values(off_by, expected):
    # the values quoted in the paper's description: r = 2 / (1 + e^(err/10))
    prompt = "6 + 0 + 8 + 6 + 7 = 6 + 8 + 6 + 7 = 6 + 8 + 13 = 14 + 13 ="
    assert R.reward(f"{prompt} {27 - off_by}") == pytest.approx(expected, abs=0.005)
    assert R.reward(f"{prompt} {27 + off_by}") == pytest.approx(expected, abs=0.005)


def test_reward_sums_errors_over_every_stated_result():
    # 1 + 2 + 3 = 6: stating "1 + 5" (=6, ok) then "7" (off by 1): err = 1
    assert R.answer_error("1 + 2 + 3 = 1 + 5 = 7") == 1
    # intermediate off by 2 and answer off by 1: err = 3
    assert R.answer_error("1 + 2 + 3 = 1 + 7 = 7") == 3
    assert R.reward("1 + 2 + 3 = 1 + 7 = 7") == pytest.approx(2 / (1 + math.exp(0.3)))


@pytest.mark.parametrize("text", [
    "", "garbage", "1 + 2", "1 + 2 =", "1 + 2 = ", "1 + 2 = +", "1 + 2 = 1 + 2",  # wrong operator count
    "1 + 2 + 3 = 6", "= 3", "1 + + 2 = 3", "1 + 2 = 3 3", "[EOS]", "1 + 2 = [EOS]", "1 + 2 = ==",
])
def test_reward_is_near_zero_for_malformed_answers(text):
    assert R.answer_error(text) == math.inf
    r = R.reward(text)
    assert 0 <= r < 1e-20 and math.isfinite(r)


def test_reward_clips_error_at_500():
    assert R.reward("1 + 2 = 99") == pytest.approx(2 / (1 + math.exp(9.6)))
    big = "9" * 5000  # larger than Python's int-conversion limit
    assert R.reward(f"1 + 2 = {big}") == pytest.approx(2 / (1 + math.exp(50)))
    assert R.reward("99 * 99 * 99 * 99 = 0 * 99 * 99") == pytest.approx(2 / (1 + math.exp(50)))


def test_reward_is_total_on_fuzzed_strings():
    rng = random.Random(0)
    alphabet = "0123456789+*= \n\t[]BOSEPADxé漢\x00-/()"
    for _ in range(3000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        r = R.reward(s)
        assert isinstance(r, float) and 0.0 <= r <= 1.0 and math.isfinite(r), s
    assert R.reward(None) == 0.0
    long = "1 + 2 = 3 " * 10_000  # a malformed chain (two numbers after the last '=')
    assert R.answer_error(long) == math.inf and 0 <= R.reward(long) < 1e-20


def test_reward_ignores_special_tokens_around_the_answer():
    assert R.reward("[BOS] 1 + 2 = 3 [EOS]") == 1.0
    assert R.reward("1+2=3") == 1.0  # spaces are optional


# ----------------------------------------------------------------------------- generator
def test_generator_follows_the_paper():
    rng = random.Random(123)
    exprs = [T.generate_expression(rng) for _ in range(5000)]
    values = [T.evaluate(T.split_words(e)) for e in exprs]
    n_operands = [len(T.split_words(e)) // 2 + 1 for e in exprs]
    assert all(len(e) <= 10 and not e.endswith("+") and " " not in e for e in exprs)
    assert all(0 <= v < 100 for v in values)
    assert set(n_operands) <= {4, 5}
    assert statistics.mean(values) == pytest.approx(24.5, abs=0.6)  # "mean about 24.5"
    assert min(values) >= 1 and max(values) <= 50
    assert all(0 <= int(w) <= 10 for e in exprs for w in T.split_words(e)[::2][:-1])


def test_generator_is_seeded():
    a = [T.generate_expression(random.Random(7)) for _ in range(3)]
    b = [T.generate_expression(random.Random(7)) for _ in range(3)]
    assert a == b


def test_solution_chain_is_a_valid_derivation():
    rng = random.Random(1)
    for _ in range(300):
        e = T.generate_expression(rng)
        chain = T.solution_chain(e, rng)
        parts = [T.split_words(p) for p in chain.split("=")]
        value = T.evaluate(T.split_words(e))
        assert [T.evaluate(p) for p in parts] == [value] * len(parts)
        assert [len(p) // 2 for p in parts] == list(range(len(parts[0]) // 2, -1, -1))
        assert R.reward(chain) == 1.0


def test_chain_example_from_the_paper_and_prompt_cut():
    p = T.make_problem("6+0+8+6+7", random.Random(1))
    assert p.chain.startswith("6 + 0 + 8 + 6 + 7 = ") and p.chain.endswith("= 27")
    assert p.prompt.endswith("=") and p.prompt + " 27" == p.chain and p.answer == 27


def test_heldout_is_disjoint_and_fixed_by_the_seed():
    s = T.make_splits(2000, 300, seed=0)
    assert not {p.expression for p in s.train} & {p.expression for p in s.heldout + s.unseen}
    assert len({p.expression for p in s.heldout}) == 300 and len(s.unseen) == 300
    again = T.make_splits(10, 300, seed=0)  # the training size does not change the evaluation sets
    assert [p.chain for p in s.heldout] == [p.chain for p in again.heldout]
    assert [p.chain for p in s.unseen] == [p.chain for p in again.unseen]


def test_cached_splits_are_the_drawn_splits_and_are_drawn_once(monkeypatch):
    fresh = T.make_splits(500, 40, seed=3)
    first = T.cached_splits(500, 40, seed=3)
    assert first == fresh
    def draw_again(*args, **kwargs):
        raise RuntimeError("drawn again")
    monkeypatch.setattr(T, "make_splits", draw_again)
    assert T.cached_splits(500, 40, seed=3) == fresh   # read from the cache
    with pytest.raises(RuntimeError, match="drawn again"):  # another size or seed is another cache entry
        T.cached_splits(500, 40, seed=4)


def test_unseen_split_ends_in_pairs_that_never_end_a_training_chain():
    s = T.make_splits(20_000, 400, seed=0)
    train_pairs = {T.final_pair(p) for p in s.train}
    assert not {T.final_pair(p) for p in s.unseen} & train_pairs
    # the held-out split, by contrast, only asks for seen additions (the caveat that motivates "unseen")
    assert sum(T.final_pair(p) in train_pairs for p in s.heldout) / 400 > 0.95
    p = T.make_problem("6+0+8+6+7", random.Random(1))
    words = p.prompt.split()
    assert T.final_pair(p) == (int(words[-4]), int(words[-2])) and words[-3] == "+"
    assert sum(T.final_pair(p)) == 27
    share = sum(T.is_reserved((a, b), 0) for a in range(100) for b in range(100)) / 10_000
    assert share == pytest.approx(T.UNSEEN_PAIR_SHARE, abs=0.01)


def test_naive_solution_is_about_25_and_worth_about_075():
    held = T.make_splits(0, 2000, seed=3).heldout
    answer, r = R.best_constant_reward([p.answer for p in held])
    assert 22 <= answer <= 27 and r == pytest.approx(0.75, abs=0.03)


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_vocabulary_and_round_trip():
    tok = T.make_tokenizer()
    assert len(tok) == 106 and tok.padding_side == "right"
    p = T.make_problem("10+3+5+2", random.Random(0))
    ids = T.encode_chain(tok, p)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == len(p.chain.split()) + 2  # one token per word: numbers are single tokens
    assert tok.decode(ids, skip_special_tokens=True) == p.chain
    assert tok(p.chain)["input_ids"] == ids[1:-1]
    nums = T.number_token_ids(tok)
    assert tok.convert_ids_to_tokens(nums) == [str(n) for n in range(100)]
