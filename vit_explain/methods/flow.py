"""Attention flow (Abnar & Zuidema, 2020): the max flow through the attention graph to each patch."""
from __future__ import annotations

from ..math.flow import DEFAULT_SCALE, attention_flow, check_tie_break
from ..recording import DEFAULT_ATTENTION_LAYER
from .base import AttentionExplainer, readout_for


class VITAttentionFlow(AttentionExplainer):
    """Attention flow: per block the head-mean attention, (W + I) / 2 row-normalised, as edge
    capacities of a layered graph; a token's relevance is the max flow from the classifier's
    readout (the class token, or every patch with capacity 1/num_patches for average-pooled
    models) down to that input token. Exact, on scipy's max-flow solver (capacities scaled to
    integers by 2**30, see vit_explain/math/flow.py); one max-flow problem per patch, so it is
    far slower than rollout (the README's benchmark table has the numbers) and batching does
    not speed it up.

    `VITAttentionFlow(model)(input_tensor)` returns a float32 numpy mask over the patch grid,
    (gh, gw) for one image or (B, gh, gw) for a batch. Class-agnostic, without head fusion or
    discard parameters.

    The max flow saturates: every patch that can take all the readout's capacity gets exactly the
    maximum, and trained models give plateaus of tens of such patches. `tie_break="rollout"`
    (default) orders the patches inside a plateau by their rollout through the same graph (the sum
    over paths of the capacities' products), moving no value by more than 1.5e-6 and reordering
    nothing else, so that the map's maximum and its deletion order mean something;
    `tie_break="none"` gives the flows as they are (ties in token order).
    """

    scale = DEFAULT_SCALE

    def __init__(self, model, attention_layer_name=DEFAULT_ATTENTION_LAYER, compat=None, tie_break="rollout"):
        check_tie_break(tie_break)
        self.tie_break = tie_break
        if compat is not None:
            raise ValueError(f"compat applies to rollout only; attention flow has no compat mode (got {compat!r})")
        super().__init__(model, attention_layer_name, head_fusion="mean", discard_ratio=0.0)

    def relevance(self, attentions, gradients, layout):
        return attention_flow(attentions, readout_for(attentions, layout)[:, 0], scale=self.scale,
                              tie_break=self.tie_break)
