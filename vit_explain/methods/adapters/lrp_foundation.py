"""Where CP-LRP's rules attach on foundation models: the vision towers of Hugging Face CLIPModel,
SiglipModel and Dinov2Model, and OpenCLIP ViTs (see `lrp.py` for the rules and the leaf check).

Only the vision tower (with CLIP's bias-free `visual_projection`) is on the path from the pixels
to the explained score: the prompts' and references' embeddings are computed once, without
gradients (`vit_explain.methods.targets`), so the leaf check looks at the vision tower alone, not
at the text tower's modules. In the vision tower:

* `nn.Embedding` is the table of position embeddings, indexed by constant positions: an added
  constant, which absorbs relevance as timm's `pos_embed` parameter does;
* CLIP's QuickGELU, SigLIP's tanh GELU and DINOv2's GELU take the activations' identity rule;
  pre_layrnorm, post_layernorm and every layer norm the LayerNorm identity rule;
* the separate q/k/v projections (`self_attn` in CLIP and SigLIP, `attention` in DINOv2) are
  HF ViT's: q and k detached (CP) or AttnLRP's gradient scales;
* SigLIP's attention-pooling head is an `nn.MultiheadAttention` (query: the learned probe, key and
  value: the tokens), as every OpenCLIP block's attention: the rules act on its query, key and
  value arguments (`LRPParts.multihead`), so the pooled output is A v with A constant (CP).

The L2 normalisation inside a prompt's or reference's cosine similarity takes its identity rule
in `VITCPLRP` (`vit_explain.math.lrp.l2_normalize_identity`).
"""
from __future__ import annotations

import torch
from torch import nn

from ...recording import find_multihead_attention
from .base import Adapter, pair
from .huggingface import projections
from .huggingface_embedding import HuggingFaceEmbeddingAdapter
from .lrp import ACTIVATIONS, QUERY_KEY_SCALE, VALUE_SCALE, LRPParts, _check_leaves, _kind
from .open_clip import OpenCLIPAdapter

CONV = ("torch.nn.modules.conv", "Conv2d")
EMBEDDING = ("torch.nn.modules.sparse", "Embedding")
DINOV2_LAYER_SCALE = ("transformers.models.dinov2.modeling_dinov2", "Dinov2LayerScale")  # x * lambda


def _only_conv(tower: nn.Module, name: str) -> nn.Conv2d:
    convs = [m for m in tower.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 1:
        raise ValueError(f"CP-LRP expects one convolution (the patch embedding) in {name}'s vision tower; "
                         f"found {len(convs)}")
    return convs[0]


def _scale_tensor(module: nn.Module, value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=module.weight.dtype, device=module.weight.device)


def huggingface_embedding_parts(adapter: HuggingFaceEmbeddingAdapter) -> LRPParts:
    model, name = adapter.model, type(adapter.model).__name__
    tower, projection = adapter.family.vision(model), adapter.family.projection(model)
    layers = adapter.blocks()
    found = [projections(layer) for layer in layers]
    if any(p is None for p in found):
        raise ValueError(f"CP-LRP does not know the attention projections of {name}'s vision tower")
    _check_leaves(tower, {CONV, EMBEDDING, DINOV2_LAYER_SCALE}, name_of=f"{name}'s vision tower")
    _check_leaves(projection, set(), name_of=f"{name}'s projection")
    conv = _only_conv(tower, name)
    parts = [tower, projection]
    scales = [(module, _scale_tensor(module, scale)) for p in found
              for module, scale in ((p.query, QUERY_KEY_SCALE), (p.key, QUERY_KEY_SCALE), (p.value, VALUE_SCALE))]
    multihead = [module for _, module in find_multihead_attention(tower)]
    # nn.MultiheadAttention uses its out_proj's weights without calling it: not a module the gamma rule can hook
    inside = {id(m.out_proj) for m in multihead}
    return LRPParts(
        norms=[m for part in parts for m in part.modules() if isinstance(m, nn.LayerNorm)],
        activations=[m for m in tower.modules() if _kind(m) in ACTIVATIONS],
        queries_keys=[m for p in found for m in (p.query, p.key)],
        attention_scales=scales,
        linears=[m for part in parts for m in part.modules() if isinstance(m, nn.Linear) and id(m) not in inside],
        patch_embedding=conv,
        patch_size=pair(conv.stride),
        first_norm=getattr(layers[0], adapter.family.gradcam_layer),
        multihead=multihead,
    )


def open_clip_parts(adapter: OpenCLIPAdapter) -> LRPParts:
    name, visual = type(adapter.model).__name__, adapter.visual
    adapter.check_attention()  # a ViT tower without an attention pool
    _check_leaves(visual, {CONV}, name_of=f"{name}'s image tower")
    conv = _only_conv(visual, name)
    blocks = adapter.blocks()
    multihead = [block.attn for block in blocks]
    if not all(isinstance(m, nn.MultiheadAttention) for m in multihead):
        raise ValueError(f"CP-LRP covers OpenCLIP blocks with nn.MultiheadAttention; {name}'s have "
                         f"{type(multihead[0]).__name__}")
    inside = {id(m.out_proj) for m in multihead}
    return LRPParts(
        norms=[m for m in visual.modules() if isinstance(m, nn.LayerNorm)],
        activations=[m for m in visual.modules() if _kind(m) in ACTIVATIONS],
        queries_keys=[], attention_scales=[],
        linears=[m for m in visual.modules() if isinstance(m, nn.Linear) and id(m) not in inside],
        patch_embedding=conv,
        patch_size=pair(conv.stride),
        first_norm=blocks[0].ln_1,
        multihead=multihead,
    )


def foundation_parts(adapter: Adapter) -> LRPParts | None:
    """The parts of a foundation model's vision tower; None for the other families."""
    if type(adapter) is HuggingFaceEmbeddingAdapter:
        return huggingface_embedding_parts(adapter)
    if type(adapter) is OpenCLIPAdapter:
        return open_clip_parts(adapter)
    return None
