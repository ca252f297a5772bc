"""torchvision Vision Transformers (`torchvision.models.vit_b_16` ..., `VisionTransformer`).

Their attention is `nn.MultiheadAttention`, called with `need_weights=False`: the recorder
(`vit_explain.recording.multihead`) asks it for per-head weights and, for gradient methods,
replays out_proj(A @ V) so that dL/dA exists. Tokens are [class, patches]; the head reads the
class token after `encoder.ln`; the input must be exactly `image_size` square.
"""
from __future__ import annotations

import torch
from torch import nn

from ...recording import (MultiheadAttentionRecorder, check_multihead, default_target_layer,
                          find_multihead_attention)
from .base import Adapter, TokenLayout, check_input_shape, seeded

TORCHVISION_VIT = ("torchvision.models.vision_transformer", "VisionTransformer")


def is_torchvision_vit(model: nn.Module) -> bool:
    """By its classes' module and name, so torchvision is never imported to answer."""
    return any((cls.__module__, cls.__name__) == TORCHVISION_VIT for cls in type(model).__mro__)


class TorchvisionViTAdapter(Adapter):
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
