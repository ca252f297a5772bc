"""Run a model in eval mode and give every submodule its own train/eval flag back."""
from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    saved = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, flag in saved.items():
            module.training = flag
