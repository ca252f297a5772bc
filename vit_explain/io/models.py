"""Loading a model by the name the user gave: one loader per source, chosen by the name's prefix.

A name without a prefix is a timm model name (`timm_models.py`; `--checkpoint` weights or
`--hub` repo apply to those only). To add a source: its loader file plus one line in LOADERS.
"""
from __future__ import annotations

import torch
from torch import nn

from .hub import ModelLoadError
from .open_clip_models import OPEN_CLIP_PREFIX, load_open_clip
from .timm_models import LOCAL_DIR, load_local_dir, load_timm
from .torch_hub import load_hub
from .transformers_models import HF_PREFIX, load_transformers, saved_by_transformers

# prefix -> loader of what follows the prefix
LOADERS = {
    # a folder saved by timm (save_for_hf), or by transformers (save_pretrained: config.json has a model_type)
    LOCAL_DIR: lambda source: (load_transformers if saved_by_transformers(source) else load_local_dir)(source),
    HF_PREFIX: load_transformers,  # a Hugging Face transformers model: hub name or folder
    OPEN_CLIP_PREFIX: load_open_clip,  # an OpenCLIP model: ARCH/PRETRAINED or a folder
}


def load_model(name: str, hub: str | None = None, checkpoint: str | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """The model in eval mode on device, or ModelLoadError with one sentence."""
    prefix = next((p for p in LOADERS if name.startswith(p)), None)
    if prefix is not None:
        if hub or checkpoint:
            raise ModelLoadError(f"--hub and --checkpoint apply to timm models, not to {name}")
        model = LOADERS[prefix](name[len(prefix):])
    else:
        model = load_hub(hub, name) if hub else load_timm(name, checkpoint)
    try:
        return model.eval().to(device)
    except torch.cuda.OutOfMemoryError:  # a model larger than the device's memory is the model's problem
        raise ModelLoadError(f"{name!r} does not fit in the memory of {device}") from None


__all__ = ["LOADERS", "ModelLoadError", "load_model"]
