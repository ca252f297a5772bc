"""Sessions that record more around an attention recorder: LeGrad's per-block scores
(blocks.py) and the taps of AGCAM, TokenTM and DAAM (taps.py).

Such a session installs its own hooks first and then enters the attention recorder, so that a
recorder that snapshots hooks (Hugging Face's) sees them as the caller's; on exit it leaves the
attention recorder and removes its own hooks. Both also cut modules from the graph before them by
replacing their token input with a fresh leaf; the helpers for that are here too.
"""
from __future__ import annotations

import torch

from .session import RecordingSession


def first_tensor(args: tuple, kwargs: dict):
    """A module call's first tensor argument (its tokens), or None."""
    for value in (*args, *kwargs.values()):
        if torch.is_tensor(value):
            return value
    return None


def tensor_of(output):
    """A module's output tensor: the tensor itself, or the first item of a tuple (older transformers)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def cut_inputs(module, args: tuple, kwargs: dict):
    """A forward pre-hook (with_kwargs) that cuts the module from the graph before it: its inputs with its token tensor (every argument that
    is that tensor: `nn.MultiheadAttention` takes it three times) replaced by one fresh leaf of the
    same values; None (inputs unchanged) when it has no tensor argument."""
    tokens = first_tensor(args, kwargs)
    if tokens is None:
        return None
    leaf = tokens.detach().requires_grad_(True)
    swap = lambda value: leaf if value is tokens else value  # noqa: E731
    return tuple(swap(a) for a in args), {key: swap(value) for key, value in kwargs.items()}


class AroundAttention(RecordingSession):
    """Base of the sessions around an attention recorder (`attention`, a RecordingSession with
    `.attentions` and `.run`): subclasses register their hooks in `install_own`, and extend
    `reset` and `check_recorded`."""

    def __init__(self, attention: RecordingSession, gradients: bool):
        super().__init__(attention.model, gradients=gradients, call=attention.run)
        self.attention = attention
        self._entered = False  # whether the attention recorder is entered (and must be left)

    def install_own(self) -> None:
        raise NotImplementedError

    def install(self) -> None:
        self.install_own()
        self.attention.__enter__()
        self._entered = True

    def reset(self) -> None:
        self.attention.reset()

    def check_recorded(self) -> None:
        self.attention.check_recorded()

    def _restore(self) -> None:
        try:
            if self._entered:
                self._entered = False
                self.attention.__exit__(None, None, None)
        finally:
            super()._restore()

    @property
    def attentions(self) -> list[torch.Tensor]:
        return self.attention.attentions
