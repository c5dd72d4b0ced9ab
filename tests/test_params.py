"""Declared parameters: one declaration gives the check, config.json and the reference table."""
import pytest

from rlformal_utils.arithmetic import params as AP
from rlformal_utils.params import Param, ParameterError, check_all, defaults, reference


def test_checks_name_the_parameter_and_what_is_allowed():
    declared = [Param("lr", 1e-3, "learning rate", low=1e-8, high=1.0), Param("mode", "a", "mode", choices=("a", "b")),
                Param("on", True, "switch", choices=(True, False)), Param("n", 3, "count", low=1),
                Param("out", "x", "folder", kind=str, config=False)]
    good = defaults(declared)
    assert check_all(declared, good) == {"lr": 1e-3, "mode": "a", "on": True, "n": 3}  # bookkeeping stays out
    for bad, message in [(dict(lr=2.0), r"lr=2.0 is not allowed: it must be a number in \[1e-08, 1.0\]"),
                         (dict(lr=float("nan")), r"lr=nan"), (dict(lr="0.1"), r"lr='0.1'"),
                         (dict(mode="c"), r"mode='c' is not allowed: it must be one of \['a', 'b'\]"),
                         (dict(on=1), r"on=1 is not allowed: it must be one of \[True, False\]"),  # 1 == True, but not a bool
                         (dict(n=2.5), r"n=2.5 is not allowed: it must be an integer in \[1, inf\]"),
                         (dict(n=True), r"n=True"), (dict(out=3), r"out=3")]:
        with pytest.raises(ParameterError, match=message):
            check_all(declared, dict(good, **bad))
    with pytest.raises(ParameterError, match="parameter n is missing"):
        check_all(declared, {k: v for k, v in good.items() if k != "n"})


def test_the_arithmetic_declaration_is_consistent():
    names = [p.name for p in AP.PARAMS]
    assert len(names) == len(set(names))
    config = AP.check(defaults(AP.PARAMS))  # the defaults themselves pass
    assert AP.entropy_coefs(config) == (0.0, 0.3) and AP.answers_per_step(config) == 32 * 8
    table = reference(AP.PARAMS)
    assert table.count("\n") == len(AP.PARAMS) + 1 and "`algorithm`" in table and "one of ['group'" in table


def test_the_sentiment_declaration_is_consistent_and_prints_its_reference():
    import subprocess
    import sys
    from rlformal_utils.sentiment import params as SP
    names = [p.name for p in SP.PARAMS]
    assert len(names) == len(set(names)) and names[0] == "output_dir"
    config = SP.check(defaults(SP.PARAMS))  # the defaults themselves pass
    assert set(config) == set(names) - {"output_dir", "torch_threads", "device"}
    assert SP.judge_name(config) == "vader" and SP.judge_name(dict(config, reward="vader")) == "minilm-logreg"
    printed = subprocess.run([sys.executable, "-m", "rlformal_utils.params", "sentiment"], capture_output=True,
                             text=True, check=True).stdout
    assert printed.strip() == f"## sentiment\n\n{reference(SP.PARAMS)}"
    assert "| `policy` | `'smollm2-135m'` | one of ['rt-gpt2', 'smollm2-135m'] or a hub causal LM id" in printed
    assert "| `output_dir` | `'../scratch/sentiment'` | a str |" in printed


