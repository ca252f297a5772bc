"""Architecture adapter: where the patches are in the token sequence and how they form a grid."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


MAX_PREFIX_TOKENS = 32  # class + distillation + registers; more would be a misread grid


@dataclass(frozen=True)
class TokenLayout:
    num_prefix: int            # class / distillation / register tokens before the patches
    pooling: str               # "token": the classifier reads token 0; "avg": the mean of the patches
    grid: tuple[int, int]      # (gh, gw) patch grid


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def num_prefix_tokens(model: nn.Module) -> int:
    count = getattr(model, "num_prefix_tokens", None)
    if count is None:
        count = 1 if getattr(model, "cls_token", None) is not None else 0
    return int(count)


def pooling_of(model: nn.Module) -> str:
    pooled = getattr(model, "global_pool", "token")
    return "token" if pooled == "token" and num_prefix_tokens(model) > 0 else "avg"


def grid_candidates(model: nn.Module, image_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Patch grids the model's patch embedding could produce for this input, most specific first."""
    embed = getattr(model, "patch_embed", None)
    candidates = []
    if embed is not None:
        if getattr(embed, "dynamic_img_size", False) and hasattr(embed, "dynamic_feat_size"):
            candidates.append(tuple(embed.dynamic_feat_size(tuple(image_hw))))
        if getattr(embed, "grid_size", None) is not None:
            candidates.append(_pair(embed.grid_size))
        if getattr(embed, "patch_size", None) is not None:
            ph, pw = _pair(embed.patch_size)
            candidates.append((image_hw[0] // ph, image_hw[1] // pw))
    return [(int(gh), int(gw)) for gh, gw in candidates]


def token_layout(model: nn.Module, image_hw: tuple[int, int], num_tokens: int) -> TokenLayout:
    """Prefix count, pooling and grid for a sequence of num_tokens tokens.

    The declared num_prefix_tokens is trusted when a grid fits the rest; otherwise the prefix
    is whatever the patch grid leaves over (torch hub's distilled DeiT declares 1 but has 2).
    """
    declared = num_prefix_tokens(model)
    candidates = grid_candidates(model, image_hw)
    side = math.isqrt(max(num_tokens - declared, 0))
    for gh, gw in candidates + [(side, side)]:
        if gh * gw == num_tokens - declared:
            return TokenLayout(declared, pooling_of(model), (gh, gw))
    for gh, gw in candidates:
        if 0 <= num_tokens - gh * gw <= MAX_PREFIX_TOKENS:
            prefix = num_tokens - gh * gw
            return TokenLayout(prefix, pooling_of(model) if prefix else "avg", (gh, gw))
    raise ValueError(
        f"cannot arrange {num_tokens} tokens of {type(model).__name__} ({declared} prefix tokens) "
        f"into a patch grid for a {image_hw[0]}x{image_hw[1]} input"
    )


def check_input(model: nn.Module, input_tensor) -> None:
    """ValueError stating the expected and the given shape when the model cannot take the input."""
    embed = getattr(model, "patch_embed", None)
    proj = getattr(embed, "proj", None)
    channels = getattr(proj, "in_channels", 3)
    dynamic = bool(getattr(embed, "dynamic_img_size", False))
    strict = embed is not None and getattr(embed, "strict_img_size", False) and not dynamic
    img_size = _pair(embed.img_size) if strict and getattr(embed, "img_size", None) else None
    patch = _pair(getattr(embed, "patch_size", 1) or 1)
    check_input_shape(input_tensor, channels, img_size, patch)


def check_input_shape(input_tensor, channels: int, img_size: tuple[int, int] | None,
                      patch: tuple[int, int] = (1, 1), note: str = "") -> None:
    """ValueError unless input_tensor is a float (B, channels, H, W) tensor of size img_size
    (any size of at least one patch when img_size is None). note is appended to the message."""
    if img_size:
        expected = f"(B, {channels}, {img_size[0]}, {img_size[1]})"
    else:
        expected = f"(B, {channels}, H, W) with H >= {patch[0]} and W >= {patch[1]}"
    if not torch.is_tensor(input_tensor):
        raise ValueError(f"expected an input tensor of shape {expected}, got {type(input_tensor).__name__}{note}")
    shape = tuple(input_tensor.shape)
    ok = input_tensor.ndim == 4 and shape[1] == channels and shape[0] > 0
    if ok and img_size:
        ok = shape[2:] == tuple(img_size)
    elif ok:
        ok = shape[2] >= patch[0] and shape[3] >= patch[1]
    if not ok:
        raise ValueError(f"expected an input tensor of shape {expected}, got {shape}{note}")
    if not input_tensor.is_floating_point():
        raise ValueError(f"expected a floating-point input tensor, got dtype {input_tensor.dtype}")
