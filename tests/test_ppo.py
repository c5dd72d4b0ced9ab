"""The PPO subclass on a tiny model: it trains, logs the entropy terms, and the batch-entropy
gradient points the right way."""
import random

import pytest
import torch

from rlformal_utils.arithmetic import reward as R
from rlformal_utils.arithmetic import task as A
from rlformal_utils.arithmetic.evaluate import answer_stats, banned_ids, prompt_tensors
from rlformal_utils.entropy import batch_entropy_stats
from rlformal_utils.one_token import last_position, sample
from rlformal_utils.ppo import make_trainer
from rlformal_utils.pretrain import build_gpt2, train_lm

B = 8


@pytest.fixture(scope="module")
def problems():
    return A.make_splits(64, 0, seed=0, n_unseen=0).train


@pytest.fixture(scope="module")
def collapsed_dir(tmp_path_factory, tok, problems):
    """A tiny model pretrained to answer 7 to every prompt: batch entropy near 0."""
    d = tmp_path_factory.mktemp("collapsed")
    model = build_gpt2("tiny", tok, seed=0)
    seqs = [A.encode_prompt(tok, p) + tok.convert_tokens_to_ids(["7"]) for p in problems]
    masks = [[0] * (len(s) - 1) + [1] for s in seqs]
    train_lm(model, seqs, tok.pad_token_id, steps=60, batch_size=32, lr=3e-3, loss_masks=masks, desc="collapse")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _trainer(path, tok, **kw):
    args = dict(learning_rate=1e-3, batch_size=B, mini_batch_size=4, ppo_epochs=2, seed=0)
    args.update(kw)
    return make_trainer(str(path), tok, **args)


def _rollout(trainer, tok, batch):
    q = prompt_tensors(tok, batch)
    with torch.no_grad():
        logits = last_position(trainer.model.pretrained_model, q)
    a = sample(logits, 1, banned_ids(tok))[:, 0]
    words = tok.convert_ids_to_tokens(a.tolist())
    return q, [x[None] for x in a], [torch.tensor(R.reward(f"{p.prompt} {w}")) for p, w in zip(batch, words)]


