"""torchvision Vision Transformers (`torchvision.models.vit_b_16` ..., `VisionTransformer`).

Their attention is `nn.MultiheadAttention`, called with `need_weights=False`: the recorder
(`vit_explain.recording.multihead`) asks it for per-head weights and, for gradient methods,
replays out_proj(A @ V) so that dL/dA exists. Tokens are [class, patches]; the head reads the
class token after `encoder.ln`; the input must be exactly `image_size` square.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ...recording import (MultiheadAttentionRecorder, Tap, check_multihead, default_target_layer,
                          find_multihead_attention)
from .base import Adapter, TokenLayout, check_input_shape, seeded

TORCHVISION_VIT = ("torchvision.models.vision_transformer", "VisionTransformer")


def multihead_projection(attention: nn.MultiheadAttention, which: int, scale: bool,
                         tokens: torch.Tensor) -> torch.Tensor:
    """One of the attention's input projections (0 query, 1 key, 2 value) of its input tokens,
    (B, H, N, d); the query times head_dim ** -0.5 when scale, as the module scales it. The
    module computes them inside one function call, so they are computed again here."""
    e, heads = attention.embed_dim, attention.num_heads
    if attention._qkv_same_embed_dim:
        weight = attention.in_proj_weight[which * e:(which + 1) * e]
    else:
        weight = (attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight)[which]
    bias = None if attention.in_proj_bias is None else attention.in_proj_bias[which * e:(which + 1) * e]
    if not attention.batch_first:
        tokens = tokens.transpose(0, 1)
    batch, count, _ = tokens.shape
    projected = F.linear(tokens, weight, bias).view(batch, count, heads, e // heads).transpose(1, 2)
    return projected * (e // heads) ** -0.5 if scale else projected


def is_torchvision_vit(model: nn.Module) -> bool:
    """By its classes' module and name, so torchvision is never imported to answer."""
    return any((cls.__module__, cls.__name__) == TORCHVISION_VIT for cls in type(model).__mro__)


class MultiheadTaps:
    """The taps of blocks whose attention is an nn.MultiheadAttention (`attention_modules()`) and
    whose second norm is `ln_2` (torchvision's and OpenCLIP's): it computes q, k and v inside one
    call, so the taps project its input again with its weights."""

    def query_key_taps(self):
        attentions = self.attention_modules()
        return ([Tap(a, "input", partial(multihead_projection, a, 0, True)) for a in attentions],
                [Tap(a, "input", partial(multihead_projection, a, 1, False)) for a in attentions])

    def value_taps(self):
        return [Tap(a, "input", partial(multihead_projection, a, 2, False)) for a in self.attention_modules()]

    def mixed_taps(self):
        # only the recorder's replay, out_proj(A @ V) from the recorded weights, calls out_proj as a
        # module: these taps need a recorder made with gradients=True
        return [Tap(a.out_proj, "input") for a in self.attention_modules()]

    def residual_taps(self):
        self.attention_modules()
        return [Tap(block.ln_2, "input") for block in self.blocks()]


class TorchvisionViTAdapter(MultiheadTaps, Adapter):
    """1 class token, token pooling, grid image_size // patch_size; Grad-CAM's default layer is
    the last encoder block's ln_1."""

    @classmethod
    def matches(cls, model: nn.Module, attention_layer_name: str) -> bool:
        return is_torchvision_vit(model)

    @classmethod
    def example(cls) -> nn.Module:
        """A 2-layer torchvision ViT on 32x32 inputs (4x4 patches), 5 classes."""
        from torchvision.models import VisionTransformer

        def build():
            model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=3, hidden_dim=48,
                                      mlp_dim=96, num_classes=5)
            with torch.no_grad():
                # torchvision starts the head and the class token at zero: every score, and every
                # gradient, would be zero
                nn.init.normal_(model.heads.head.weight, std=0.5)
                model.class_token.normal_(std=0.5)
                # random-init attention is nearly uniform; sharper attention makes better tests
                for _, attention in find_multihead_attention(model):
                    attention.in_proj_weight.mul_(4.0)
            return model
        return seeded(build)

    def check_input(self, input_tensor) -> None:
        size, patch = int(self.model.image_size), int(self.model.patch_size)
        channels = getattr(self.model.conv_proj, "in_channels", 3)  # a conv stem is a Sequential: assume RGB
        check_input_shape(input_tensor, channels, (size, size), (patch, patch),
                          note=" (torchvision's VisionTransformer takes image_size only)")

    def recorder(self, gradients: bool, reduce=None) -> MultiheadAttentionRecorder:
        return MultiheadAttentionRecorder(self.model, gradients=gradients, reduce=reduce, call=self.logits)

    def default_gradcam_layer(self) -> str:
        return default_target_layer(self.model, "ln_1")

    def layout(self, image_hw, num_tokens) -> TokenLayout:
        side = int(self.model.image_size) // int(self.model.patch_size)
        if num_tokens != 1 + side * side:
            raise ValueError(f"cannot arrange {num_tokens} tokens of {type(self.model).__name__} (1 class token) "
                             f"into a {side}x{side} patch grid")
        return TokenLayout(1, "token", (side, side))

    def block_count(self) -> int:
        return len(find_multihead_attention(self.model))

    def check_attention(self) -> None:
        modules = find_multihead_attention(self.model)
        if not modules:
            raise ValueError(f"{type(self.model).__name__} has no nn.MultiheadAttention module")
        for name, module in modules:
            check_multihead(name, module)

    def blocks(self) -> list[nn.Module]:
        return list(self.model.encoder.layers)

    def scores_of_tokens(self, tokens, pooling):
        norm, heads = self.model.encoder.ln, self.model.heads
        # "mean" as torchcam and LeGrad's code: pool first, then the final norm
        return heads(norm(tokens.mean(dim=1)) if pooling == "mean" else norm(tokens)[:, 0])

    def attention_modules(self):
        return [block.self_attention for block in self.blocks()]

    def feature_tap(self):
        return Tap(self.model.heads, "input")
