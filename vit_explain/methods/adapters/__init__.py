"""Architecture adapters: one file per model family, one line each in `ADAPTERS`.

`adapter_for(model)` returns the first adapter in `ADAPTERS` whose `matches(model,
attention_layer_name)` is true, so the list runs from the most specific family to the
fallback. The contract an adapter fulfils is in `base.py`; `tests/test_contracts.py` runs
every method of the method table on an example model of every adapter listed here.

To add a family: a file here with an `Adapter` subclass (and a recorder in
`vit_explain/recording/` only if its attention needs new hooking), plus one line below.
"""
from __future__ import annotations

from torch import nn

from ...recording import DEFAULT_ATTENTION_LAYER
from .base import Adapter, TokenLayout, check_input_shape
from .cait import CaitAdapter
from .huggingface import HuggingFaceViTAdapter
from .huggingface_embedding import HuggingFaceEmbeddingAdapter
from .open_clip import OpenCLIPAdapter
from .swin import SwinAdapter
from .timm import TimmAdapter, token_layout
from .torchvision import TorchvisionViTAdapter

ADAPTERS: tuple[type[Adapter], ...] = (
    HuggingFaceEmbeddingAdapter,  # transformers CLIPModel, SiglipModel, Dinov2Model (embeddings, prompts)
    HuggingFaceViTAdapter,   # transformers ViTForImageClassification
    CaitAdapter,             # timm CaiT (self-attention, then class-attention blocks)
    SwinAdapter,             # timm Swin: windowed attention, Grad-CAM only
    TorchvisionViTAdapter,   # torchvision VisionTransformer (nn.MultiheadAttention)
    OpenCLIPAdapter,         # open_clip CLIP with a ViT image tower (nn.MultiheadAttention; prompts)
    TimmAdapter,             # every other timm ViT-style model (the fallback)
)


def adapter_for(model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER) -> Adapter:
    """The adapter for this model (see the module docstring); ValueError when there is none."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for adapter in ADAPTERS:
        if adapter.matches(model, attention_layer_name):
            return adapter.for_model(model, attention_layer_name)
    raise ValueError(f"no adapter explains {type(model).__name__}")


__all__ = ["ADAPTERS", "Adapter", "CaitAdapter", "HuggingFaceEmbeddingAdapter", "HuggingFaceViTAdapter", "OpenCLIPAdapter", "SwinAdapter", "TimmAdapter",
           "TokenLayout", "TorchvisionViTAdapter", "adapter_for", "check_input_shape", "token_layout"]
