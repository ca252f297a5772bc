"""Record tensors at named modules' inputs and outputs around an attention recorder, and cut
modules' inputs from the graph before them: what AGCAM, TokenTM and DAAM need beyond the attention.

A `Tap` names one module and which tensor to keep: its first tensor argument ("input") or its
output ("output", the first item of a tuple). `read` is applied as the tensor is recorded, on
the graph the forward builds (a projection, a head split, a scaling), so that a gradient can be
taken with respect to what it returns. Each tapped module must run exactly once per forward.

`cut` modules get a forward pre-hook that replaces their token input by a fresh leaf of the same
values (every argument that is that same tensor: `nn.MultiheadAttention` takes it three times).
A gradient then reaches what the module computes only from the modules after it, never through
it into the ones before: AGCAM's "gradients reach each block only through the residual stream".

The hooks are registered before the attention recorder is entered, so that a recorder that
snapshots hooks (Hugging Face's) sees them as the caller's; all are removed on exit.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .around import AroundAttention, cut_inputs, first_tensor, tensor_of
from .session import RecordingSession

WHERE = ("input", "output")


@dataclass(frozen=True)
class Tap:
    module: nn.Module
    where: str = "output"                 # "input": the first tensor argument; "output": the output
    read: Callable | None = None          # tensor -> what is kept (on the graph)

    def __post_init__(self):
        if self.where not in WHERE:
            raise ValueError(f"where must be one of {', '.join(WHERE)}; got {self.where!r}")


class TapRecorder(AroundAttention):
    """Context manager around an attention recorder (`attention`, a RecordingSession with
    `.attentions`, `.run` and `.attention_gradients`):

        with TapRecorder(adapter.recorder(gradients=True), {"values": [...], ...}, cut=[...]) as rec:
            logits = rec.forward(x)
            rec.tapped["values"]                   # one tensor per tap, in the order given
            rec.attention_gradients(logits, targets)
            rec.gradients_wrt(logits, targets, rec.tapped["mixed"])

    The model is handed back as it came.
    """

    def __init__(self, attention: RecordingSession, taps: Mapping[str, Sequence[Tap]],
                 cut: Sequence[nn.Module] = ()):
        super().__init__(attention, gradients=attention.gradients)
        self.taps = {name: list(items) for name, items in taps.items()}
        self.cut = list(cut)
        self.tapped: dict[str, list] = {}
        self._calls: dict[str, list[int]] = {}

    def install_own(self) -> None:
        for module in self.cut:
            self._handles.append(module.register_forward_pre_hook(cut_inputs, with_kwargs=True))
        for name, items in self.taps.items():
            for index, tap in enumerate(items):
                hook = partial(self._record, name, index, tap)
                self._handles.append(tap.module.register_forward_hook(hook, with_kwargs=True))

    def _record(self, name, index, tap, module, args, kwargs, output) -> None:
        # a forward hook sees the arguments after the pre-hooks (a cut input is the leaf)
        tensor = first_tensor(args, kwargs) if tap.where == "input" else tensor_of(output)
        self._calls[name][index] += 1
        self.tapped[name][index] = tensor if tap.read is None else tap.read(tensor)

    def reset(self) -> None:
        super().reset()
        self.tapped = {name: [None] * len(items) for name, items in self.taps.items()}
        self._calls = {name: [0] * len(items) for name, items in self.taps.items()}

    def check_recorded(self) -> None:
        super().check_recorded()
        for name, calls in self._calls.items():
            if any(count != 1 for count in calls):
                raise RuntimeError(f"the modules recorded as {name!r} of {type(self.model).__name__} ran {calls} "
                                   "times in one forward pass; each must run once")

    def attention_gradients(self, logits: torch.Tensor, targets) -> list[torch.Tensor]:
        return self.attention.attention_gradients(logits, targets)
