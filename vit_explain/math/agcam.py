"""AGCAM: Attention-Guided CAM (Leem & Seo, "Attention Guided CAM: Visual Explanations of Vision
Transformer Guided by Self-Attention", AAAI 2024)."""
from typing import Sequence

import torch


def agcam_relevance(queries: Sequence[torch.Tensor], keys: Sequence[torch.Tensor],
                    gradients: Sequence[torch.Tensor], readout: torch.Tensor) -> torch.Tensor:
    """sum over blocks and heads of sigmoid(S) * relu(dy/dA), seen from the read-out rows: (B, K, N).

    queries: per block (B, H, N, d), already multiplied by the attention's scale; keys: (B, H, N, d);
    S = queries @ keys^T, the pre-softmax scores; gradients: dy/dA (B, H, N, N), A = softmax(S).
    The sigmoid turns each score into a weight in (0, 1) of its own, where the softmax would make
    the keys of a row compete; the positive gradient says where more attention raised y.

    Only the query rows the read-out reads are computed (the class token's alone for class-token
    models, where the map is AGCAM's: the class token's row).
    """
    used = readout.abs().sum(dim=(0, 1)).nonzero().flatten()  # the query rows any read-out row reads
    rows = readout[:, :, used].to(gradients[0].dtype)
    total = None
    for q, k, g in zip(queries, keys, gradients, strict=True):
        scores = q[:, :, used] @ k.transpose(-2, -1)                                # (B, H, R, N)
        block = (scores.sigmoid() * g[:, :, used].clamp(min=0)).sum(dim=1)          # heads summed: (B, R, N)
        total = block if total is None else total + block
    return torch.bmm(rows, total)
