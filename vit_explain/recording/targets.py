"""Which class each sample explains, and the score whose gradient is taken."""
from __future__ import annotations

import numbers
from typing import Sequence

import torch


def resolve_targets(logits: torch.Tensor, category_index=None) -> torch.Tensor:
    """The class to explain for each sample: (B,) long.

    None means each sample's predicted class; an int applies to all samples; a sequence or
    tensor of ints gives one per sample. Anything else (a float, even 2.0; a bool; a string)
    raises ValueError, as does a class out of range.
    """
    batch, num_classes = logits.shape
    if category_index is None:
        return logits.argmax(dim=-1)
    targets = class_indices(category_index)
    if targets.ndim == 0:
        targets = targets.repeat(batch)
    elif targets.numel() != batch:
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


def class_indices(category_index) -> torch.Tensor:
    """category_index as a long tensor, 0-d for one class, flat for one per sample; ValueError for
    anything but integers (torch.as_tensor(..., dtype=long) would truncate 2.7 to 2 unasked)."""
    if isinstance(category_index, numbers.Integral) and not isinstance(category_index, bool):
        return torch.tensor(int(category_index))
    refused = ValueError(f"category_index must be an int, or one int per sample; got {category_index!r}")
    if isinstance(category_index, (str, bytes, dict, set)):
        raise refused
    try:
        if not (torch.is_tensor(category_index) or hasattr(category_index, "__array__")):
            category_index = list(category_index)  # a tuple, a range, a generator
        values = torch.as_tensor(category_index)
    except (TypeError, ValueError, RuntimeError):  # not iterable, ragged, None or text inside
        raise refused from None
    # an empty list is float32 to torch: leave it to the count check
    if values.numel() and (values.is_floating_point() or values.is_complex() or values.dtype == torch.bool):
        raise refused
    return values.long() if values.ndim == 0 else values.long().flatten()


def target_score(logits: torch.Tensor, targets: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each sample's target logit (samples do not interact)."""
    return logits.gather(1, torch.as_tensor(targets, device=logits.device).view(-1, 1)).sum()
