"""The multi-token group-relative update (rlformal_utils.group_lm) against independent expectations.

Most tests use a "table" model whose logits depend only on the position (a parameter per position),
with plain SGD at lr 1 in place of Adam, so that one step moves the parameters by exactly minus the
gradient, which is worked out here by hand or with torch.distributions."""
import contextlib
import math
from types import SimpleNamespace

import pytest
import torch

from rlformal_utils.group_lm import GroupLM, GroupLMConfig, k3_kl, pad_pairs

V = 3


class Table(torch.nn.Module):
    """logits[b, t] = z[t]: the same for every row, a different distribution at each position."""

    def __init__(self, z):
        super().__init__()
        self.z = torch.nn.Parameter(torch.as_tensor(z, dtype=torch.float32).clone())

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.z[: input_ids.shape[1]].expand(input_ids.shape[0], -1, -1))


def sgd_trainer(z, ref=None, **cfg):
    trainer = GroupLM(Table(z), GroupLMConfig(max_grad_norm=None, **cfg), pad_id=0, reference=ref)
    trainer.opt = torch.optim.SGD(trainer.params, lr=1.0)
    return trainer


def test_advantages_are_relative_to_each_prompts_group_hand_worked():
    """2 prompts x 2 one-token responses, uniform start. Rewards [[1, 0], [5, 5]]: group 1's
    advantages are +-0.5 / (0.5 + eps), group 2's are 0. The ratio is 1 in the first epoch, so
    loss = -(1/4) sum_i A_i logp(a_i) and d logp(a)/dz = onehot(a) - 1/3:
    z moves by (A / 4) (e0 - e1)."""
    trainer = sgd_trainer(torch.zeros(4, V), kl_coef=0.0)
    prompts = [[1], [1]]
    responses = [[0], [1], [2], [2]]
    out = trainer.step(prompts, responses, torch.tensor([[1.0, 0.0], [5.0, 5.0]]))
    a = 0.5 / (0.5 + 1e-4)
    expected = torch.zeros(4, V)
    expected[0] = torch.tensor([a / 4, -a / 4, 0.0])  # the prompt's last position predicts the response
    torch.testing.assert_close(trainer.model.z.detach(), expected)
    assert out["reward"] == pytest.approx(2.75) and out["zero_advantage_groups"] == 0.5
    assert out["loss"] == pytest.approx(-(a * math.log(1 / 3) - a * math.log(1 / 3)) / 4, abs=1e-6)
    assert out["kl"] == 0.0 and out["clipfrac"] == 0.0


def test_loss_averages_each_response_over_its_own_tokens():
    """A 2-token and a 1-token response of one prompt, rewards [1, 0] (A = +-a). Per response the loss
    is the mean over its tokens, so the 2-token response's tokens weigh 1/2 each."""
    trainer = sgd_trainer(torch.zeros(4, V), kl_coef=0.0)
    trainer.step([[1]], [[0, 0], [1]], torch.tensor([[1.0, 0.0]]))
    a = 0.5 / (0.5 + 1e-4)
    grad = torch.zeros(4, V)
    p = torch.full((V,), 1 / 3)
    e = torch.eye(V)
    grad[0] = -(a * 0.5 * (e[0] - p) - a * (e[1] - p)) / 2
    grad[1] = -(a * 0.5 * (e[0] - p)) / 2
    torch.testing.assert_close(trainer.model.z.detach(), -grad)


def _independent_kl_update(z, z_ref, prompt_len, responses, kl_coef):
    """The expected parameter change and logged KL from torch.distributions: loss = kl_coef * mean over
    responses of the mean over tokens of k3 = r - log r - 1 with r = pi_ref / pi (its gradient is
    (1 - r) d log pi)."""
    z = z.clone().requires_grad_(True)
    per_response, logged = [], []
    for resp in responses:
        terms, summed = [], 0.0
        for t, tok in enumerate(resp):
            pos = prompt_len + t - 1
            logp = torch.distributions.Categorical(logits=z[pos]).log_prob(torch.tensor(tok))
            ref = torch.distributions.Categorical(logits=z_ref[pos]).log_prob(torch.tensor(tok))
            r = torch.exp(ref - logp)
            terms.append(r - torch.log(r) - 1)
            summed += float((logp - ref).detach())
        per_response.append(torch.stack(terms).mean())
        logged.append(summed)
    loss = kl_coef * torch.stack(per_response).mean()
    loss.backward()
    return -z.grad, sum(logged) / len(logged)


