"""OpenCLIP models from the command line: `--model open_clip:ARCH/PRETRAINED` (e.g.
`open_clip:ViT-B-32/laion2b_s34b_b79k`, downloaded) or `open_clip:FOLDER` (a folder with
open_clip_config.json and weights, as open_clip pushes to the hub). open_clip_torch is the `clip`
extra and is imported only here, only for such a model.

The model's own preprocessing (`get_model_preprocess_cfg`) becomes the timm data config the rest
of vit-explain reads (`model.pretrained_cfg`); its tokenizer is attached as `model.tokenizer`.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .hub import ModelLoadError, first_line, hf_offline, reachable, unreadable_file, weights_error
from .messages import shown

OPEN_CLIP_PREFIX = "open_clip:"


def load_open_clip(source: str) -> nn.Module:
    """The model, with its preprocessing and tokenizer; ModelLoadError with one sentence."""
    try:
        import open_clip
        from huggingface_hub import constants
    except ImportError:
        raise ModelLoadError(f"--model {OPEN_CLIP_PREFIX}{source} needs the open_clip_torch package: "
                             "pip install 'vit-explain[clip]'") from None
    folder = Path(source).expanduser()
    local = folder.is_dir()
    if local:
        if not (folder / "open_clip_config.json").is_file():
            raise ModelLoadError(f"{shown(folder)} is not an OpenCLIP model folder (no open_clip_config.json in it)")
        if weights_file(folder) is None:  # open_clip would build the model with random weights
            raise ModelLoadError(f"{shown(folder)} has no weights file (open_clip_model.safetensors, ...)")
        name, pretrained = "local-dir:" + str(folder), None
    else:
        name, _, pretrained = source.partition("/")
        if name not in open_clip.list_models():
            raise ModelLoadError(f"unknown OpenCLIP architecture {name!r}; open_clip.list_models() names them")
        if not pretrained:
            raise ModelLoadError(f"name the weights: --model {OPEN_CLIP_PREFIX}{name}/PRETRAINED, one of "
                                 f"{', '.join(open_clip.list_pretrained_tags_by_model(name)[:4]) or 'none known'}")
        if not reachable(constants.ENDPOINT):
            raise ModelLoadError(f"cannot download the OpenCLIP weights {source!r}: no network. "
                                 f"Use --model {OPEN_CLIP_PREFIX}FOLDER (open_clip_config.json and weights)")
    try:
        with hf_offline(local):
            model = open_clip.create_model(name, pretrained=pretrained)
            preprocess = open_clip.get_model_preprocess_cfg(model)
    except Exception as error:  # open_clip, huggingface_hub, torch and safetensors raise many types
        if unreadable_file(error) and local:
            raise weights_error(folder, error) from None
        raise ModelLoadError(f"cannot load {source!r} with open_clip: {first_line(error)}") from None
    model.pretrained_cfg = data_config(preprocess)
    model.num_classes = 0
    try:
        model.tokenizer = open_clip.get_tokenizer(name)
    except Exception:  # a tokenizer that must be downloaded: the adapter falls back to open_clip's BPE
        pass
    return model


def data_config(preprocess: dict) -> dict:
    """open_clip's preprocessing (resize the shortest edge, crop the centre, by default) as a timm
    data config."""
    size = preprocess.get("size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    squash = preprocess.get("resize_mode") == "squash"
    return {"input_size": (3, int(height), int(width)), "interpolation": preprocess.get("interpolation", "bicubic"),
            "mean": tuple(preprocess.get("mean", (0.48145466, 0.4578275, 0.40821073))),
            "std": tuple(preprocess.get("std", (0.26862954, 0.26130258, 0.27577711))),
            "crop_pct": 1.0, "crop_mode": "squash" if squash else "center", "label_names": []}
