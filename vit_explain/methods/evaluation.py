"""Scoring saliency maps with the model itself: deletion / insertion curves (RISE)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..math.metrics import area_under_curve, patch_order, perturbation_inputs, step_masks
from ..recording.modes import eval_mode

BASELINES = ("blur", "mean", "zero")


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return getattr(out, "logits", out)


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


@torch.no_grad()
def class_probabilities(model: nn.Module, inputs: torch.Tensor, target: int, batch_size: int) -> torch.Tensor:
    return torch.cat([logits_of(model, chunk).float().softmax(-1)[:, target]
                      for chunk in inputs.split(batch_size)])


def deletion_insertion(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
                       steps: int = 20, baseline: str = "blur", batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per image: deletion and insertion AUC in [0, 1] and both curves (steps + 1 points).

    All 2 * (steps + 1) perturbed copies of an image go through the model in batches.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    grid = tuple(maps.shape[-2:])
    chosen = step_masks(patch_order(maps), steps)
    curves = {"deletion": [], "insertion": []}
    with eval_mode(model):
        for image, patches, target in zip(images, chosen, targets.tolist()):
            base = baseline_of(image, baseline)
            inputs = torch.cat([perturbation_inputs(image, base, patches, grid, insertion=False),
                                perturbation_inputs(image, base, patches, grid, insertion=True)])
            probabilities = class_probabilities(model, inputs, target, batch_size)
            curves["deletion"].append(probabilities[:steps + 1])
            curves["insertion"].append(probabilities[steps + 1:])
    result = {f"{kind}_curve": torch.stack(values) for kind, values in curves.items()}
    result.update({kind: area_under_curve(result[f"{kind}_curve"]) for kind in curves})
    return result
