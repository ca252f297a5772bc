"""DAAM: Dynamic Accumulated Attention Map (Liao, Gao & Zhang, "Dynamic Accumulated Attention Map
for Interpreting Evolution of Decision-Making in Vision Transformer", Pattern Recognition 2025,
arXiv 2503.14640): per-block maps that add up, block by block, to the final one."""
from typing import Sequence

import torch
import torch.nn.functional as F


def daam_block_maps(attentions: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
                    gradients: Sequence[torch.Tensor], rows: slice) -> torch.Tensor:
    """(B, L, N): for every block, relu(sum over channels c = (h, d) of relu(C)[r, c] * S[r, n, c]),
    summed over the read-out token rows r (`rows`: the class token's for class-token models).

    S[r, n, (h, d)] = A[h, r, n] * V[h, n, d] splits the token-r output of the attention,
    T[r] = sum_n S[r, n], into what each token n brought to each channel (the "spatial features");
    C = dy/dT, T the heads' outputs side by side (the output projection's input), weighs each
    channel by how it raised y ("channel importance coefficients").
    attentions (B, H, N, N); values (B, H, N, d); gradients (B, N, H * d).
    """
    maps = []
    for attention, value, gradient in zip(attentions, values, gradients, strict=True):
        batch, heads, _, width = value.shape
        weights = gradient[:, rows].clamp(min=0).reshape(batch, -1, heads, width)       # (B, R, H, d)
        channels = torch.einsum("brhd,bhnd->bhrn", weights, value)                        # sum_d relu(C) V
        maps.append((attention[:, :, rows] * channels).sum(dim=(1, 2)).clamp(min=0))
    return torch.stack(maps, dim=1)


def feature_weights(features: torch.Tensor, references: torch.Tensor | None = None) -> torch.Tensor:
    """DAAM's dimension-wise importance weights for a model without a classifier: (B, D).

    w = min-max over the dimensions of mean_k(f_hat * z_hat_k), f_hat the normalised feature and
    z_hat_k the normalised reference features (K, D), e.g. features of the images of one class;
    without references the image's own feature is the reference (w from f_hat ** 2). Each term
    of the mean sums to cos(f, z_k) over the dimensions: w says which dimensions carry the
    similarity. A constant product gives w = 1.
    """
    f = F.normalize(features, dim=-1)
    if references is None:
        products = f * f
    else:
        z = F.normalize(references.to(f.dtype).reshape(-1, f.shape[-1]), dim=-1)
        products = (f.unsqueeze(1) * z.unsqueeze(0)).mean(dim=1)
    low, high = products.amin(dim=-1, keepdim=True), products.amax(dim=-1, keepdim=True)
    span = torch.where(high > low, high - low, torch.ones_like(high))
    return torch.where(high > low, (products - low) / span, torch.ones_like(products))
