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