@pytest.mark.parametrize("as_context", [False, True])
def test_kl_penalty_is_k3_against_the_reference_and_logged_like_trl(as_context):
    """Equal rewards (no policy-gradient term): the step is the k3 KL gradient alone; the logged KL is
    sum over response tokens of log pi - log pi_ref, mean over responses. The reference is a frozen
    model, or a context manager inside which the policy computes the reference."""
    g = torch.Generator().manual_seed(0)
    z, z_ref = torch.randn(6, V, generator=g), torch.randn(6, V, generator=g)
    responses = [[0, 2, 1], [1], [2, 2], [0, 1]]
    if as_context:
        model = Table(z)

        @contextlib.contextmanager
        def reference():
            saved = model.z.data.clone()
            model.z.data.copy_(z_ref)
            try:
                yield
            finally:
                model.z.data.copy_(saved)
        trainer = GroupLM(model, GroupLMConfig(max_grad_norm=None, kl_coef=0.3), pad_id=0, reference=reference)
        trainer.opt = torch.optim.SGD(trainer.params, lr=1.0)
    else:
        trainer = sgd_trainer(z, kl_coef=0.3, ref=Table(z_ref))
    out = trainer.step([[1, 1], [1, 1]], responses, torch.ones(2, 2))
    change, kl = _independent_kl_update(z, z_ref, 2, responses, 0.3)
    torch.testing.assert_close(trainer.model.z.detach() - z, change)
    assert out["kl"] == pytest.approx(kl, rel=1e-5)


def test_k3_is_nonnegative_and_zero_only_at_equal_log_probs():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.all(k3_kl(logp, logp) == 0)
    assert torch.all(k3_kl(logp, logp + torch.tensor([0.3, -0.7, 1.0])) > 0)


def test_batch_entropy_reads_each_responses_first_token():
    """Equal rewards, no KL: the step is the gradient of -c * H(mean of the first-token distributions),
    computed here from the positions that predict each response's first token (prompts of lengths 1
    and 2, so different positions)."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, V, generator=g)
    trainer = sgd_trainer(z, kl_coef=0.0, entropy_coef=0.5)
    trainer.step([[1], [1, 1]], [[0, 1, 2], [2, 0], [1], [2, 2, 2]], torch.zeros(2, 2))
    zz = z.clone().requires_grad_(True)
    first = torch.stack([zz[0], zz[0], zz[1], zz[1]])  # prompt length 1 -> position 0, length 2 -> position 1
    pbar = torch.softmax(first, -1).mean(0)
    (0.5 * (pbar * pbar.log()).sum()).backward()  # -c * H
    torch.testing.assert_close(trainer.model.z.detach() - z, -zz.grad)


def test_second_epoch_is_clipped_once_the_ratio_left_the_trust_region():
    """epochs=2 with a tiny clip: the first epoch moves the advantaged tokens' ratios far beyond 1 +- clip
    (in the direction of their advantage), so the second epoch's surrogate is flat and nothing moves;
    with a wide clip the second epoch moves the parameters again."""
    step = dict(prompts=[[1], [1]], responses=[[0], [1], [2], [2]], rewards=torch.tensor([[1.0, 0.0], [5.0, 5.0]]))
    one = sgd_trainer(torch.zeros(4, V), kl_coef=0.0, epochs=1)
    one.step(*step.values())
    tight = sgd_trainer(torch.zeros(4, V), kl_coef=0.0, epochs=2, clip=0.01)
    out = tight.step(*step.values())
    torch.testing.assert_close(tight.model.z.detach(), one.model.z.detach())
    assert out["clipfrac"] > 0
    wide = sgd_trainer(torch.zeros(4, V), kl_coef=0.0, epochs=2, clip=10.0)
    wide.step(*step.values())
    assert (wide.model.z.detach() - one.model.z.detach()).abs().max() > 1e-3


def test_mini_batches_and_epochs_count_the_updates():
    trainer = sgd_trainer(torch.zeros(4, V), kl_coef=0.0, epochs=2, mini_batch_size=2)
    calls = []
    trainer.opt.step = lambda *a, **k: calls.append(1)
    trainer.step([[1], [1]], [[0], [1], [2], [0]], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert len(calls) == 4


def test_pad_pairs_points_at_each_response_token():
    ids, att, index, mask = pad_pairs([[5, 6], [7]], [[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[5, 6, 1, 2, 3], [7, 4, 0, 0, 0]] and att.tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    assert ids.gather(1, index)[mask].tolist() == [1, 2, 3, 4] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_a_small_gpt2_raises_the_log_prob_of_the_better_response():
    """Two prompts, two fixed responses each; the one rewarded 1 gains log-probability, the other loses."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    trainer = GroupLM(model, GroupLMConfig(lr=1e-2, kl_coef=0.1), pad_id=0, reference=GPT2LMHeadModel(model.config))
    prompts = [[1, 2, 3], [4, 5]]
    responses = [[6, 7, 8], [9, 10], [11, 12], [13, 14, 15]]
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0]])

    def logps():
        from rlformal_utils.group_lm import response_logits, token_logprobs
        padded = pad_pairs([p for p in prompts for _ in range(2)], responses, 0)
        with torch.no_grad():
            return token_logprobs(response_logits(model, padded), padded).sum(1)
    before = logps()
    for _ in range(5):
        trainer.step(prompts, responses, rewards)
    change = logps() - before
    assert change[0] > 0 and change[3] > 0 and change[1] < 0 and change[2] < 0


