"""CoLa, contrastive layer-wise attention contributions (vit-explain's own method): per-block
maps of each attention edge's first-order contribution to that block's contrastive score."""
from typing import Sequence

import torch


def contrastive_scores(logits: torch.Tensor) -> torch.Tensor:
    """log p(c) for every class c: the evidence for c over its alternatives. Its gradient is
    dy_c - sum_k p_k dy_k, so evidence every likely class shares (an object is there at all)
    cancels, and what is left is what tells c apart."""
    return logits.log_softmax(dim=-1)


def contribution_maps(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                      num_prefix: int) -> torch.Tensor:
    """(B, L, N - num_prefix): for each block, relu(mean over heads of A * dS/dA), A the block's
    attention (B, H, N, N) and dS/dA the gradient of the block's own score, averaged over the
    query rows; prefix-token key columns dropped.

    A * dS/dA is each edge's first-order contribution to the score (what the block took from a
    key, weighted by how much that raised the score), not only its potential (the gradient
    alone); heads are summed before the ReLU, so heads that cancel count for nothing.
    """
    return torch.stack([(a * g).mean(dim=1).clamp(min=0).mean(dim=1)[:, num_prefix:]
                        for a, g in zip(attentions, gradients, strict=True)], dim=1)
