"""Which class each sample explains, and the score whose gradient is taken."""
from __future__ import annotations

import numbers
from typing import Sequence

import torch


def resolve_targets(logits: torch.Tensor, category_index=None) -> torch.Tensor:
    """The class to explain for each sample: (B,) long.

    None means each sample's predicted class; an int applies to all samples; a sequence or
    tensor gives one per sample.
    """
    batch, num_classes = logits.shape
    if category_index is None:
        return logits.argmax(dim=-1)
    if isinstance(category_index, numbers.Integral) or getattr(category_index, "ndim", None) == 0:
        targets = torch.full((batch,), int(category_index), dtype=torch.long)
    else:
        targets = torch.as_tensor(list(category_index) if not torch.is_tensor(category_index)
                                  else category_index, dtype=torch.long).flatten()
        if targets.numel() != batch:
            raise ValueError(
                f"category_index has {targets.numel()} entries but the batch has {batch} samples"
            )
    bad = targets[(targets < 0) | (targets >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"category_index {int(bad[0])} is out of range: the model has {num_classes} classes "
            f"(0..{num_classes - 1})"
        )
    return targets.to(logits.device)


def target_score(logits: torch.Tensor, targets: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each sample's target logit (samples do not interact)."""
    return logits.gather(1, torch.as_tensor(targets, device=logits.device).view(-1, 1)).sum()
