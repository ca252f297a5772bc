"""timm models: by name (pretrained weights from the Hugging Face hub), from a local folder saved
by timm, or a named architecture with weights from a checkpoint file."""
from __future__ import annotations

import difflib
from pathlib import Path

import timm
from torch import nn

from .hub import ModelLoadError, first_line, hf_offline, reachable

LOCAL_DIR = "local-dir:"  # timm's own prefix for a folder written by save_for_hf


def suggest_names(name: str) -> str:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    if not close:
        close = timm.list_models(f"*{name}*")[:3]
    return f" Did you mean {', '.join(close)}?" if close else ""


def offline_advice(name: str) -> str:
    return (f"cannot download the weights of {name!r}: no network and not in the local cache. "
            f"Use --model local-dir:FOLDER (a folder saved by timm) or --checkpoint FILE "
            f"(weights for {name})")


def load_local_dir(source: str) -> nn.Module:
    """A folder written by timm.models.save_for_hf: architecture, weights, preprocessing, names."""
    folder = Path(source).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a saved timm model folder (no config.json in it)")
    with hf_offline(True):
        return timm.create_model(LOCAL_DIR + str(folder), pretrained=True)


def load_timm(name: str, checkpoint: str | None = None) -> nn.Module:
    """A timm model by name: pretrained weights from the hub, or from a checkpoint file."""
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
