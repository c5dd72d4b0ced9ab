"""Train/eval modes: dropout off in models trained by RL, evaluation always in eval mode.

trl 0.11.4's ``PPOTrainer.step`` leaves the policy in train mode, so anything that samples
or evaluates afterwards would run with dropout on unless it switches the mode itself.
Current RL trainers simply disable dropout in the policy, the reference and the value
head; ``disable_dropout`` does that, and ``eval_mode`` runs a block in eval mode under
``no_grad`` and restores the mode each module had before.
"""
from __future__ import annotations

import contextlib

import torch


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability in ``model`` to 0 (``nn.Dropout`` modules, float
    attributes such as Llama's ``attention_dropout``, and the matching config fields), so
    train mode and eval mode compute the same function. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for name, value in config.to_dict().items():
                if ("dropout" in name or "pdrop" in name) and isinstance(value, float):
                    setattr(config, name, 0.0)
    return model


@contextlib.contextmanager
def eval_mode(*models: torch.nn.Module):
    """Run the block with every model in eval mode and without gradients; afterwards each
    submodule gets back exactly the ``training`` flag it had."""
    saved = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for modes in saved:
            for module, training in modes:
                module.training = training
