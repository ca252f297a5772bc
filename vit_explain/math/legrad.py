"""LeGrad (Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via Feature
Formation Sensitivity", arXiv 2404.03214): per-block maps from the positive gradient of a block's
own score with respect to its attention."""
from typing import Sequence

import torch


def legrad_block_maps(gradients: Sequence[torch.Tensor], num_prefix: int) -> torch.Tensor:
    """(B, L, N - num_prefix): for each block's g = d s_l / d A_l (B, H, N, N), ReLU(g) averaged
    over the heads and over the query rows, the prefix-token key columns dropped. Through an
    attention pool, A_l is the pool's attention (B, H, latents, N): its latents are the query rows.

    The attention itself is not multiplied in: the map says which keys, had the block attended
    more to them, would have raised that block's score.
    """
    return torch.stack([g.clamp(min=0).mean(dim=(1, 2))[:, num_prefix:] for g in gradients], dim=1)


def min_max_scale(maps: torch.Tensor) -> torch.Tensor:
    """Each (gh, gw) map shifted to minimum 0 and scaled to maximum 1; a constant map becomes 0."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return (maps - low) / torch.where(span > 0, span, torch.ones_like(span))