# ----------------------------------------------------------------------------- the sentiment parameters
@pytest.mark.parametrize("bad, message", [
    (dict(algorithm="grpo"), r"parameter algorithm='grpo' is not allowed: it must be one of \['ppo', 'group'\]"),
    (dict(group_size=1), r"parameter group_size=1 is not allowed: it must be an integer in \[2, 256\]"),
    (dict(algorithm="group", group_size=3), r"parameter group_size=3 must divide ppo_batch_size=16"),
    (dict(entropy_coef=-0.1), r"parameter entropy_coef=-0.1 is not allowed: it must be a number in \[0.0, 10.0\]"),
    (dict(entropy_coef=11.0), r"parameter entropy_coef=11.0 is not allowed: it must be a number in \[0.0, 10.0\]"),
    (dict(kl_coef=-0.05), r"parameter kl_coef=-0.05 is not allowed: it must be a number in \[0.0, 10.0\]"),
    (dict(group_epochs=0), r"parameter group_epochs=0 is not allowed"),
    (dict(clip=0.0), r"parameter clip=0.0 is not allowed"),
])
def test_sentiment_check_names_the_bad_group_parameter(bad, message):
    from rlformal_utils.params import ParameterError, defaults
    from rlformal_utils.sentiment import params as P
    with pytest.raises(ParameterError, match=message):
        P.check(dict(defaults(P.PARAMS), **bad))
    ok = P.check(dict(defaults(P.PARAMS), algorithm="group", group_size=4, entropy_coef=10.0, kl_coef=0.0))
    assert ok["algorithm"] == "group" and ok["group_size"] == 4


def test_group_run_names_carry_the_algorithm_and_ppo_names_stay():
    from rlformal_utils.sentiment.grid import runs
    quick = [r.name for r in runs("quick")]
    assert {"smollm2-135m-lora16_kl0.2_s0", "smollm2-135m-lora16_kl0.2_s1", "smollm2-135m-lora16_kl0.2_s2"} <= set(quick)
    for r in runs("quick") + runs("long"):
        assert ("_group_" in r.name) == (r.params.get("algorithm", "ppo") == "group"), r.name
    names = [r.name for r in runs("long")]
    assert len(set(names)) == len(names)


def test_sentiment_notebook_runs_the_group_update_end_to_end(tmp_path):
    """The real notebook with the smoke budget and algorithm='group': 2 prompts x 2 responses per step.
    config.json and summary.json name the algorithm, metrics.csv logs PPO's columns where they mean
    the same, and the runs table carries the algorithm."""
    import json

    import pandas as pd

    from notebook_runs import run_notebook
    from rlformal_utils.sentiment.grid import runs
    from rlformal_utils.sentiment.plots import load_runs, runs_table
    params = dict(runs("smoke")[0].params, algorithm="group", group_size=2, entropy_coef=0.1)
    out = tmp_path / "sentiment" / "g0"
    run_notebook("sentiment.ipynb", tmp_path / "executed.ipynb", output_dir=str(out), **params)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["algorithm"] == "group" and summary["config"]["group_size"] == 2
    metrics = pd.read_csv(out / "metrics.csv")
    steps = metrics[metrics.step > 0]
    assert len(steps) == params["ppo_steps"]
    for column in ("reward", "reward_sd", "kl", "entropy", "clipfrac", "approxkl", "batch_entropy",
                   "time_generate", "time_reward", "time_update"):
        assert steps[column].notna().all(), column
    table = runs_table(load_runs(tmp_path / "sentiment")[1])
    assert table["algorithm"].tolist() == ["group"]
