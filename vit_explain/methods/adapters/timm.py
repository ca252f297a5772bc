"""timm ViT-style models (ViT, DeiT, registers, gap, BEiT, EVA, ...): hooks on the module that
receives each block's post-softmax attention (`attn_drop`, or the caller's attention_layer_name).

Where the patches are in the token sequence and how they form a grid is read from timm's
attribute names: `num_prefix_tokens`, `global_pool`, `patch_embed.{grid_size, patch_size,
img_size, dynamic_img_size}`.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from ...recording import (DEFAULT_ATTENTION_LAYER, AttentionRecorder, LatentPoolAttentionRecorder, Tap,
                          find_attention_modules, is_latent_pool)
from .base import Adapter, TokenLayout, check_input_shape, pair, seeded, sharpen_attention

MAX_PREFIX_TOKENS = 32  # class + distillation + registers; more would be a misread grid


def num_prefix_tokens(model: nn.Module) -> int:
    count = getattr(model, "num_prefix_tokens", None)
    if count is None:
        count = 1 if getattr(model, "cls_token", None) is not None else 0
    return int(count)


def pooling_of(model: nn.Module) -> str:
    pooled = getattr(model, "global_pool", "token")
    if pooled == "map" and is_latent_pool(getattr(model, "attn_pool", None)):
        return "map"
    return "token" if pooled == "token" and num_prefix_tokens(model) > 0 else "avg"


def grid_candidates(model: nn.Module, image_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Patch grids the model's patch embedding could produce for this input, most specific first."""
    embed = getattr(model, "patch_embed", None)
    candidates = []
    if embed is not None:
        if getattr(embed, "dynamic_img_size", False) and hasattr(embed, "dynamic_feat_size"):
            candidates.append(tuple(embed.dynamic_feat_size(tuple(image_hw))))
        if getattr(embed, "grid_size", None) is not None:
            candidates.append(pair(embed.grid_size))
        if getattr(embed, "patch_size", None) is not None:
            ph, pw = pair(embed.patch_size)
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
    img_size = pair(embed.img_size) if strict and getattr(embed, "img_size", None) else None
    patch = pair(getattr(embed, "patch_size", 1) or 1)
    check_input_shape(input_tensor, channels, img_size, patch)


def _scaled(scale: float, tensor: torch.Tensor) -> torch.Tensor:
    return tensor * scale


