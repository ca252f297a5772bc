"""Finding a model's modules by name: the attention modules to hook, and one layer for Grad-CAM.

A name the caller gave that the model lacks raises `LayerError` (a ValueError), so that a
command line can tell "you named a layer that is not there" from "this model cannot be explained".
"""
from __future__ import annotations

import difflib

from torch import nn

DEFAULT_ATTENTION_LAYER = "attn_drop"  # timm's module that receives the post-softmax attention
DEFAULT_TARGET_SUFFIX = "norm1"        # timm's first normalisation of a block: Grad-CAM's default


class LayerError(ValueError):
    """A layer the caller chose does not exist in the model, or cannot be used."""


def _candidates(model: nn.Module, limit: int = 5) -> list[str]:
    """The last few modules named like a block's normalisation layer (most useful last)."""
    names = [name for name, module in model.named_modules()
             if name.split(".")[-1] in ("norm1", "norm", "layernorm_before")
             and not isinstance(module, nn.Identity)]
    return names[-limit:]


def default_target_layer(model: nn.Module, suffix: str = DEFAULT_TARGET_SUFFIX) -> str:
    """The dotted name of the last module named `suffix` (default `norm1`: the last block's first
    normalisation, `blocks.11.norm1` for ViT/DeiT/BEiT/EVA, `layers.3.blocks.1.norm1` for Swin)."""
    names = [name for name, _ in model.named_modules() if name == suffix or name.endswith("." + suffix)]
    if not names:
        hint = _candidates(model)
        raise ValueError(
            f"{type(model).__name__} has no module named '{suffix}' to use as the "
            "default Grad-CAM target layer; pass target_layer= a dotted module name"
            + (f", e.g. {', '.join(repr(n) for n in hint)}" if hint else
               " (list them with [n for n, _ in model.named_modules()])")
        )
    return names[-1]


def find_module(model: nn.Module, module_name: str) -> nn.Module:
    """The submodule with this exact dotted name; LayerError naming candidates otherwise."""
    modules = dict(model.named_modules())
    if isinstance(module_name, str) and module_name and module_name in modules:
        return modules[module_name]
    close = difflib.get_close_matches(str(module_name), [n for n in modules if n], n=3)
    hint = list(dict.fromkeys(close + _candidates(model)))
    raise LayerError(
        f"{type(model).__name__} has no module named {module_name!r}; pass a dotted module name"
        + (f" such as {', '.join(repr(n) for n in hint)}" if hint else
           " (list them with [n for n, _ in model.named_modules()])")
    )


def find_attention_modules(model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER
                           ) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, attention-receiving module, its parent) in registration order, which is block order
    for timm models.

    A module matches when its dotted name equals attention_layer_name or ends with
    '.' + attention_layer_name ("attn_drop", "attn.attn_drop", "blocks.3.attn.attn_drop").
    """
    found = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if name == attention_layer_name or name.endswith("." + attention_layer_name):
                found.append((name, child, parent))
    if not found:
        raise ValueError(
            f"no attention modules found in {type(model).__name__}: no submodule is named "
            f"{attention_layer_name!r}. Pass attention_layer_name= the name (or dotted name suffix) of "
            "the module that receives each block's post-softmax attention, e.g. 'attn.attn_drop'; "
            "list candidates with [n for n, _ in model.named_modules()]"
        )
    return found
