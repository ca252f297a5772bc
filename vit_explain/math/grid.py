"""From token relevance to a patch grid."""
import torch

POOLINGS = ("token", "avg")


def readout_rows(batch: int, num_tokens: int, num_prefix: int, pooling: str,
                 dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(B, 1, N): the token rows the classifier reads.

    Class-token pooling reads the first token; average pooling reads the mean of the
    patch tokens.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    readout = torch.zeros(batch, 1, num_tokens, dtype=dtype, device=device)
    if pooling == "token":
        readout[:, :, 0] = 1
    else:
        readout[:, :, num_prefix:] = 1.0 / (num_tokens - num_prefix)
    return readout


def tokens_to_grid(relevance: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(..., N) token relevance -> (..., gh, gw), dropping the prefix tokens."""
    patches = relevance[..., num_prefix:]
    gh, gw = grid
    if patches.shape[-1] != gh * gw:
        raise ValueError(
            f"{patches.shape[-1]} patch tokens do not fill a {gh}x{gw} grid "
            f"({relevance.shape[-1]} tokens, {num_prefix} prefix tokens)"
        )
    return patches.reshape(*patches.shape[:-1], gh, gw)


def scale_to_max(maps: torch.Tensor) -> torch.Tensor:
    """Divide each (gh, gw) map by its maximum; a map whose maximum is not positive is left as is."""
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return maps / torch.where(peak > 0, peak, torch.ones_like(peak))
