"""Attention rollout and gradient rollout, batch-first, as design.md defines them.

Rollout multiplies per-block mixing matrices M_L ... M_1; only a few rows of the product
are ever read (the class token's, or the mean over patches), so the rows are pushed
through the blocks from the last to the first: O(N^2) per block instead of O(N^3).
"""
from typing import Sequence

import torch

from .fusion import discard_lowest, fuse_heads, presoftmax_gradient


def mixing_matrix(fused: torch.Tensor, discard_ratio: float, protect_first: bool = True,
                  column_sums: bool = False) -> torch.Tensor:
    """(B, N, N) fused attention -> (F' + I) / 2 with rows renormalised.

    column_sums reproduces the original vit-explain, which divided by the row sums
    broadcast along the columns (entry [i, j] divided by the sum of row j).
    """
    fused = discard_lowest(fused, discard_ratio, protect_first)
    n = fused.shape[-1]
    eye = torch.eye(n, dtype=fused.dtype, device=fused.device)
    mixed = (fused + eye) / 2
    sums = mixed.sum(dim=-1)
    return mixed / (sums.unsqueeze(-2) if column_sums else sums.unsqueeze(-1))


def propagate(readout: torch.Tensor, mixings: Sequence[torch.Tensor]) -> torch.Tensor:
    """readout (B, K, N) @ M_L @ ... @ M_1 for mixings given in forward order."""
    rows = readout
    for mixing in reversed(mixings):
        rows = torch.bmm(rows, mixing)
    return rows


def attention_rollout(attentions: Sequence[torch.Tensor], readout: torch.Tensor,
                      head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Relevance of every input token for the readout rows: (B, K, N)."""
    mixings = [mixing_matrix(fuse_heads(a, head_fusion), discard_ratio) for a in attentions]
    return propagate(readout.to(attentions[0].dtype), mixings)


def gradient_rollout(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                     readout: torch.Tensor, head_fusion: str = "mean",
                     discard_ratio: float = 0.0) -> torch.Tensor:
    """Rollout of each block's attention weighted by its own dL/dA, negatives clamped after fusion."""
    mixings = [
        mixing_matrix(fuse_heads(a * g, head_fusion).clamp(min=0), discard_ratio)
        for a, g in zip(attentions, gradients, strict=True)
    ]
    return propagate(readout.to(attentions[0].dtype), mixings)


def gradient_weighted_attention(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                                readout: torch.Tensor) -> torch.Tensor:
    """Chefer et al., ICCV 2021 (generic): R = I; R <- R + mean_h(clamp(A * dL/dA, min=0)) @ R.

    Each step is R <- (I + Abar) @ R, so the read-out rows are pushed through (I + Abar_l).
    """
    n = attentions[0].shape[-1]
    eye = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device)
    mixings = [eye + (a * g).clamp(min=0).mean(dim=1) for a, g in zip(attentions, gradients, strict=True)]
    return propagate(readout.to(attentions[0].dtype), mixings)


def raw_attention(attention: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """One block's attention as seen from the read-out rows, per head: (B, H, N)."""
    return torch.einsum("bkn,bhnm->bhm", readout.to(attention.dtype), attention)


def _class_row(attention: torch.Tensor) -> torch.Tensor:
    batch, _, n, _ = attention.shape
    readout = torch.zeros(batch, 1, n, dtype=attention.dtype, device=attention.device)
    readout[:, :, 0] = 1
    return readout


def compat_attention_rollout(attentions: Sequence[torch.Tensor], head_fusion: str,
                             discard_ratio: float) -> torch.Tensor:
    """The original vit-explain rollout, per sample: class-token row (B, N)."""
    mixings = [
        mixing_matrix(fuse_heads(a, head_fusion), discard_ratio, protect_first=True, column_sums=True)
        for a in attentions
    ]
    return propagate(_class_row(attentions[0]), mixings)[:, 0]


def compat_gradient_rollout(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                            discard_ratio: float, reverse_blocks: bool = True,
                            scores_gradient: bool = True) -> torch.Tensor:
    """The original vit-explain gradient rollout, bugs included, per sample: (B, N).

    gradients are dL/dA in block order. The original's backward hooks saw the gradient of the
    pre-softmax scores (scores_gradient) and appended them in backward order, so block i was
    weighted by block L-1-i's gradient (reverse_blocks); fusion was always the mean and nothing
    was protected from the discard. Switching the two flags off isolates those bugs.
    """
    weights = [presoftmax_gradient(a, g) if scores_gradient else g
               for a, g in zip(attentions, gradients, strict=True)]
    if reverse_blocks:
        weights = weights[::-1]
    mixings = [
        mixing_matrix((a * w).mean(dim=1).clamp(min=0), discard_ratio, protect_first=False, column_sums=True)
        for a, w in zip(attentions, weights)
    ]
    return propagate(_class_row(attentions[0]), mixings)[:, 0]
