"""Attention rollout and gradient rollout, batch-first, as design.md defines them.

Rollout multiplies per-block mixing matrices M_L ... M_1 with M = (F' + I)/2, rows renormalised
(F' the fused attention after the discard). Only a few rows of the product are ever read (the
class token's, or the mean over the patches), so those rows are pushed through the blocks from
the last to the first, and M is never built: with c = rowsum(F') + 1,
    r M = (r / c) F' + r / c.
That is O(N^2) per block instead of O(N^3), with no N x N temporaries beyond F'.
"""
from typing import Sequence

import torch

from .fusion import compat_discard, discard_lowest, fuse_heads, presoftmax_gradient


def push_rows(rows: torch.Tensor, fused: torch.Tensor, column_sums: bool = False) -> torch.Tensor:
    """rows (B, K, N) @ M for M = (fused + I) / 2 with rows renormalised.

    column_sums reproduces the original vit-explain, which divided by the row sums broadcast
    along the columns (entry [i, j] divided by the sum of row j): r M = (r F' + r) / c.
    """
    c = (fused.sum(dim=-1) + 1).unsqueeze(1)  # (B, 1, N): twice the row sums of (F' + I)/2
    if column_sums:
        return (torch.bmm(rows, fused) + rows) / c
    scaled = rows / c
    return torch.bmm(scaled, fused) + scaled


def rollout_block(attention: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0,
                  compat: bool = False) -> torch.Tensor:
    """F' of one block: (B, H, N, N) -> (B, N, N), heads fused, the weakest entries discarded.

    compat discards as the original vit-explain did (compat_discard: exactly topk's picks, so a
    tie at the cut is broken as topk breaks it) instead of by discard_lowest's documented rule.
    """
    fused = fuse_heads(attention, head_fusion)
    if compat:
        return compat_discard(fused, discard_ratio)
    # the fusion is a fresh map of ours (every fusion reduces over the heads): discard in it
    return discard_lowest(fused, discard_ratio, in_place=True)


def push_through_blocks(blocks: Sequence[torch.Tensor], readout: torch.Tensor,
                        column_sums: bool = False) -> torch.Tensor:
    """readout (B, K, N) through every block's F' (B, N, N), the last block first: (B, K, N)."""
    rows = readout.to(blocks[0].dtype)
    for fused in reversed(blocks):
        rows = push_rows(rows, fused, column_sums)
    return rows


def rollout_prefix_rows(blocks: Sequence[torch.Tensor], readout: torch.Tensor,
                        column_sums: bool = False) -> torch.Tensor:
    """The rollout of every prefix of the blocks: (B, L, K, N), entry l the readout (B, K, N)
    pushed through blocks l, l-1, ..., 0 (the rollout up to and including block l). Entry L-1 is
    `push_through_blocks(blocks, readout, column_sums)`.

    Last block first, as push_through_blocks: at block j the readout of prefix j joins the rows
    of the longer prefixes, and all of them go through block j's M in one push_rows; O(L N^2)
    per prefix, no N x N products.
    """
    if not blocks:
        raise ValueError("rollout needs at least one block")
    readout = readout.to(blocks[0].dtype)
    batch, k, n = readout.shape
    rows = readout[:, :0]  # (B, 0, N): no prefix has reached block L yet
    for fused in reversed(blocks):
        rows = push_rows(torch.cat([readout, rows], dim=1), fused, column_sums)
    return rows.reshape(batch, len(blocks), k, n)


def attention_rollout(attentions: Sequence[torch.Tensor], readout: torch.Tensor,
                      head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Relevance of every input token for the readout rows: (B, K, N)."""
    return push_through_blocks([rollout_block(a, head_fusion, discard_ratio) for a in attentions], readout)


def gradient_rollout_blocks(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                            head_fusion: str = "mean", discard_ratio: float = 0.0) -> list[torch.Tensor]:
    """F' of every block for gradient rollout: A * dL/dA, heads fused, negatives clamped, the
    weakest entries discarded; (B, N, N) each."""
    return [discard_lowest(fuse_heads(a * g, head_fusion).clamp_(min=0), discard_ratio, in_place=True)
            for a, g in zip(attentions, gradients, strict=True)]


def gradient_rollout(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                     readout: torch.Tensor, head_fusion: str = "mean",
                     discard_ratio: float = 0.0) -> torch.Tensor:
    """Rollout of each block's attention weighted by its own dL/dA, negatives clamped after fusion."""
    return push_through_blocks(gradient_rollout_blocks(attentions, gradients, head_fusion, discard_ratio), readout)


def gradient_weighted_attention(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                                readout: torch.Tensor) -> torch.Tensor:
    """Chefer et al., ICCV 2021 (generic): R = I; R <- R + mean_h(clamp(A * dL/dA, min=0)) @ R.

    Each step is R <- (I + Abar) @ R, so the read-out rows r become r + r @ Abar, last block first.
    """
    rows = readout.to(attentions[0].dtype)
    for attention, gradient in zip(reversed(attentions), reversed(gradients), strict=True):
        rows = rows + torch.bmm(rows, (attention * gradient).clamp(min=0).mean(dim=1))
    return rows


def raw_attention(attention: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """One block's attention as seen from the read-out rows, per head: (B, H, N)."""
    return torch.einsum("bkn,bhnm->bhm", readout.to(attention.dtype), attention)


def _class_row(attention: torch.Tensor) -> torch.Tensor:
    batch, n = attention.shape[0], attention.shape[-1]
    readout = torch.zeros(batch, 1, n, dtype=attention.dtype, device=attention.device)
    readout[:, :, 0] = 1
    return readout


def compat_rollout_rows(blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    """The original's product over each block's F', with its row normalisation (divided by the
    row sums broadcast along the columns): class-token row (B, N)."""
    return push_through_blocks(blocks, _class_row(blocks[0]), column_sums=True)[:, 0]


def compat_gradient_rollout(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                            discard_ratio: float, reverse_blocks: bool = True,
                            scores_gradient: bool = True) -> torch.Tensor:
    """The original vit-explain gradient rollout, bugs included, per sample: (B, N).

    gradients are dL/dA in block order. The original's backward hooks saw the gradient of the
    pre-softmax scores (scores_gradient) and appended them in backward order, so block i was
    weighted by block L-1-i's gradient (reverse_blocks); fusion was always the mean and nothing
    was protected from the discard. Switching the two flags off isolates those bugs.
    """
    return compat_rollout_rows(compat_gradient_blocks(attentions, gradients, discard_ratio, reverse_blocks,
                                                      scores_gradient))


def compat_gradient_blocks(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                           discard_ratio: float, reverse_blocks: bool = True,
                           scores_gradient: bool = True) -> list[torch.Tensor]:
    """The per-block maps compat_gradient_rollout multiplies, (B, N, N) each."""
    weights = [presoftmax_gradient(a, g) if scores_gradient else g
               for a, g in zip(attentions, gradients, strict=True)]
    if reverse_blocks:
        weights = weights[::-1]
    return [compat_discard((a * w).mean(dim=1).clamp(min=0), discard_ratio, protect_first=False)
            for a, w in zip(attentions, weights)]


def class_row(attention: torch.Tensor) -> torch.Tensor:
    """(B, 1, N) the class token's row: the readout the original vit-explain used."""
    return _class_row(attention)
