"""TokenTM (Wu et al., "Token Transformation Matters: Towards Faithful Post-hoc Explanation for
Vision Transformer", CVPR 2024): a rollout whose blocks also weigh how much each token's
representation the block's two halves transform."""
from typing import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-8  # keeps the length ratio finite for a zero token, as the reference reimplementation does


def transformation_weights(before: torch.Tensor, after: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """w_i = L(after_i) / (L(before_i) + eps) * NECC_i: (B, N) from two (B, N, C) token sets.

    L is the L2 length over the channels; NECC ("normalised exponential cosine correlation") is the
    softmax over the tokens of cos(before_i, after_i): a token that keeps its direction and grows
    weighs more than one the transformation turns away.
    """
    necc = F.cosine_similarity(before, after, dim=-1).softmax(dim=-1)
    return after.norm(dim=-1) / (before.norm(dim=-1) + eps) * necc


def tokentm_rows(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                 block_inputs: Sequence[torch.Tensor], residuals: Sequence[torch.Tensor],
                 block_outputs: Sequence[torch.Tensor], readout: torch.Tensor) -> torch.Tensor:
    """The read-out rows (B, K, N) of TokenTM's contribution matrix C_L: (B, K, N).

    Per block l with input z0, post-attention residual z1 and output z2 (B, N, C), attention A and
    dy/dA (B, H, N, N):
        W_attn = diag(w(z0, z1)),  W_mlp = diag(w(z1, z2))         (transformation_weights)
        U_attn = I + (mean_h A @ W_attn) * mean_h relu(dy/dA),  U_mlp = I + W_mlp
        C_l = U_mlp @ U_attn @ C_{l-1},  C_0 = diag(L(z0 of the first block))
    Only the read-out rows r of C_L are needed, so they are pushed through the blocks last to
    first (r U_mlp = r * (1 + w); r U_attn = r + r @ M): O(N^2) per block, never an N x N product.
    """
    rows = readout.to(attentions[0].dtype)
    blocks = list(zip(attentions, gradients, block_inputs, residuals, block_outputs, strict=True))
    for attention, gradient, z0, z1, z2 in reversed(blocks):
        rows = rows * (1 + transformation_weights(z1, z2)).unsqueeze(1)
        # (A @ diag(w))[i, j] = A[i, j] w[j]: w scales the columns
        mixing = attention.mean(dim=1) * transformation_weights(z0, z1).unsqueeze(1)
        rows = rows + torch.bmm(rows, mixing * gradient.clamp(min=0).mean(dim=1))
    return rows * block_inputs[0].norm(dim=-1).unsqueeze(1)
