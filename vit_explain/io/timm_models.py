"""timm models: by name (pretrained weights from the Hugging Face hub), from a local folder saved
by timm, or a named architecture with weights from a checkpoint file."""
from __future__ import annotations

import difflib
import json
from pathlib import Path

import timm
from torch import nn

from .hub import (ModelLoadError, brief, check_class_count, check_fits_memory, first_line, hf_offline, reachable,
                  unreadable_file, weights_error, weights_file)
from .messages import shown

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


def read_config(folder: Path) -> dict:
    """The folder's config.json, checked for what timm needs before it builds anything."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{shown(folder)} is not a saved timm model folder (no config.json in it)")
    try:
        config = json.loads(path.read_bytes())
    except OSError as error:
        raise ModelLoadError(f"cannot read {shown(path)}: {error.strerror or first_line(error)}") from None
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        raise ModelLoadError(f"{shown(path)} is not valid JSON: {first_line(error)}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{shown(path)} is not a timm model config (a JSON object)")
    architecture = config.get("architecture")
    if not isinstance(architecture, str) or not architecture:
        raise ModelLoadError(f"{shown(path)} names no architecture (its \"architecture\" key)")
    if not timm.is_model(architecture):
        raise ModelLoadError(f"{shown(path)} names architecture {architecture!r}, which timm "
                             f"{timm.__version__} does not know.{suggest_names(architecture)}")
    if "num_classes" in config:
        check_class_count(config["num_classes"], shown(path))
    return config


def load_local_dir(source: str) -> nn.Module:
    """A folder written by timm.models.save_for_hf: architecture, weights, preprocessing, names.

    Its config, its weights file and the model's size are checked first, and what timm raises
    while it builds the model and loads the weights becomes one sentence: a broken folder is
    a model error (ModelLoadError), not a crash."""
    folder = Path(source).expanduser()
    read_config(folder)
    weights = weights_file(folder)
    if weights is None:
        raise ModelLoadError(f"{shown(folder)} has no weights file (model.safetensors, pytorch_model.bin, ...)")
    name = LOCAL_DIR + str(folder)
    check_fits_memory(lambda: timm.create_model(name, pretrained=False), f"the model in {shown(folder)}")
    try:
        with hf_offline(True):
            return timm.create_model(name, pretrained=True)
    except Exception as error:  # timm, torch and safetensors raise many types for files they cannot use
        raise local_dir_error(folder, weights, error) from None


def local_dir_error(folder: Path, weights: Path, error: Exception) -> ModelLoadError:
    """Which part of a saved folder timm could not use: the weights file, or the config."""
    if unreadable_file(error, also=(OSError,)):  # the config was read: an OS error is the weights'
        return weights_error(weights, error)
    if "state_dict" in str(error):  # torch's "Error(s) in loading state_dict": missing keys, wrong shapes
        return ModelLoadError(f"the weights in {shown(weights)} do not fit the architecture its config.json "
                              f"names: {brief(error)}")
    return ModelLoadError(f"cannot build the model {shown(folder / 'config.json')} describes: {first_line(error)}")


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
    except Exception as error:  # LocalEntryNotFoundError is an OSError; a corrupt cached file raises others
        if offline or "connection" in str(error).lower():
            raise ModelLoadError(offline_advice(name)) from None
        raise ModelLoadError(f"cannot load {name!r}: {first_line(error)}") from None


def load_checkpoint(name: str, path: str) -> nn.Module:
    """Weights for a named architecture; the class count is read from the checkpoint's head,
    and checked (with the model's size) before the model is built."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelLoadError(f"checkpoint {shown(file)} does not exist")
    try:
        state = timm.models.load_state_dict(str(file))
    except Exception as error:  # torch and safetensors raise many types for a file they cannot read
        raise weights_error(file, error) from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"checkpoint {shown(file)} holds a {type(state).__name__}, not a state dict "
                             "(a dict of tensors)")
    head = state.get("head.weight")
    kwargs = {}
    if getattr(head, "ndim", None) == 2:
        check_class_count(int(head.shape[0]), f"the head of checkpoint {shown(file)}")
        kwargs["num_classes"] = int(head.shape[0])
    check_fits_memory(lambda: timm.create_model(name, pretrained=False, **kwargs),
                      f"{name} with the head of checkpoint {shown(file)}")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
        model.load_state_dict(state, strict=True)
    except Exception as error:  # torch's "Error(s) in loading state_dict" is a RuntimeError
        raise ModelLoadError(f"checkpoint {shown(file)} does not fit {name}: {brief(error)}") from None
    return model
