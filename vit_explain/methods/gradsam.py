"""Grad-SAM: gradient self-attention maps (Barkan et al., CIKM 2021)."""
from __future__ import annotations

from ..math.gradsam import gradient_self_attention_map, gradient_self_attention_prefixes
from ..recording import DEFAULT_ATTENTION_LAYER
from .base import AttentionExplainer, readout_for


class VITGradSAM(AttentionExplainer):
    """Grad-SAM: sum over blocks and heads of A * relu(dL/dA), the class token's row over the
    patches (the mean over the patch rows for average-pooled models), L the explained class's
    logit. `__call__(input_tensor, category_index=None)` as for VITAttentionGradRollout.
    """

    needs_gradients = True

    def __init__(self, model, attention_layer_name=DEFAULT_ATTENTION_LAYER):
        super().__init__(model, attention_layer_name, head_fusion="mean", discard_ratio=0.0)

    def relevance(self, attentions, gradients, layout):
        return gradient_self_attention_map(attentions, gradients, readout_for(attentions, layout))[:, 0]

    def layer_relevance(self, attentions, gradients, layout):
        """Grad-SAM summed over the blocks up to and including each block: (B, L, N)."""
        return gradient_self_attention_prefixes(attentions, gradients, readout_for(attentions, layout))[:, :, 0]
