"""The seed API: attention rollout and gradient attention rollout."""
from __future__ import annotations

from functools import partial

from ..math import (class_row, compat_gradient_blocks, compat_gradient_rollout, compat_rollout_rows,
                    gradient_rollout, gradient_rollout_blocks, push_through_blocks, rollout_block,
                    rollout_prefix_rows)
from ..recording import DEFAULT_ATTENTION_LAYER
from .base import AttentionExplainer, readout_for


class VITAttentionRollout(AttentionExplainer):
    """Attention rollout (Abnar & Zuidema, 2020): where the classifier's token drew its information from.

    `VITAttentionRollout(model, head_fusion="max", discard_ratio=0.9)(input_tensor)` returns a
    float32 numpy mask over the patch grid, (gh, gw) for one image or (B, gh, gw) for a batch.
    `compat="vit-explain"` reproduces the original 2020 implementation's output exactly.
    """

    def block_reduction(self):
        # each block's fused, discarded map as soon as it is recorded: every head is not kept
        # compat breaks ties at the discard cut as the original's topk did
        return partial(rollout_block, head_fusion=self.head_fusion, discard_ratio=self.discard_ratio,
                       compat=bool(self.compat))

    def relevance(self, attentions, gradients, layout):
        blocks = attentions  # already rollout_block()'s (B, N, N) maps
        if self.compat:
            return compat_rollout_rows(blocks)
        return push_through_blocks(blocks, readout_for(blocks, layout))[:, 0]

    def layer_relevance(self, attentions, gradients, layout):
        """The rollout up to and including each block: (B, L, N)."""
        return prefix_relevance(attentions, layout, bool(self.compat))


class VITAttentionGradRollout(AttentionExplainer):
    """Gradient attention rollout: each block's attention weighted by dL/dA of the chosen class's logit.

    `__call__(input_tensor, category_index=None)`: an int, or one per sample; None explains each
    sample's predicted class. `compat="vit-explain"` reproduces the original, bugs included (it
    paired block i with block L-1-i's gradient of the pre-softmax scores and ignored head_fusion).
    """

    needs_gradients = True

    def __init__(self, model, attention_layer_name=DEFAULT_ATTENTION_LAYER, discard_ratio=0.9,
                 head_fusion="mean", compat=None):
        super().__init__(model, attention_layer_name, head_fusion, discard_ratio, compat)

    def relevance(self, attentions, gradients, layout):
        if self.compat:
            return compat_gradient_rollout(attentions, gradients, self.discard_ratio)
        rows = gradient_rollout(attentions, gradients, readout_for(attentions, layout),
                                self.head_fusion, self.discard_ratio)
        return rows[:, 0]

    def layer_relevance(self, attentions, gradients, layout):
        """The gradient rollout up to and including each block: (B, L, N)."""
        if self.compat:
            blocks = compat_gradient_blocks(attentions, gradients, self.discard_ratio)
        else:
            blocks = gradient_rollout_blocks(attentions, gradients, self.head_fusion, self.discard_ratio)
        return prefix_relevance(blocks, layout, bool(self.compat))


def prefix_relevance(blocks, layout, compat: bool):
    """(B, L, N): the read-out row through blocks 0..l for every l; compat as compat_rollout_rows."""
    readout = class_row(blocks[0]) if compat else readout_for(blocks, layout)
    return rollout_prefix_rows(blocks, readout, column_sums=compat)[:, :, 0]