def _values_of_qkv(heads: int, qkv: torch.Tensor) -> torch.Tensor:
    """timm's packed qkv projection (B, N, 3 * H * d) -> the values (B, H, N, d)."""
    batch, tokens, width = qkv.shape
    return qkv.reshape(batch, tokens, 3, heads, width // (3 * heads))[:, :, 2].transpose(1, 2)


def vit_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of a timm ViT whose parts AGCAM, TokenTM and DAAM read: pre-norm
    `timm.models.vision_transformer.Block`s with its `Attention`, where queries and keys come out
    of q_norm / k_norm exactly as the scores use them, the values out of one packed qkv, and the
    post-attention residual is norm2's input. Other blocks (rotary or relative-position attention,
    post-norm or parallel blocks) would be read wrongly: a ValueError naming the model."""
    from timm.models.vision_transformer import Attention, Block
    blocks = getattr(model, "blocks", None)
    found = list(blocks) if isinstance(blocks, nn.Sequential) else []
    odd = [f"{type(b).__name__} with {type(getattr(b, 'attn', None)).__name__} attention" for b in found
           if type(b) is not Block or type(b.attn) is not Attention]
    if not found or odd:
        raise ValueError(f"vit-explain reads the queries, keys, values and residual tokens of the attention blocks "
                         f"of timm's standard ViT (timm.models.vision_transformer Block and Attention); "
                         f"{type(model).__name__} has " + (odd[0] if odd else "no `blocks` of them"))
    return found


def is_headless(model: nn.Module) -> bool:
    """A backbone without a classifier (DINOv2, a SigLIP image tower, num_classes=0): its output is
    its pooled embedding."""
    return getattr(model, "num_classes", None) == 0


class TimmAdapter(Adapter):
    """timm ViT-style models, and the fallback for any other module: hooks on the module named
    attention_layer_name (a dotted-name suffix, default `attn_drop`) in every block. Headless
    models (num_classes=0) explain reference images; attention-pooled models (SigLIP's
    global_pool="map") have their pool's attention recorded as the last step of rollout."""

    @property
    def targets(self) -> tuple[str, ...]:
        return ("reference",) if is_headless(self.model) else ("class",)

    def __init__(self, model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER):
        super().__init__(model)
        self.attention_layer_name = attention_layer_name
        self._receivers = None

    @classmethod
    def matches(cls, model: nn.Module, attention_layer_name: str) -> bool:
        return True

    @classmethod
    def for_model(cls, model: nn.Module, attention_layer_name: str) -> "TimmAdapter":
        return cls(model, attention_layer_name)

    @classmethod
    def example(cls) -> nn.Module:
        """A 2-block ViT on 32x32 inputs (a 4x4 patch grid), a class token and 5 classes."""
        import timm
        model = seeded(lambda: timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=48,
            num_heads=3, num_classes=5))
        sharpen_attention(model.blocks)
        return model

    def check_input(self, input_tensor) -> None:
        check_input(self.model, input_tensor)

    def recorder(self, gradients: bool, reduce=None) -> AttentionRecorder:
        if pooling_of(self.model) == "map":
            return LatentPoolAttentionRecorder(self.model, self.model.attn_pool, self.attention_layer_name,
                                               gradients=gradients, reduce=reduce, call=self.logits)
        return AttentionRecorder(self.model, self.attention_layer_name, gradients=gradients, reduce=reduce,
                                 call=self.logits, modules=self.attention_receivers())

    def attention_receivers(self) -> list:
        """find_attention_modules(model, attention_layer_name), searched once per adapter (that
        is, per explainer): an explainer sees the blocks its model had when it first ran."""
        if self._receivers is None:
            self._receivers = find_attention_modules(self.model, self.attention_layer_name)
        return self._receivers

    def layout(self, image_hw, num_tokens) -> TokenLayout:
        return token_layout(self.model, image_hw, num_tokens)

    def block_count(self) -> int:
        return len(self.attention_receivers())

    def check_attention(self) -> None:
        find_attention_modules(self.model, self.attention_layer_name)

    def blocks(self) -> list[nn.Module]:
        blocks = getattr(self.model, "blocks", None)
        if not isinstance(blocks, nn.Module) or not len(blocks) or not callable(getattr(self.model, "forward_head", None)):
            raise ValueError(f"LeGrad needs timm's `blocks` and `forward_head`; {type(self.model).__name__} "
                             "lacks them")
        return list(blocks)

    def pooled_by_attention(self) -> bool:
        return pooling_of(self.model) == "map"

    def scores_of_tokens(self, tokens, pooling):
        norm = getattr(self.model, "norm", None)
        norm = (lambda t: t) if norm is None else norm
        if pooling == "mean":
            # Every token replaced by the normalised mean of all tokens: whatever the model's own
            # pooling (class token, average, attention pool), it then reads norm(mean), and
            # forward_head adds its fc_norm and head(s) as the model does.
            return self.scored(self.model.forward_head(norm(tokens.mean(dim=1, keepdim=True)).expand_as(tokens)))
        return self.scored(self.model.forward_head(norm(tokens)))

    def attention_modules(self):
        return [block.attn for block in vit_blocks(self.model)]

    def query_key_taps(self):
        blocks = vit_blocks(self.model)
        # timm multiplies q_norm's output by the scale and takes q @ k^T: the scores
        return ([Tap(b.attn.q_norm, "output", partial(_scaled, b.attn.scale)) for b in blocks],
                [Tap(b.attn.k_norm, "output") for b in blocks])

    def value_taps(self):
        return [Tap(b.attn.qkv, "output", partial(_values_of_qkv, b.attn.num_heads)) for b in vit_blocks(self.model)]

    def mixed_taps(self):
        # attn.norm (an Identity unless scale_norm) takes A @ V with the heads side by side
        return [Tap(b.attn.norm, "input") for b in vit_blocks(self.model)]

    def residual_taps(self):
        return [Tap(b.norm2, "input") for b in vit_blocks(self.model)]

    def feature_tap(self):
        vit_blocks(self.model)
        return Tap(self.model.head, "input")