@pytest.mark.parametrize("experiment", ["arithmetic", "sentiment", "games"])
def test_device_auto_is_a_gpu_when_torch_sees_one_and_cuda_without_one_stops_the_check(experiment, monkeypatch):
    import importlib
    import torch
    from rlformal_utils import devices
    P = importlib.import_module(f"rlformal_utils.{experiment}.params")
    values = defaults(P.PARAMS)
    assert values["device"] == "auto" and "device" not in P.check(values)  # bookkeeping, like the threads
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve("auto") == devices.resolve("cpu") == torch.device("cpu")
    assert devices.trl_kwargs(devices.resolve("auto")) == {"accelerator_kwargs": {"cpu": True}}  # trl stays off GPUs
    with pytest.raises(ParameterError, match=r"device='cuda' is not allowed on this machine: torch sees no CUDA GPU.*'auto' or 'cpu'"):
        P.check(dict(values, device="cuda"))
    with pytest.raises(ParameterError, match=r"device='tpu' is not allowed: it must be one of \['auto', 'cpu', 'cuda'\]"):
        P.check(dict(values, device="tpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve("auto") == devices.resolve("cuda") == torch.device("cuda")
    assert devices.trl_kwargs(devices.resolve("auto")) == {"accelerator_kwargs": {"cpu": False}}
    assert P.check(dict(values, device="cuda")) == P.check(values)


# ----------------------------------------------------------------------------- the rules between parameters
def _games_lists():
    from rlformal_utils.games.fim import bundled_games
    games = sorted(bundled_games())
    held = ["tic_tac_toe", "yavalath", "hex", "wolf_and_sheep"]
    return games, held, [g for g in games if g not in held]


def _cross_rules():
    """(experiment, bad values, the exact error) for every rule an experiment's check() adds to the
    per-parameter checks."""
    from rlformal_utils.arithmetic.params import MAX_KL_TARGET
    games, held, training = _games_lists()
    heldout_rule = ("is not allowed: it must be a non-empty list of bundled game names that leaves at least two "
                    f"games for training; bundled games: {games}")
    return [
        ("arithmetic", dict(algorithm="group", engine="trl"),
         "parameter engine='trl' needs algorithm='ppo' (got algorithm='group'); allowed engines for it: ['fast']"),
        ("arithmetic", dict(algorithm="supervised", engine="trl"),
         "parameter engine='trl' needs algorithm='ppo' (got algorithm='supervised'); allowed engines for it: ['fast']"),
        ("arithmetic", dict(kl_target=0.0),
         f"parameter kl_target=0.0 is not allowed: it must be a number in (0, {MAX_KL_TARGET:.2f}]: a policy sure of "
         "one answer has KL log(103) to a uniform reference"),
        ("arithmetic", dict(algorithm="group", kl_reference="frozen", kl_coef=0.2, kl_controller="trl"),
         "parameter kl_controller='trl' is not allowed with algorithm='group': the group-relative update keeps its "
         "KL coefficient fixed; allowed: ['fixed']"),
        ("arithmetic", dict(algorithm="group", kl_reference="frozen", kl_coef=0.2, kl_controller="adaptive"),
         "parameter kl_controller='adaptive' is not allowed with algorithm='group': the group-relative update keeps "
         "its KL coefficient fixed; allowed: ['fixed']"),
        ("arithmetic", dict(prompts_per_step=32, mini_batch_size=5),
         "parameter mini_batch_size=5 must divide prompts_per_step=32"),
        ("sentiment", dict(prompt_min_tokens=5, prompt_max_tokens=3),
         "parameter prompt_max_tokens=3 is not allowed: it must be an integer in [5, 64] (at least prompt_min_tokens)"),
        ("sentiment", dict(response_min_tokens=6, response_max_tokens=5),
         "parameter response_max_tokens=5 is not allowed: it must be an integer in [6, 256] (at least "
         "response_min_tokens)"),
        ("sentiment", dict(likeness_bank=4, likeness_k=5),
         "parameter likeness_k=5 is not allowed: it must be an integer in [1, 4] (at most likeness_bank)"),
        ("sentiment", dict(ppo_batch_size=16, ppo_mini_batch_size=6),
         "parameter ppo_mini_batch_size=6 must divide ppo_batch_size=16"),
        ("sentiment", dict(algorithm="group", ppo_batch_size=16, group_size=6),
         "parameter group_size=6 must divide ppo_batch_size=16 (the responses of a step)"),
        ("sentiment", dict(lora_rank=16, kl_mode="policy"),
         "parameter kl_mode='policy' is not allowed with lora_rank > 0: the KL reference of a LoRA policy is the "
         "base model with the adapter disabled; use kl_coef=0 for no KL"),
        ("sentiment", dict(policy="rt-gpt2", prompt_format="chat"),
         "parameter prompt_format='chat' is not allowed for policy='rt-gpt2'; choose one of ['plain', 'instruction'] "
         "(its tokenizer has no chat template)"),
        ("sentiment", dict(reward="vader", judge="vader"),
         "parameter judge='vader' must differ from reward='vader': the judge is independent"),
        ("games", dict(heldout_games=[]), f"parameter heldout_games=[] {heldout_rule}"),
        ("games", dict(heldout_games=["chess"]), f"parameter heldout_games=['chess'] {heldout_rule}"),
        ("games", dict(heldout_games=games[:-1]), f"parameter heldout_games={games[:-1]!r} {heldout_rule}"),
        ("games", dict(ppo_games=["hex"]),
         "parameter ppo_games=['hex'] is not allowed: it must list training games only (empty means all); "
         f"training games: {training}"),
        ("games", dict(ppo_batch_size=12, ppo_mini_batch_size=5), "parameter ppo_mini_batch_size=5 must divide ppo_batch_size=12"),
        ("games", dict(ppo_batch_size=12, ppo_mini_batch_size=24), "parameter ppo_mini_batch_size=24 must divide ppo_batch_size=12"),
        ("games", dict(n_positions=512, max_new_tokens=257), "parameter max_new_tokens=257 must be at most n_positions / 2 = 256"),
        ("games", dict(algorithm="group", ppo_batch_size=12, group_size=5),
         "parameter group_size=5 is not allowed: it must be an integer in [2, 256] that divides ppo_batch_size=12 "
         "(the middles of a step)"),
    ]


def _allowed_edges():
    """Values right at the edge of each rule, on the allowed side: a rule must not be stricter than it says."""
    from rlformal_utils.arithmetic.params import MAX_KL_TARGET
    games, held, training = _games_lists()
    return [
        ("arithmetic", dict(algorithm="ppo", engine="trl")),
        ("arithmetic", dict(kl_target=MAX_KL_TARGET)),
        ("arithmetic", dict(algorithm="group", kl_reference="frozen", kl_coef=0.2, kl_controller="fixed")),
        ("arithmetic", dict(algorithm="group", kl_reference="frozen", kl_coef=0.0, kl_controller="trl")),
        ("arithmetic", dict(algorithm="group", kl_reference="policy", kl_coef=0.2, kl_controller="trl")),
        ("arithmetic", dict(algorithm="ppo", kl_reference="frozen", kl_coef=0.2, kl_controller="adaptive")),
        ("arithmetic", dict(prompts_per_step=32, mini_batch_size=8)),
        ("sentiment", dict(prompt_min_tokens=5, prompt_max_tokens=5, response_min_tokens=6, response_max_tokens=6)),
        ("sentiment", dict(likeness_bank=5, likeness_k=5)),
        ("sentiment", dict(ppo_batch_size=16, ppo_mini_batch_size=8)),
        ("sentiment", dict(algorithm="group", ppo_batch_size=16, group_size=16, ppo_mini_batch_size=16)),
        ("sentiment", dict(algorithm="ppo", ppo_batch_size=16, group_size=6)),  # PPO ignores the group size
        ("sentiment", dict(lora_rank=0, kl_mode="policy")),
        ("sentiment", dict(policy="rt-gpt2", prompt_format="instruction")),
        ("sentiment", dict(reward="vader", judge="minilm-logreg")),
        ("games", dict(heldout_games=games[:-2], ppo_games=[])),
        ("games", dict(ppo_games=training[:2])),
        ("games", dict(ppo_batch_size=12, ppo_mini_batch_size=12)),
        ("games", dict(n_positions=512, max_new_tokens=256)),
        ("games", dict(algorithm="group", ppo_batch_size=12, group_size=12)),
        ("games", dict(algorithm="ppo", ppo_batch_size=12, group_size=5)),  # PPO ignores the group size
    ]


def _check(experiment, values):
    import importlib
    P = importlib.import_module(f"rlformal_utils.{experiment}.params")
    return P.check(dict(defaults(P.PARAMS), **values))


def test_every_rule_between_parameters_stops_with_a_message_naming_the_parameter():
    import re
    for experiment, bad, message in _cross_rules():
        with pytest.raises(ParameterError, match="^" + re.escape(message) + "$"):
            _check(experiment, bad)


def test_values_at_the_edge_of_every_rule_are_allowed():
    for experiment, values in _allowed_edges():
        config = _check(experiment, values)
        assert all(config[k] == v for k, v in values.items() if k in config), (experiment, values)


def test_every_check_rule_has_a_case_here():
    """Each experiment's check() raises in as many places as the table above has distinct rules for it:
    a new rule without a test here fails this test."""
    import ast
    import inspect
    import importlib
    expected = {"arithmetic": 4, "sentiment": 7, "games": 5}
    for experiment, n in expected.items():
        source = inspect.getsource(importlib.import_module(f"rlformal_utils.{experiment}.params").check)
        raises = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Raise)]
        assert len(raises) == n, (experiment, len(raises))
