"""timm Swin Transformers: Grad-CAM only.

Each Swin block attends within (shifted) local windows, so there is no token-to-token
attention matrix over the whole image to multiply through the blocks: rollout, gradient
rollout, Chefer's method, raw attention and flow are refused with a ValueError. Grad-CAM works
on the blocks' channels-last feature maps (B, H, W, C).
"""
from __future__ import annotations

from torch import nn

from .base import seeded
from .timm import TimmAdapter

# timm's windowed attention modules (Swin, Swin V2, Swin V2 Cr)
WINDOW_ATTENTION = ("WindowAttention", "WindowMultiHeadAttention")


class SwinAdapter(TimmAdapter):
    token_attention = False

    @classmethod
    def matches(cls, model: nn.Module, attention_layer_name: str) -> bool:
        return any(type(m).__name__ in WINDOW_ATTENTION for m in model.modules())

    @classmethod
    def example(cls) -> nn.Module:
        """Two one-block stages with 4x4 windows on 32x32 inputs (8x8, then 4x4 feature maps), 5 classes."""
        import timm
        return seeded(lambda: timm.create_model(
            "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=4, window_size=4,
            depths=(1, 1), num_heads=(1, 2), embed_dim=24, num_classes=5))

    def blocks(self):
        raise ValueError(f"{type(self.model).__name__} attends within shifted windows: windowed attention such "
                         "as Swin's has no token-to-token attention for LeGrad; use grad-cam")

    def recorder(self, gradients: bool, reduce=None):
        raise ValueError(
            f"{type(self.model).__name__} attends within shifted windows: windowed attention such as Swin's "
            "has no rollout (nor any other map built from token-to-token attention); use grad-cam")
