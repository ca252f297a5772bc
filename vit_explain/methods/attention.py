"""Beyond rollout: gradient-weighted attention (Chefer et al.) and raw attention maps."""
from __future__ import annotations

import numbers

import torch

from ..math import gradient_weighted_attention, raw_attention
from ..recording import DEFAULT_ATTENTION_LAYER, LayerError
from .base import AttentionExplainer, Explanation, readout_for


class VITGradWeightedAttention(AttentionExplainer):
    """Gradient-weighted attention (Chefer et al., ICCV 2021, the generic method).

    R = I; R <- R + mean_h(clamp(A * dL/dA, min=0)) @ R over the blocks from `start_layer` on
    (default 0: every block; the authors' evaluation starts at 1); the map is the class token's
    row over the patches. `__call__(input_tensor, category_index=None)` as for
    VITAttentionGradRollout.
    """

    needs_gradients = True

    def __init__(self, model, attention_layer_name=DEFAULT_ATTENTION_LAYER, start_layer: int = 0):
        super().__init__(model, attention_layer_name, head_fusion="mean", discard_ratio=0.0)
        blocks = self.attention_block_count()
        # a bool is an int to Python; a float would pass the range check and slice wrongly
        if isinstance(start_layer, bool) or not isinstance(start_layer, numbers.Integral) \
                or not 0 <= start_layer < blocks:
            raise ValueError(f"start_layer must be a block index from 0 to {blocks - 1} (the model has {blocks} "
                             f"attention blocks); got {start_layer!r}")
        self.start_layer = int(start_layer)

    def relevance(self, attentions, gradients, layout):
        # the blocks before start_layer are left out of the product: R starts as I at start_layer
        attentions, gradients = attentions[self.start_layer:], gradients[self.start_layer:]
        return gradient_weighted_attention(attentions, gradients, readout_for(attentions, layout))[:, 0]


class VITRawAttention(AttentionExplainer):
    """The class token's attention at one block (default the last), mean over the heads.

    For average-pooled models the mean over the patch rows is shown instead. `explain()` also
    fills `Explanation.head_masks` with one map per head, (B, heads, gh, gw), from the same
    forward pass: the DINO / CaiT-paper view.
    """

    def __init__(self, model, attention_layer_name=DEFAULT_ATTENTION_LAYER, layer: int = -1):
        super().__init__(model, attention_layer_name, head_fusion="mean", discard_ratio=0.0)
        blocks = self.attention_block_count()
        # a bool is an int to Python, and 1.0 would pass the range check and fail at the first call
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise LayerError(f"layer must be an int (a block index, -1 for the last); got {layer!r}")
        layer = int(layer)
        if not -blocks <= layer < blocks:
            raise LayerError(f"layer {layer} is out of range: the model has {blocks} attention blocks "
                             f"(0..{blocks - 1}, or -1 for the last)")
        skipped = self.adapter.blocks_the_readout_skips()
        if layer % blocks in skipped:
            raise LayerError(
                f"layer {layer} of {type(model).__name__} is a self-attention block over the patches, "
                f"where the class token takes no part: its raw attention exists from layer {skipped.stop} "
                f"to {blocks - 1} (the class-attention blocks)")
        self.layer = layer

    def relevance(self, attentions, gradients, layout):
        return self.head_relevance(attentions, layout).mean(dim=1)

    def head_relevance(self, attentions, layout) -> torch.Tensor:
        attention = attentions[self.layer]
        return raw_attention(attention, readout_for([attention], layout))

    def layer_relevance(self, attentions, gradients, layout) -> torch.Tensor:
        """Every block's map (the mean over its heads), whatever `layer` says: (B, L, N)."""
        return self.layer_head_relevance(attentions, layout).mean(dim=2)

    def layer_head_relevance(self, attentions, layout) -> torch.Tensor:
        """Every block's per-head maps: (B, L, H, N). CaiT's self-attention blocks, where the
        class token takes no part, give zero maps."""
        return torch.stack([raw_attention(a, readout_for([a], layout)) for a in attentions], dim=1)

    def explain_heads(self, input_tensor) -> Explanation:
        """The per-head maps as `masks` (B, heads, gh, gw): the 0.1 interface, kept for scripts
        written against it. `explain(x).head_masks` holds the same maps beside the mean map."""
        explanation = self.explain(input_tensor)
        return Explanation(explanation.head_masks, explanation.logits, explanation.targets)
