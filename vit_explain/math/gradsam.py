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
