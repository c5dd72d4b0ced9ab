"""The one-token trainers: the PPO update equals trl 0.11.4's PPOTrainer on the same batch, the
group-relative update does what its formulas say, and evaluation never runs with dropout on."""
import copy

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rlformal_utils import one_token as OT
from rlformal_utils.arithmetic import task
from rlformal_utils.arithmetic.evaluate import banned_ids, evaluate, prompt_tensors
from rlformal_utils.arithmetic.reward import reward, reward_table
from rlformal_utils.modes import disable_dropout, eval_mode
from rlformal_utils.pretrain import build_gpt2


@pytest.fixture(scope="module")
def problems():
    return task.make_splits(64, 16, seed=0).train


# ----------------------------------------------------------------------------- reward table
def test_reward_table_equals_the_reward_program_for_every_token(tok, problems):
    table = reward_table([p.answer for p in problems[:20]], task.number_token_ids(tok), len(tok))
    words = tok.convert_ids_to_tokens(list(range(len(tok))))
    for i, p in enumerate(problems[:20]):
        expected = torch.tensor([reward(f"{p.prompt} {w}") for w in words])
        torch.testing.assert_close(table[i], expected, rtol=1e-6, atol=1e-30)


# ----------------------------------------------------------------------------- group-relative
def test_group_advantages_hand_worked():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.9, 0.3, 0.3, 0.3]])
    adv = OT.group_advantages(r, eps=0.0 + 1e-12)
    torch.testing.assert_close(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]))  # mean 0.5, std 0.5
    assert (adv[1] == 0).all()                                                  # all agree: no signal
    std = np.std([0.9, 0.3, 0.3, 0.3])                                          # 0.2598
    torch.testing.assert_close(adv[2], torch.tensor([0.45, -0.15, -0.15, -0.15]) / std)
    torch.testing.assert_close(OT.group_advantages(r, std_normalise=False)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_group_step_without_a_reward_signal_leaves_the_weights_alone(base_dir, tok, problems):
    model = GPT2LMHeadModel.from_pretrained(base_dir)
    before = copy.deepcopy(model.state_dict())
    trainer = OT.GroupRelative(model, OT.GroupConfig(k=4, lr=1e-2), banned_ids(tok))
    flat = torch.full((8, len(tok)), 0.7)  # every answer earns the same: every advantage is 0
    trainer.step(prompt_tensors(tok, problems[:8]), flat, torch.Generator().manual_seed(0))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], msg=name)


def test_group_step_raises_the_probability_of_rewarded_answers(base_dir, tok, problems):
    model = GPT2LMHeadModel.from_pretrained(base_dir)
    prompts = prompt_tensors(tok, problems[:16])
    numbers = task.number_token_ids(tok)
    table = reward_table([p.answer for p in problems[:16]], numbers, len(tok))
    target = torch.tensor([numbers[p.answer] for p in problems[:16]])

    def p_true():
        with eval_mode(model):
            return torch.softmax(OT.last_position(model, prompts), -1)[torch.arange(16), target].mean().item()

    start = p_true()
    trainer = OT.GroupRelative(model, OT.GroupConfig(k=16, lr=3e-3, total_steps=40), banned_ids(tok))
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        trainer.step(prompts, table, gen)
    assert p_true() > 3 * start


def test_batch_entropy_term_spreads_a_collapsed_policy(tok, problems):
    # a policy that answers "7" everywhere, no reward signal: only the batch-entropy term acts
    model = build_gpt2("tiny", tok, seed=1)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied to the input embedding: zero logits ...
        model.transformer.ln_f.bias.zero_()
    model.lm_head = torch.nn.Linear(64, len(tok), bias=True)  # ... then a fresh untied head biased to "7"
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[tok.convert_tokens_to_ids("7")] = 8.0
    prompts = prompt_tensors(tok, problems[:16])
    flat = torch.full((16, len(tok)), 0.5)

    def max_share():
        with eval_mode(model):
            logp = torch.log_softmax(OT.last_position(model, prompts), -1)
        return OT._entropy_terms(logp)["max_share"].item()

    start = max_share()
    cfg = OT.GroupConfig(k=4, lr=1e-2, batch_entropy_coef=1.0, total_steps=30)
    trainer = OT.GroupRelative(model, cfg, banned_ids(tok))
    for _ in range(30):
        trainer.step(prompts, flat, torch.Generator().manual_seed(0))
    assert start > 0.9 and max_share() < start - 0.3


def test_cosine_schedule_hand_worked():
    assert OT.cosine_lr(0, 100) == 1.0
    assert OT.cosine_lr(50, 100) == pytest.approx(0.5)
    assert OT.cosine_lr(100, 100) == pytest.approx(0.0)
    assert OT.cosine_lr(1, 100, warmup=4) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- PPO == trl
