"""timm CaiT: talking-heads self-attention over the patches, then class-attention blocks.

Every block is embedded in the [cls, patches] token space (see `vit_explain.recording.cait`),
so the generic rollout-type math runs unchanged on it.
"""
from __future__ import annotations

from torch import nn

from ...recording import DEFAULT_ATTENTION_LAYER, CaitAttentionRecorder, is_cait
from .base import seeded
from .timm import TimmAdapter, pooling_of


class CaitAdapter(TimmAdapter):
    """1 class token (joined after the self-attention blocks), token pooling (or average pooling
    with global_pool='avg'), the patch embedding's grid: input checks and layout as for any timm
    model; the recording is CaiT's own. A non-default attention_layer_name falls back to
    `TimmAdapter` (hooks on the named modules, no embedding)."""

    def __init__(self, model: nn.Module):
        if not is_cait(model):
            raise ValueError(f"{type(model).__name__} is not a CaiT model")
        super().__init__(model, DEFAULT_ATTENTION_LAYER)

    @classmethod
    def matches(cls, model: nn.Module, attention_layer_name: str) -> bool:
        return attention_layer_name == DEFAULT_ATTENTION_LAYER and is_cait(model)

    @classmethod
    def for_model(cls, model: nn.Module, attention_layer_name: str) -> "CaitAdapter":
        return cls(model)

    @classmethod
    def example(cls) -> nn.Module:
        """2 talking-heads blocks and 1 class-attention block on 32x32 inputs (4x4 patches), 5 classes."""
        import timm
        return seeded(lambda: timm.create_model(
            "cait_xxs24_224", pretrained=False, img_size=32, patch_size=8, depth=2, depth_token_only=1,
            embed_dim=48, num_heads=3, num_classes=5))

    def recorder(self, gradients: bool, reduce=None) -> CaitAttentionRecorder:
        return CaitAttentionRecorder(self.model, gradients=gradients, reduce=reduce, call=self.logits)

    def block_count(self) -> int:
        return len(self.model.blocks) + len(self.model.blocks_token_only)

    def check_attention(self) -> None:
        pass  # is_cait() checked the modules the recorder hooks

    def blocks(self):
        raise ValueError(f"LeGrad needs blocks over every token: {type(self.model).__name__} (CaiT) has "
                         "self-attention blocks over the patches only and class-attention blocks that update "
                         "the class token only, so no block's output holds the tokens the head reads")

    def blocks_the_readout_skips(self) -> range:
        # the class token joins after the self-attention blocks; average pooling reads the patches
        return range(len(self.model.blocks)) if pooling_of(self.model) == "token" else range(0)
