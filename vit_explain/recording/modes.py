"""Run a model in eval mode and give every submodule its own train/eval flag back."""
from __future__ import annotations

import contextlib

from torch import nn

from .session import ModelState


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    state = ModelState(model, freeze=False)
    state.save()
    try:
        yield model
    finally:
        state.restore()
