"""Game model with LoRA, the SFT curve, the deciding evaluation (temperature chosen on training
prompts, paired bootstrap intervals) and the novelty distance; tiny models and fake rewarders only."""
import math

import numpy as np
import pytest
import torch

from rlformal_utils.games import evaluate as E
from rlformal_utils.games import fim as F
from rlformal_utils.games import lm as L
from rlformal_utils.games import params as P
from rlformal_utils.params import defaults
from rlformal_utils.runs import ParameterError

HELD = ["tic_tac_toe", "yavalath", "hex", "wolf_and_sheep"]


def _config(**over):
    c = defaults(P.PARAMS)
    c.update(model_size="tiny", vocab_size=320, n_positions=256, max_new_tokens=16, sft_steps=30,
             sft_batch_size=8, sft_lr=5e-3, max_middle_chars=30, context_chars=24)
    c.update(over)
    return c


@pytest.fixture(scope="module")
def data():
    return F.make_data(HELD, 30)


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("name,value,words", [("lora_rank", 3, "lora_rank=3"), ("lora_rank", -1, "lora_rank=-1"),
                                              ("model_size", "huge-llm", "model_size")])
def test_bad_model_settings_stop_naming_the_parameter(name, value, words):
    values = dict(defaults(P.PARAMS), **{name: value})
    with pytest.raises(Exception, match=words):  # ParameterError, or OfflineError for an unknown model offline
        P.check(values)


def test_lora_ranks_message_lists_the_allowed_values():
    with pytest.raises(ParameterError, match=r"\[0, 1, 2, 4, 8, 16, 32, 64, 128\]"):
        P.check(dict(defaults(P.PARAMS), lora_rank=5))


# ----------------------------------------------------------------------------- LoRA SFT
def test_curve_steps_are_evenly_spaced_and_end_at_the_budget():
    assert L.curve_steps(30, 3) == [10, 20, 30]
    assert L.curve_steps(10, 4) == [2, 5, 8, 10]  # rounded: 2.5 -> 2, 7.5 -> 8 (banker's rounding)
    assert L.curve_steps(30, 0) == [] and L.curve_steps(0, 3) == []


def test_default_key_is_unchanged_by_the_new_options(data):
    key = L.sft_key(_config(), data)
    assert "lora_rank" not in key and "checkpoints" not in key  # cached full fine-tuning folders stay valid
    assert L.sft_key(_config(lora_rank=4), data)["lora_rank"] == 4


def test_lora_sft_lowers_the_loss_trains_only_adapters_and_is_cached(data, isolated_cache):
    config = _config(lora_rank=8, sft_curve_points=3)
    folder = L.sft_model_dir(config, data)
    losses = [float(x) for x in (folder / "sft_losses.csv").read_text().split()[1:]]
    assert len(losses) == 30 and np.mean(losses[-5:]) < losses[0] - 0.3
    assert (folder / "adapter" / "adapter_config.json").exists() and (folder / "base").exists()
    assert L.sft_info(folder) == dict(model_size="tiny", lora_rank=8, checkpoints=[10, 20, 30])
    # the base is the untouched initial model; the merged model differs from it
    base = L.load_base(folder)
    merged, tok = L.load_sft(folder)
    from rlformal_utils.pretrain import build_gpt2
    fresh = build_gpt2("tiny", tok, n_positions=config["n_positions"], seed=config["sft_seed"])
    for (n, a), b in zip(base.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), n
    changed = [n for n, a in merged.state_dict().items() if not torch.equal(a, base.state_dict()[n])]
    assert changed and all(("attn" in n or "mlp" in n) and n.endswith("weight") for n in changed)
    assert not any("wte" in n or "ln_" in n for n in changed)  # embeddings and norms are frozen
    # the last checkpoint is the final model; an earlier one is a different model
    ids = torch.tensor([L.encode_example(tok, data.train[0], 24)[0]])
    with torch.no_grad():
        final = merged(ids).logits
        assert torch.allclose(L.load_checkpoint(folder, 30)(ids).logits, final, atol=1e-4)
        assert not torch.allclose(L.load_checkpoint(folder, 10)(ids).logits, final, atol=1e-3)
    with pytest.raises(FileNotFoundError, match="saved: \\[10, 20, 30\\]"):
        L.load_checkpoint(folder, 15)
    # a second call builds nothing
    stamp = (folder / "sft_losses.csv").stat().st_mtime_ns
    assert L.sft_model_dir(config, data) == folder and (folder / "sft_losses.csv").stat().st_mtime_ns == stamp