def _trl_trainer(base_dir, tok, batch, mini, epochs, lr, c_tok, c_batch):
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig
    from rlformal_utils.ppo import EntropyPPOTrainer
    model = disable_dropout(AutoModelForCausalLMWithValueHead.from_pretrained(str(base_dir)))
    config = PPOConfig(batch_size=batch, mini_batch_size=mini, ppo_epochs=epochs, learning_rate=lr, seed=0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    return EntropyPPOTrainer(config=config, model=model, ref_model=None, tokenizer=tok, optimizer=opt,
                             token_entropy_coef=c_tok, batch_entropy_coef=c_batch)


@pytest.mark.parametrize("c_tok, c_batch, mini", [(0.0, 0.0, 4), (0.3, 0.3, 4), (0.3, 0.3, 8)])
def test_one_token_ppo_equals_trl_ppo_trainer(base_dir, tok, problems, c_tok, c_batch, mini):
    """Same weights, same batches (2 steps x 2 epochs x 2 mini-batches, or 1 mini-batch, where our
    step reuses the rollout's forward pass), plain SGD on both sides so that every gradient shows
    in the weights: the weights, losses and KL terms agree."""
    B, lr = 8, 0.05
    trl_trainer = _trl_trainer(base_dir, tok, B, mini, 2, lr, c_tok, c_batch)
    v_head = torch.nn.Linear(64, 1)
    v_head.load_state_dict(trl_trainer.model.v_head.summary.state_dict())
    ours = OT.OneTokenPPO(GPT2LMHeadModel.from_pretrained(base_dir),
                          OT.PPOConfig(lr=lr, mini_batch_size=mini, ppo_epochs=2, token_entropy_coef=c_tok,
                                       batch_entropy_coef=c_batch, mask_banned=False),
                          banned_ids(tok), kl_reference="frozen", value_head=v_head)
    ours.opt = torch.optim.SGD(ours.params, lr=lr)
    ours.sched = torch.optim.lr_scheduler.LambdaLR(ours.opt, lambda s: 1.0)

    g = torch.Generator().manual_seed(0)
    batches = []
    for s in range(2):
        batch = problems[s * B:(s + 1) * B]
        answers = torch.randint(3, 103, (B,), generator=g)
        scores = torch.rand(B, generator=g)
        batches.append((prompt_tensors(tok, batch), answers, scores))

    np.random.seed(123)
    trl_stats = [trl_trainer.step(q, [a[None] for a in ans], list(sc)) for q, ans, sc in batches]
    np.random.seed(123)
    our_stats = []
    for q, ans, sc in batches:
        if mini == B:
            ours.rollout_logits(q)  # the pass the step then reuses
            assert ours._pending is not None
        our_stats.append(ours.step(q, ans, sc))

    for t, o in zip(trl_stats, our_stats):
        assert o["kl"] == pytest.approx(float(t["objective/kl"]), abs=1e-5)
        assert o["kl_coef"] == pytest.approx(float(t["objective/kl_coef"]), rel=1e-6)
        assert o["loss_policy"] == pytest.approx(float(t["ppo/loss/policy"]), abs=1e-5)
        assert o["loss_value"] == pytest.approx(float(t["ppo/loss/value"]), abs=1e-5)
    assert abs(our_stats[1]["kl"]) > 1e-4  # the second step really exercises the KL penalty
    assert ours.kl_ctl.value == pytest.approx(trl_trainer.kl_ctl.value, rel=1e-6)
    trl_lm = trl_trainer.model.pretrained_model.state_dict()
    start = GPT2LMHeadModel.from_pretrained(base_dir).state_dict()
    moved = 0.0
    for name, value in ours.model.state_dict().items():
        torch.testing.assert_close(value, trl_lm[name], atol=2e-5, rtol=1e-4, msg=name)
        moved = max(moved, (value - start[name]).abs().max().item())
    assert moved > 1e-3  # the weights did move, so the comparison is not vacuous
    torch.testing.assert_close(ours.value_head.weight, trl_trainer.model.v_head.summary.weight, atol=2e-5, rtol=1e-4)


def test_trl_engine_samples_without_dropout_after_a_step(base_dir, tok, problems):
    """trl's step() leaves the model in train mode; with dropout disabled that cannot matter."""
    from rlformal_utils.ppo import make_trainer
    trainer = make_trainer(str(base_dir), tok, learning_rate=1e-3, batch_size=4, mini_batch_size=4, ppo_epochs=1)
    q = prompt_tensors(tok, problems[:4])
    trainer.step(q, [torch.tensor([10])] * 4, [torch.tensor(1.0)] * 4)
    lm = trainer.model.pretrained_model
    assert lm.training  # what trl leaves behind
    with torch.no_grad():
        a, b = OT.last_position(lm, q), OT.last_position(lm, q)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- modes
def test_evaluation_gives_eval_mode_numbers_even_for_a_model_left_in_train_mode(tok):
    """A model with heavy dropout, left in train mode (as trl's step leaves it): evaluation must
    give the eval-mode numbers, twice the same, and hand the model back in train mode."""
    heldout = task.make_splits(0, 64, seed=1).heldout
    model = build_gpt2("tiny", tok, seed=0)
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.5
    model = GPT2LMHeadModel(model.config)
    model.eval()
    reference = evaluate(model, tok, heldout)
    model.train()
    first, second = evaluate(model, tok, heldout), evaluate(model, tok, heldout)
    assert first == second == reference
    assert model.training and all(m.training for m in model.modules())


def test_disable_dropout_makes_train_and_eval_mode_agree_for_gpt2_and_llama(tok):
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.5))
    gpt2 = GPT2LMHeadModel(build_gpt2("tiny", tok).config)
    for model in (gpt2, llama):
        ids = torch.randint(3, 40, (2, 7))
        model.train()
        torch.manual_seed(0)
        noisy = model(input_ids=ids).logits
        assert not torch.allclose(noisy, model(input_ids=ids).logits)  # dropout really was on
        disable_dropout(model)
        with torch.no_grad():
            train_out = model(input_ids=ids).logits
            model.eval()
            torch.testing.assert_close(train_out, model(input_ids=ids).logits)


