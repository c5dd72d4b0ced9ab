"""What the sentiment reward reads: review start + the sampled response, never the instruction line
the policy sees before the review, in a PPO step and in the held-out evaluation."""
import numpy as np
import pytest
import torch

from rlformal_utils import sentiment as S
from rlformal_utils.pretrain import build_gpt2, train_bpe_tokenizer
from rlformal_utils.sentiment.train import ppo_step


@pytest.fixture(scope="module")
def lm():
    texts = S.load_rotten_tomatoes().query("label >= 0")["text"].head(300)
    tok = train_bpe_tokenizer(texts, 300, padding_side_in_config=True)
    return build_gpt2("tiny", tok, n_positions=64, seed=0).eval(), tok, list(texts)


@pytest.fixture(scope="module")
def prompts(lm):
    _, tok, texts = lm
    return S.make_prompts(tok, texts, 6, seed=4, prefix=S.prompt_prefix(tok, "instruction"))


class RecordingReward:
    """A reward that remembers every text it scored: its length in characters."""
    name, threshold = "recording", 0.0

    def __init__(self):
        self.seen = []

    def __call__(self, texts):
        self.seen.append(list(texts))
        return [float(len(t)) for t in texts]


class RecordingTrainer:
    """trl's ``PPOTrainer.step`` stand-in: keeps what it was handed, returns the stats ppo_step reads."""
    lean_forward = False

    def __init__(self):
        self.calls = []

    def step(self, queries, responses, rewards):
        self.calls.append((queries, responses, rewards))
        keys = ["objective/kl", "objective/kl_coef", "objective/entropy", "ppo/loss/policy", "ppo/loss/value",
                "ppo/policy/clipfrac", "ppo/policy/approxkl", "ppo/val/var_explained"]
        return dict.fromkeys(keys, 0.0)


def test_decode_pairs_gives_exactly_review_start_plus_response(lm):
    _, tok, _ = lm
    reviews = [torch.tensor(tok.encode("The film")), torch.tensor(tok.encode("A slow"))]
    responses = [torch.tensor(tok.encode(" is a triumph")), torch.tensor(tok.encode(" but moving") + [tok.eos_token_id])]
    full, resp = S.decode_pairs(tok, reviews, responses)
    assert full == ["The film is a triumph", "A slow but moving"]   # the EOS is dropped
    assert resp == [" is a triumph", " but moving"]


def test_a_ppo_step_scores_review_start_plus_the_sampled_response(lm, prompts):
    model, tok, _ = lm
    reward, trainer = RecordingReward(), RecordingTrainer()
    torch.manual_seed(0)
    row = ppo_step(trainer, model, tok, prompts, reward)
    (queries, responses, rewards), = trainer.calls
    (texts,) = reward.seen
    assert [q.tolist() for q in queries] == [p["query"].tolist() for p in prompts]  # the policy saw the instruction
    expected = [p["query_text"] + tok.decode(r, skip_special_tokens=True) for p, r in zip(prompts, responses)]
    assert texts == expected                                   # the reward: review start + response, exactly
    assert all(S.INSTRUCTION not in t for t in texts)
    assert all(len(t) > len(p["query_text"]) for t, p in zip(texts, prompts))  # every response adds text
    assert [float(r) for r in rewards] == [float(len(t)) for t in texts]       # trl gets those scores, in order
    assert row["reward"] == pytest.approx(np.mean([len(t) for t in texts]))


def test_the_evaluation_scores_review_start_plus_the_sampled_response(lm, prompts):
    model, tok, _ = lm
    reward, judge = RecordingReward(), RecordingReward()
    df = S.evaluate(model, model, tok, prompts, reward, judge, seed=1)
    (texts,), (judged,) = reward.seen, judge.seen
    expected = [p["query_text"] + r for p, r in zip(prompts, df["response"])]
    assert texts == judged == expected == df["text"].tolist()
    assert all(S.INSTRUCTION not in t for t in texts) and all(r for r in df["response"])
    assert df["reward"].tolist() == [float(len(t)) for t in texts]
