"""Grad-SAM (Barkan et al., CIKM 2021): attention weighted by its positive gradient, summed."""
from typing import Sequence

import torch


def gradient_self_attention_map(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                                readout: torch.Tensor) -> torch.Tensor:
    """sum over blocks and heads of A * relu(dy/dA), seen from the read-out rows: (B, K, N).

    Unlike rollout and Chefer's method, the blocks are added, not multiplied: each block says
    which tokens the read-out attended to where the attention raised the explained score.
    """
    total = sum((a * g.clamp(min=0)).sum(dim=1) for a, g in zip(attentions, gradients, strict=True))
    return torch.bmm(readout.to(total.dtype), total)


def gradient_self_attention_prefixes(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                                     readout: torch.Tensor) -> torch.Tensor:
    """Grad-SAM of the blocks up to and including each block: (B, L, K, N); entry L-1 is
    `gradient_self_attention_map` (the same sums, in the same order)."""
    rows, total = [], 0
    for a, g in zip(attentions, gradients, strict=True):
        total = total + (a * g.clamp(min=0)).sum(dim=1)
        rows.append(torch.bmm(readout.to(total.dtype), total))
    return torch.stack(rows, dim=1)