def test_eval_mode_restores_each_modules_own_mode(tok):
    model = build_gpt2("tiny", tok)
    model.train()
    model.transformer.h[0].eval()  # a mixed state must come back exactly
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
        assert not torch.is_grad_enabled()
    assert model.training and not model.transformer.h[0].training and model.transformer.h[1].training


@pytest.mark.parametrize("controller, coef_moves, target", [("trl", True, 6.0), ("adaptive", True, 2.5), ("fixed", False, None)])
def test_the_kl_controller_parameter_reaches_the_ppo_trainer(base_dir, tok, controller, coef_moves, target):
    """kl_controller picks trl's target (6 nats), kl_target, or a constant coefficient; the
    coefficient then follows trl's update rule: value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / 10000."""
    from rlformal_utils.arithmetic.params import PARAMS, check
    from rlformal_utils.arithmetic.train import make_trainer
    from rlformal_utils.params import defaults
    config = check(dict(defaults(PARAMS), algorithm="ppo", regulariser="none", kl_reference="frozen", kl_coef=0.2,
                        kl_controller=controller, kl_target=2.5, prompts_per_step=8))
    trainer = make_trainer(config, base_dir, tok)
    assert trainer.ref is not None and trainer.ref is not trainer.model
    trainer.kl_ctl.update(current_kl=1.0, n=8)
    if coef_moves:
        assert trainer.kl_ctl.target == target
        expected = 0.2 * (1 + max(-0.2, min(0.2, 1.0 / target - 1)) * 8 / 10000)
        assert trainer.kl_ctl.value == pytest.approx(expected, rel=1e-12) and trainer.kl_ctl.value != 0.2
    else:
        assert trainer.kl_ctl.value == 0.2


@pytest.mark.parametrize("bad, message", [
    (dict(kl_controller="pid"), r"kl_controller='pid' is not allowed: it must be one of \['trl', 'adaptive', 'fixed'\]"),
    (dict(kl_target=6.0), r"kl_target=6.0 is not allowed: it must be a number in \(0, 4.63\]"),
    (dict(kl_target=0.0), r"kl_target=0.0 is not allowed: it must be a number in \(0, 4.63\]"),
    (dict(entropy_coef=-0.1), r"entropy_coef=-0.1 is not allowed: it must be a number in \[0.0, 10.0\]"),
    (dict(entropy_coef="0.3"), r"entropy_coef='0.3' is not allowed"),
    (dict(algorithm="group", kl_reference="frozen", kl_controller="adaptive"), r"kl_controller='adaptive' is not allowed with algorithm='group'"),
])
def test_bad_kl_and_entropy_parameters_name_the_parameter_and_the_allowed_values(bad, message):
    from rlformal_utils.arithmetic.params import PARAMS, check
    from rlformal_utils.params import defaults
    from rlformal_utils.runs import ParameterError
    with pytest.raises(ParameterError, match=message):
        check(dict(defaults(PARAMS), **bad))
