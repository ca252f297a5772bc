"""One model run for several attention methods of a multi-method run (`--method a,b,c`).

Rollout, raw attention and flow read the same recorded attention; gradient rollout, Chefer and
Grad-SAM read the same attention and the same gradient of the explained class. When a run
explains one batch with several of them, one forward (and backward) serves them all: the first
explainer of a group records, the others reuse its recording. The recording is kept whole (every
head of every block) and each method's own block reduction (rollout's fusion and discard) is
applied to it afterwards, so every method computes exactly what it computes alone (tests:
bit-identical masks).

Explainers share when they record alike: the standard `AttentionExplainer.record` on the same
model and attention modules, with or without gradients alike, the same compat mode, and no
prompt or reference scorer. Methods that record more (AGCAM, TokenTM, DAAM's taps), LeGrad, CoLa,
CP-LRP and Grad-CAM run the model themselves.
"""
from __future__ import annotations

import torch

from .base import AttentionExplainer, Recording

_STANDARD = ("record", "recorder", "gradients_of", "relevance_of")


def sharing_key(explainer) -> tuple | None:
    """What the explainer's recording depends on, or None when it records its own way."""
    cls = type(explainer)
    if not isinstance(explainer, AttentionExplainer) or explainer.adapter.scorer is not None:
        return None
    if any(getattr(cls, name) is not getattr(AttentionExplainer, name) for name in _STANDARD):
        return None
    modules = tuple(id(module) for module in explainer.adapter.attention_modules())
    return id(explainer.model), modules, explainer.needs_gradients, explainer.compat


class SharedRecording:
    """The last batch's recording, for the explainers of one group (see `share_recordings`)."""

    def __init__(self):
        self.runs = 0  # model runs made: one per batch and category when the sharing works
        self._input: torch.Tensor | None = None
        self._category = None
        self._recording: Recording | None = None

    def record(self, explainer: AttentionExplainer, input_tensor: torch.Tensor, category_index) -> Recording:
        if not self._holds(input_tensor, category_index):
            self._recording = None  # a failed run below must not leave the previous batch's
            self._recording = explainer.record(input_tensor, category_index, reduce=None)
            self._input, self._category = input_tensor.detach().clone(), _comparable(category_index)
            self.runs += 1
        reduce = explainer.block_reduction()
        if reduce is None:
            return self._recording
        with torch.no_grad():  # as the recorder applies it: to each block's attention as recorded
            return self._recording._replace(attentions=[reduce(a) for a in self._recording.attentions])

    def _holds(self, input_tensor: torch.Tensor, category_index) -> bool:
        return (self._recording is not None and self._input.shape == input_tensor.shape
                and self._input.dtype == input_tensor.dtype and self._category == _comparable(category_index)
                and torch.equal(self._input, input_tensor.detach().to(self._input.device)))


def _comparable(category_index):
    if torch.is_tensor(category_index):
        return ("tensor", tuple(category_index.flatten().tolist()), tuple(category_index.shape))
    if isinstance(category_index, (list, tuple, range)):
        return ("sequence", tuple(category_index))
    return ("value", category_index)


def share_recordings(explainers) -> list[SharedRecording]:
    """Group the explainers that record alike and give each group of two or more one
    `SharedRecording` (set as `explainer.shared`); the groups made."""
    groups: dict = {}
    for explainer in explainers:
        key = sharing_key(explainer)
        if key is not None:
            groups.setdefault(key, []).append(explainer)
    shared = []
    for members in groups.values():
        if len(members) > 1:
            recording = SharedRecording()
            for explainer in members:
                explainer.shared = recording
            shared.append(recording)
    return shared
