"""Scoring saliency maps: deletion / insertion curves (RISE) with the model itself, and the
localisation scores of math.metrics (pointing game, energy-based pointing), for the CLI."""
from __future__ import annotations

import torch
from torch import nn

from ..math.metrics import (BASELINES, area_under_curve, baseline_of, energy_pointing, patch_order,
                            perturbation_inputs, pointing_hits, step_masks)
from ..recording.modes import eval_mode
from .adapters import adapter_for

__all__ = ["BASELINES", "deletion_insertion", "energy_pointing", "pointing_hits"]


@torch.no_grad()
def class_probabilities(logits, inputs: torch.Tensor, target: int, batch_size: int) -> torch.Tensor:
    """The target's probability for every input; logits is the model call (x -> logits)."""
    return torch.cat([logits(chunk).float().softmax(-1)[:, target]
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
    logits = adapter_for(model).logits
    curves = {"deletion": [], "insertion": []}
    with eval_mode(model):
        for image, patches, target in zip(images, chosen, targets.tolist()):
            base = baseline_of(image, baseline)
            inputs = torch.cat([perturbation_inputs(image, base, patches, grid, insertion=False),
                                perturbation_inputs(image, base, patches, grid, insertion=True)])
            probabilities = class_probabilities(logits, inputs, target, batch_size)
            curves["deletion"].append(probabilities[:steps + 1])
            curves["insertion"].append(probabilities[steps + 1:])
    result = {f"{kind}_curve": torch.stack(values) for kind, values in curves.items()}
    result.update({kind: area_under_curve(result[f"{kind}_curve"]) for kind in curves})
    return result
