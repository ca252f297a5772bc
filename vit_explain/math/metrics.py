"""Faithfulness and localisation scores of saliency maps: pure functions on tensors.

Deletion / insertion (Petsiuk et al., RISE, BMVC 2018): patches are removed from (deletion) or
added to (insertion) the image in order of relevance, in `steps` equal steps; the explained
class's probability is followed, and the area under that curve, with the fraction of patches on
the x axis, lies in [0, 1]. Deletion: lower is better; insertion: higher is better.
Pointing game (Zhang et al., 2016): a hit when the map's maximum lies on the object.
Energy-based pointing game (Wang et al., Score-CAM 2020): the share of the map's mass on the object.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def patch_order(maps: torch.Tensor) -> torch.Tensor:
    """(B, gh, gw) maps -> (B, gh*gw) patch indices, most relevant first (ties in raster order)."""
    flat = maps.flatten(1)
    return torch.sort(flat, dim=1, descending=True, stable=True).indices


def step_masks(order: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps + 1, P) booleans: at step k the first round(k * P / steps) patches of the order."""
    batch, patches = order.shape
    counts = torch.round(torch.arange(steps + 1, dtype=torch.float64) * patches / steps).long()
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(patches, device=order.device).expand(batch, -1))
    return rank[:, None, :] < counts.to(order.device)[None, :, None]


def perturbation_inputs(image: torch.Tensor, baseline: torch.Tensor, chosen: torch.Tensor,
                        grid: tuple[int, int], insertion: bool) -> torch.Tensor:
    """One image (C, H, W), its baseline, chosen (S, P) patches -> (S, C, H, W) inputs.

    Deletion replaces the chosen patches by the baseline; insertion shows only the chosen
    patches on the baseline. Patches map onto equal pixel cells of the input.
    """
    gh, gw = grid
    _, height, width = image.shape
    cells = chosen.view(-1, 1, gh, gw).float()
    pixels = torch.nn.functional.interpolate(cells, size=(height, width), mode="nearest").bool()
    show_image = pixels if insertion else ~pixels
    return torch.where(show_image, image[None], baseline[None])


def area_under_curve(scores: torch.Tensor) -> torch.Tensor:
    """(..., steps + 1) values at equally spaced x in [0, 1] -> trapezoid area."""
    steps = scores.shape[-1] - 1
    return (scores[..., :-1] + scores[..., 1:]).sum(-1) / (2 * steps)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, gh, gw) -> (B, H, W), bilinear."""
    return torch.nn.functional.interpolate(maps[:, None].float(), size=size, mode="bilinear",
                                           align_corners=False)[:, 0]


def pointing_hits(maps: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """(B,) booleans: the maximum of each (upsampled) map lies on its object mask (B, H, W)."""
    maps = upsample(maps, objects.shape[-2:])
    peak = maps.flatten(1).argmax(1)
    return objects.flatten(1).gather(1, peak[:, None])[:, 0].bool()


def energy_pointing(maps: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """(B,) share of each map's (non-negative) mass that falls on the object."""
    maps = upsample(maps, objects.shape[-2:]).clamp(min=0)
    total = maps.flatten(1).sum(1)
    inside = (maps * objects.float()).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=1e-12), torch.zeros_like(total))


BASELINES = ("blur", "mean", "zero")


def blurred(image: torch.Tensor) -> torch.Tensor:
    """A strong Gaussian blur (sigma = 1/28 of the longer side), as RISE's blur baseline."""
    sigma = max(image.shape[-2:]) / 28
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    channels = image.shape[0]
    x = image[None]
    x = nn.functional.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = nn.functional.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = nn.functional.pad(x, (0, 0, radius, radius), mode="replicate")
    x = nn.functional.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return x[0]


def baseline_of(image: torch.Tensor, kind: str) -> torch.Tensor:
    """What a removed patch becomes: a blurred copy, the image's mean colour, or zero (in the
    model's normalised input space zero is the training set's mean colour)."""
    if kind == "blur":
        return blurred(image)
    if kind == "mean":
        return image.mean(dim=(-2, -1), keepdim=True).expand_as(image)
    if kind == "zero":
        return torch.zeros_like(image)
    raise ValueError(f"baseline must be one of {', '.join(BASELINES)}; got {kind!r}")
