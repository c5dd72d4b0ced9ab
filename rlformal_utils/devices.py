"""Where a run's models compute: ``device="auto"`` is a visible CUDA GPU, else the CPU.

The choice is bookkeeping, like the thread count: it is not part of ``config.json``. What runs
where:
- arithmetic: the policy (and its frozen reference) on the device; the next-token logits come
  back to the CPU, where answers are sampled (with the run's CPU generator on any device), scored
  and turned into losses. Pretraining the weak base model stays on the CPU (seconds; its cache is
  then the same on every machine).
- sentiment and games: trl's ``PPOTrainer`` (accelerate) puts the policy on the device; sampling
  and the evaluation send their token ids to the model's device. The reward models stay on the CPU.

Only the CPU path is tested here (the reference machine has no GPU)."""
from __future__ import annotations

import torch

from .runs import ParameterError

DEVICES = ("auto", "cpu", "cuda")


def resolve(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when torch sees a CUDA GPU, else ``cpu``; ``cuda`` without a GPU is an error."""
    if device not in DEVICES:
        raise ParameterError(f"parameter device={device!r} is not allowed: it must be one of {list(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ParameterError("parameter device='cuda' is not allowed on this machine: torch sees no CUDA GPU "
                             "(torch.cuda.is_available() is False); use 'auto' or 'cpu'")
    return torch.device(device)


def trl_kwargs(device) -> dict:
    """What trl's ``PPOConfig`` needs to keep its models on ``device``: accelerate would otherwise
    move them to any GPU it sees."""
    return {"accelerator_kwargs": {"cpu": torch.device(device).type == "cpu"}}


def of(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