def test_one_step_changes_the_weights_and_logs_the_terms(base_dir, tok, problems):
    torch.manual_seed(0)
    trainer = _trainer(base_dir, tok, token_entropy_coef=0.3, batch_entropy_coef=0.3)
    before = {k: v.clone() for k, v in trainer.model.pretrained_model.named_parameters()}
    stats = trainer.step(*_rollout(trainer, tok, problems[:B]))
    changed = [k for k, v in trainer.model.pretrained_model.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    for key in ["token_entropy", "batch_entropy", "sample_entropy", "mutual_information", "max_share"]:
        assert f"ppo/policy/{key}" in stats
    h, h_i = stats["ppo/policy/batch_entropy"], stats["ppo/policy/sample_entropy"]
    assert 0 < h <= torch.log(torch.tensor(len(tok))).item() + 1e-4 and h >= h_i - 1e-5
    assert stats["ppo/loss/entropy_bonus"] == pytest.approx(
        0.3 * stats["ppo/policy/token_entropy"] + 0.3 * h, rel=1e-2)


def test_loss_subtracts_the_entropy_bonus_so_gradient_descent_raises_it(base_dir, tok):
    trainer = _trainer(base_dir, tok, batch_entropy_coef=1.0)
    g = torch.Generator().manual_seed(0)
    n, T, V = 6, 5, len(tok)
    logits = (torch.randn(n, T, V, generator=g) * 4).requires_grad_()
    mask = torch.zeros(n, T); mask[:, 3] = 1
    zeros = torch.zeros(n, T)
    logprobs = torch.log_softmax(logits, -1)[..., 0]
    pg, vf, stats = trainer.loss(logprobs.detach(), zeros, logits, zeros, logprobs, mask, zeros, zeros)
    pg.backward()  # zero advantages: the only gradient is the batch-entropy bonus
    h0 = batch_entropy_stats(logits, mask)["batch_entropy"].item()
    h1 = batch_entropy_stats(logits - 0.5 * logits.grad, mask)["batch_entropy"].item()
    assert stats["policy/batch_entropy"].item() == pytest.approx(h0, rel=1e-5)
    assert h1 > h0 + 1e-3


def test_batch_entropy_bonus_pulls_a_collapsed_policy_apart(collapsed_dir, tok, problems):
    """Same seed, same constant rewards (zero advantages): only c_batch differs."""
    heldout = prompt_tensors(tok, problems[:32])
    result = {}
    for c_batch in (0.0, 2.0):
        torch.manual_seed(0); random.seed(0)
        trainer = _trainer(collapsed_dir, tok, batch_entropy_coef=c_batch, kl_mode="policy")
        h_start = answer_stats(next_token_logits(trainer, heldout), tok)
        for step in range(3):
            q, r, _ = _rollout(trainer, tok, problems[step * B:(step + 1) * B])
            trainer.step(q, r, [torch.tensor(0.5)] * B)
        result[c_batch] = answer_stats(next_token_logits(trainer, heldout), tok)
    assert h_start["max_share"] > 0.8  # the fixture really is collapsed
    assert result[2.0]["batch_entropy"] > result[0.0]["batch_entropy"] + 0.1
    assert result[2.0]["batch_entropy"] > h_start["batch_entropy"] + 0.1
    assert result[2.0]["max_share"] < result[0.0]["max_share"]


def test_kl_modes(base_dir, tok, problems):
    policy_ref = _trainer(base_dir, tok, kl_mode="policy", learning_rate=3e-3)
    frozen_ref = _trainer(base_dir, tok, kl_mode="frozen", learning_rate=3e-3, adaptive_kl=False)
    assert policy_ref.ref_model is policy_ref.model and frozen_ref.ref_model is not frozen_ref.model
    kls = {"policy": [], "frozen": []}
    for step in range(3):
        for name, tr in (("policy", policy_ref), ("frozen", frozen_ref)):
            kls[name].append(tr.step(*_rollout(tr, tok, problems[step * B:(step + 1) * B]))["objective/kl"])
    assert all(k == 0 for k in kls["policy"])  # the reference code's setting: never any KL penalty
    assert kls["frozen"][0] == pytest.approx(0, abs=1e-5) and abs(kls["frozen"][-1]) > 1e-4
    with pytest.raises(ValueError, match="kl_mode"):
        _trainer(base_dir, tok, kl_mode="none")


def next_token_logits(trainer, prompts):
    with torch.no_grad():
        return last_position(trainer.model.pretrained_model, prompts)


def test_sampling_never_returns_banned_tokens(tok):
    logits = torch.zeros(500, len(tok))
    logits[:, tok.pad_token_id] = 100  # the most likely token is banned
    ids = sample(logits, 3, banned_ids(tok), generator=torch.Generator().manual_seed(0))
    assert ids.shape == (500, 3) and not set(ids.flatten().tolist()) & set(banned_ids(tok))
    logits[:, 40] = 50
    assert (sample(logits, 1, banned_ids(tok)) == 40).float().mean() > 0.99


def test_last_position_reads_each_prompts_own_last_token(base_dir, tok, problems):
    """One padded call equals the logits at the LAST position of each prompt run alone (an
    implementation that read the first position, or a padding position, would fail)."""
    trainer = _trainer(base_dir, tok)
    lm = trainer.model.pretrained_model.eval()
    q = prompt_tensors(tok, problems[:40]) + [torch.tensor(tok.convert_tokens_to_ids(["[BOS]", "3", "+", "4", "="]))]
    assert len({len(x) for x in q}) > 1
    with torch.no_grad():
        batched = last_position(lm, q)
        expected = torch.stack([lm(input_ids=x[None]).logits[0, len(x) - 1] for x in q])
        first = torch.stack([lm(input_ids=x[None]).logits[0, 0] for x in q])
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=1e-5)
    assert (batched - first).abs().max() > 1e-2


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_gpt2_last_position_equals_transformers_forward_and_gradients(tok, problems, size):
    """The shortened GPT-2 pass (last block at the last position only) against transformers' own
    full forward: same logits, same final hidden state, same gradients, with and without padding."""
    from rlformal_utils.modes import disable_dropout
    from rlformal_utils.one_token import gpt2_last_position, left_pad
    model = disable_dropout(build_gpt2(size, tok, seed=1)).train()
    padded = prompt_tensors(tok, problems[:24]) + [torch.tensor(tok.convert_tokens_to_ids(["[BOS]", "3", "+", "4", "="]))]
    same = [x for x in padded if len(x) == len(padded[0])]
    for q in (padded, same):
        logits, hidden = last_position(model, q, with_hidden=True)
        model.zero_grad()
        (logits.logsumexp(-1) + hidden.square().sum(-1)).sum().backward()
        ours = [p.grad.clone() for p in model.parameters()]
        ids, mask = left_pad(q)
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    output_hidden_states=True)
        model.zero_grad()
        (out.logits[:, -1].logsumexp(-1) + out.hidden_states[-1][:, -1].square().sum(-1)).sum().backward()
        torch.testing.assert_close(logits, out.logits[:, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hidden, out.hidden_states[-1][:, -1], atol=1e-5, rtol=1e-5)
        for a, (name, p) in zip(ours, model.named_parameters()):
            # float32 sums in a different order: agree to ~1e-5 of the largest entry (a wrong gradient
            # is off by a sizeable fraction of it)
            assert (a - p.grad).abs().max() <= 1e-4 * (1 + p.grad.abs().max()), name
    # with dropout on in train mode the shortened pass would be wrong: the model's own forward runs
    noisy = build_gpt2(size, tok, seed=1).train()
    torch.manual_seed(0)
    a = last_position(noisy, same)
    torch.manual_seed(1)
    assert (a - last_position(noisy, same)).abs().max() > 0, "dropout did not act: the HF forward was not used"
    with torch.no_grad():
        torch.testing.assert_close(gpt2_last_position(noisy.eval(), torch.stack(same)),
                                   noisy(input_ids=torch.stack(same), output_hidden_states=True).hidden_states[-1][:, -1])
