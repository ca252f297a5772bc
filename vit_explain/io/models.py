"""Loading models: timm names (pretrained), local timm folders, checkpoint files, torch hub,
and (transformers_models.py) Hugging Face transformers classifiers."""
from __future__ import annotations

import contextlib
import copy
import difflib
import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

LOCAL_DIR = "local-dir:"
HF_PREFIX = "hf:"  # a Hugging Face transformers classifier (transformers_models.py)


class ModelLoadError(Exception):
    """One-line, user-facing reason a model cannot be loaded."""


def reachable(url: str, timeout: float = 2.0) -> bool:
    """Can we open a TCP connection to url's host? A thread bounds DNS look-ups that hang."""
    parsed = urlparse(url)
    result = []

    def probe():
        try:
            socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


@contextlib.contextmanager
def hf_offline(offline: bool):
    """Make huggingface_hub answer from its cache at once instead of retrying for ~46 s."""
    from huggingface_hub import constants
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def suggest_names(name: str) -> str:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    if not close:
        close = timm.list_models(f"*{name}*")[:3]
    return f" Did you mean {', '.join(close)}?" if close else ""


def offline_advice(name: str) -> str:
    return (f"cannot download the weights of {name!r}: no network and not in the local cache. "
            f"Use --model local-dir:FOLDER (a folder saved by timm) or --checkpoint FILE "
            f"(weights for {name})")


def load_timm(name: str, checkpoint: str | None = None) -> nn.Module:
    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR):]).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder} is not a saved timm model folder (no config.json in it)")
        with hf_offline(True):
            return timm.create_model(LOCAL_DIR + str(folder), pretrained=True)
    if not timm.is_model(name):
        raise ModelLoadError(f"unknown model {name!r}.{suggest_names(name)}")
    if checkpoint:
        return load_checkpoint(name, checkpoint)
    from huggingface_hub import constants
    offline = not reachable(constants.ENDPOINT)
    try:
        with hf_offline(offline):
            return timm.create_model(name, pretrained=True)
    except (OSError, RuntimeError) as error:  # LocalEntryNotFoundError is an OSError
        if offline or "connection" in str(error).lower():
            raise ModelLoadError(offline_advice(name)) from None
        raise ModelLoadError(f"cannot load {name!r}: {first_line(error)}") from None


def load_checkpoint(name: str, path: str) -> nn.Module:
    """Weights for a named architecture; the class count is read from the checkpoint's head."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelLoadError(f"checkpoint {file} does not exist")
    try:
        state = timm.models.load_state_dict(str(file))
    except Exception as error:
        raise ModelLoadError(f"cannot read checkpoint {file}: {first_line(error)}") from None
    head = state.get("head.weight")
    kwargs = {"num_classes": head.shape[0]} if head is not None and head.ndim == 2 else {}
    model = timm.create_model(name, pretrained=False, **kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelLoadError(f"checkpoint {file} does not fit {name}: {first_line(error)}") from None
    return model


@contextlib.contextmanager
def timm_registry_preserved():
    """Hub repos such as facebookresearch/deit register their own functions under timm's names,
    after which timm.create_model fails; put timm's registry back as it was."""
    from timm.models import _registry
    saved = {key: copy.copy(value) for key, value in vars(_registry).items()
             if key.startswith("_") and not key.startswith("__") and isinstance(value, (dict, set, list))}
    modules_before = dict(sys.modules)
    # Hub repos often do `from models import ...`: a module of that name imported earlier would
    # shadow theirs.
    shadowed = {name: sys.modules.pop(name) for name in ("models", "utils") if name in sys.modules}
    try:
        yield
    finally:
        for key, value in saved.items():
            current = getattr(_registry, key)
            current.clear()
            current.update(value) if isinstance(value, (dict, set)) else current.extend(value)
        for name in ("models", "utils"):
            if name in sys.modules and sys.modules[name] is not modules_before.get(name):
                del sys.modules[name]
        sys.modules.update(shadowed)


def load_hub(repo: str, name: str) -> nn.Module:
    local = os.path.isdir(repo)
    if not local and not reachable("https://github.com"):
        raise ModelLoadError(
            f"cannot fetch {name!r} from torch hub repo {repo}: no network. Use --model "
            f"local-dir:FOLDER, --checkpoint FILE, or --hub with a local copy of the repo")
    try:
        with timm_registry_preserved():
            model = torch.hub.load(repo, name, pretrained=True, source="local" if local else "github",
                                   trust_repo=True)
    except Exception as error:
        raise ModelLoadError(f"cannot load {name!r} from torch hub repo {repo}: {first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"torch hub entry point {name!r} of {repo} did not return a model")
    return model


def load_model(name: str, hub: str | None = None, checkpoint: str | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """The model in eval mode on device, or ModelLoadError with one sentence."""
    if name.startswith(HF_PREFIX):
        if hub or checkpoint:
            raise ModelLoadError(f"--hub and --checkpoint apply to timm models, not to {name}")
        from .transformers_models import load_transformers
        model = load_transformers(name)
    else:
        model = load_hub(hub, name) if hub else load_timm(name, checkpoint)
    return model.eval().to(device)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
