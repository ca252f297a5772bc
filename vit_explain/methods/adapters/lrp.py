"""Where CP-LRP's rules attach, per model family: the adapters' knowledge for `VITCPLRP`.

`lrp_parts(adapter)` names the modules of a model that the LRP rules of
`vit_explain.math.lrp` replace, or raises a ValueError naming the model where vit-explain does
not know them. The rules are conservative only if they cover every non-linear step between the
input and the logits, so a model is accepted only when every module without children is of a kind
the rules cover (or is linear on its own: dropout in eval mode, identity, layer scale):

* timm's standard ViT (`vision_transformer` Block, Attention and Mlp; the class token or average
  pooling, no attention pooling, no gated attention): LayerNorms, the Mlp's activation, the
  attention's q_norm / k_norm outputs (the queries and keys, detached by CP-LRP), its packed qkv
  projection (AttnLRP's gradient scales), every Linear and the patch embedding's convolution;
* Hugging Face ViTForImageClassification: the same parts under transformers' names (separate
  query, key and value projections);
* the vision towers of Hugging Face CLIPModel, SiglipModel and Dinov2Model, and OpenCLIP ViTs:
  see `lrp_foundation.py`.

torchvision ViTs are not given rules (their `nn.MultiheadAttention` would take the argument rules
OpenCLIP's do; not done yet), CaiT has class-attention and talking-heads blocks, Swin windowed
attention: refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import Adapter, pair
from .huggingface import HuggingFaceViTAdapter, projections
from .timm import TimmAdapter, vit_blocks

# Elementwise activations the identity rule g * f(x) / x covers (f(0) = 0, f(x) / x bounded), by
# (module, class name) so that no optional package is imported to check.
ACTIVATIONS = {
    ("torch.nn.modules.activation", "GELU"), ("torch.nn.modules.activation", "ReLU"),
    ("torch.nn.modules.activation", "SiLU"),
    ("timm.layers.activations", "GELU"), ("timm.layers.activations", "GELUTanh"),
    ("timm.layers.activations", "QuickGELU"),
    ("transformers.activations", "GELUActivation"), ("transformers.activations", "NewGELUActivation"),
    ("transformers.activations", "FastGELUActivation"), ("transformers.activations", "QuickGELUActivation"),
    ("transformers.activations", "GELUTanh"), ("transformers.activations", "PytorchGELUTanh"),
}
# Modules linear on their own in eval mode, which need no rule.
PASS_THROUGH = {
    ("torch.nn.modules.dropout", "Dropout"), ("torch.nn.modules.linear", "Identity"),
    ("timm.layers.drop", "DropPath"), ("timm.layers.layer_scale", "LayerScale"),
    ("open_clip.transformer", "LayerScale"),
}


@dataclass(frozen=True)
class LRPParts:
    norms: list            # LayerNorms: the identity rule (standard deviation held constant)
    activations: list      # elementwise activations: the identity rule g * f(x) / x
    queries_keys: list     # modules whose outputs are the queries and the keys: detached (CP-LRP)
    attention_scales: list  # (module, scales): AttnLRP's uniform rule, on the q, k, v projections' outputs
    linears: list          # nn.Linear layers: the gamma rule when asked
    patch_embedding: nn.Module  # the patch embedding's Conv2d: the gamma rule when asked
    patch_size: tuple[int, int]
    first_norm: nn.Module  # the first block's first norm: its input (B, N, C) gives the token count
    # nn.MultiheadAttention modules: they project query, key and value inside one call, so their
    # rules act on those three arguments (forward pre-hooks); the gamma rule cannot reach them
    multihead: list = field(default_factory=list)


def _kind(module: nn.Module) -> tuple[str, str]:
    return type(module).__module__, type(module).__name__


def _check_leaves(model: nn.Module, allowed: set, name_of: str | None = None) -> None:
    """ValueError naming the model (or name_of) and the first module without children that no rule covers."""
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue
        if isinstance(module, (nn.Linear, nn.LayerNorm)) or _kind(module) in ACTIVATIONS | PASS_THROUGH | allowed:
            if getattr(module, "inplace", False) and _kind(module) in PASS_THROUGH:
                raise ValueError(f"CP-LRP cannot follow the in-place {type(module).__name__} at {name!r} of "
                                 f"{name_of or type(model).__name__}")
            continue
        raise ValueError(f"CP-LRP's rules do not cover {type(module).__name__} at {name!r} of "
                         f"{name_of or type(model).__name__}; its relevance would not be conserved")


def _scales(width: int, parts: tuple[float, ...], device, dtype) -> torch.Tensor:
    """(len(parts) * width,) gradient scales, one value per packed part (q, k, v)."""
    return torch.cat([torch.full((width,), value, device=device, dtype=dtype) for value in parts])


# AttnLRP's uniform rule on q k^T and on A v halves the gradient at each factor: the queries and
# keys take part in both products (1/2 * 1/2), the values in one.
QUERY_KEY_SCALE, VALUE_SCALE = 0.25, 0.5


def timm_parts(model: nn.Module) -> LRPParts:
    blocks = vit_blocks(model)  # ValueError naming the model unless timm's standard blocks
    from timm.layers import Mlp
    name = type(model).__name__
    embed = getattr(model, "patch_embed", None)
    conv = getattr(embed, "proj", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(getattr(model, "head", None), nn.Linear):
        raise ValueError(f"CP-LRP needs a timm ViT's Conv2d patch embedding and Linear head; {name} lacks them")
    if getattr(model, "attn_pool", None) is not None or getattr(model, "global_pool", "token") not in ("token", "avg"):
        raise ValueError(f"CP-LRP covers class-token and average pooling; {name} pools with "
                         f"{getattr(model, 'global_pool', None)!r}")
    for index, block in enumerate(blocks):
        if getattr(block.attn, "gate", None) is not None:
            raise ValueError(f"CP-LRP does not cover the gated attention of block {index} of {name}")
        if type(block.mlp) is not Mlp or _kind(block.mlp.act) not in ACTIVATIONS:
            raise ValueError(f"CP-LRP covers timm's Mlp with a GELU-type activation; block {index} of {name} has "
                             f"{type(block.mlp).__name__} with {type(getattr(block.mlp, 'act', None)).__name__}")
    _check_leaves(model, {("torch.nn.modules.conv", "Conv2d")})
    if sum(isinstance(m, nn.Conv2d) for m in model.modules()) != 1:
        raise ValueError(f"CP-LRP expects one convolution (the patch embedding) in {name}")
    scales = []
    for block in blocks:
        qkv = block.attn.qkv
        scales.append((qkv, _scales(qkv.out_features // 3, (QUERY_KEY_SCALE, QUERY_KEY_SCALE, VALUE_SCALE),
                                    qkv.weight.device, qkv.weight.dtype)))
    return LRPParts(
        norms=[m for m in model.modules() if isinstance(m, nn.LayerNorm)],
        activations=[block.mlp.act for block in blocks],
        queries_keys=[m for block in blocks for m in (block.attn.q_norm, block.attn.k_norm)],
        attention_scales=scales,
        linears=[m for m in model.modules() if isinstance(m, nn.Linear)],
        patch_embedding=conv,
        patch_size=pair(conv.stride),
        first_norm=blocks[0].norm1,
    )


def huggingface_parts(adapter: HuggingFaceViTAdapter) -> LRPParts:
    model, name = adapter.model, type(adapter.model).__name__
    layers = adapter.blocks()
    found = [projections(layer) for layer in layers]
    conv = getattr(getattr(getattr(getattr(model, "vit", None), "embeddings", None), "patch_embeddings", None),
                   "projection", None)
    if any(p is None for p in found) or not isinstance(conv, nn.Conv2d):
        raise ValueError(f"CP-LRP does not know the attention or the patch embedding of {name}")
    _check_leaves(model, {("torch.nn.modules.conv", "Conv2d")})
    activations = [m for m in model.modules() if _kind(m) in ACTIVATIONS]
    if len(activations) != len(layers):
        raise ValueError(f"CP-LRP expects one activation per layer of {name}; found {len(activations)}")
    first = getattr(layers[0], "layernorm_before", None)
    if not isinstance(first, nn.LayerNorm):
        raise ValueError(f"CP-LRP does not know the layer norms of {name}")
    scales = [(module, scale) for p in found
              for module, scale in ((p.query, QUERY_KEY_SCALE), (p.key, QUERY_KEY_SCALE), (p.value, VALUE_SCALE))]
    return LRPParts(
        norms=[m for m in model.modules() if isinstance(m, nn.LayerNorm)],
        activations=activations,
        queries_keys=[m for p in found for m in (p.query, p.key)],
        attention_scales=[(module, torch.tensor(scale, dtype=module.weight.dtype, device=module.weight.device))
                          for module, scale in scales],
        linears=[m for m in model.modules() if isinstance(m, nn.Linear)],
        patch_embedding=conv,
        patch_size=pair(conv.stride),
        first_norm=first,
    )


def lrp_parts(adapter: Adapter) -> LRPParts:
    """The parts of adapter.model that CP-LRP's rules replace; ValueError naming the model where
    vit-explain does not know them (see the module docstring)."""
    if type(adapter) is TimmAdapter:
        return timm_parts(adapter.model)
    if type(adapter) is HuggingFaceViTAdapter:
        return huggingface_parts(adapter)
    from .lrp_foundation import foundation_parts  # the families of lrp_foundation.py, or None
    parts = foundation_parts(adapter)
    if parts is not None:
        return parts
    raise ValueError(f"CP-LRP's rules are defined for timm's standard ViT, Hugging Face ViTs, the vision towers of "
                     f"Hugging Face CLIP, SigLIP and DINOv2 and OpenCLIP ViTs; vit-explain "
                     f"does not apply them to {type(adapter.model).__name__} (its attention computes queries and "
                     "keys where no module output can detach them, or its blocks are of another kind)")
