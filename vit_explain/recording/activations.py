"""Record one module's output (the activations) and dL/d(activations), for Grad-CAM.

`ActivationRecorder` hooks a single module, chosen by its dotted name, and hands the model
back exactly as it came: hooks, requires_grad of the parameters and train/eval mode of every
submodule, also when the forward or backward pass raises.
"""
from __future__ import annotations

import torch
from torch import nn

from .modules import find_module
from .session import RecordingSession


class ActivationRecorder(RecordingSession):
    """Context manager: the output of one module and the gradient of a target score with respect to it.

        with ActivationRecorder(model, "blocks.11.norm1") as rec:
            logits = rec.forward(x)
            grad = rec.gradient(logits, targets)   # dL/d(rec.activation), same shape
            act = rec.activation

    During the context the model is in eval mode and its parameters are frozen (only the
    activation's gradient is needed). The hook hands the rest of the network a copy of the
    module's output that starts a new graph, so nothing upstream of the module is recorded for
    backward; the values the model computes are unchanged. `call` (x -> logits) replaces
    `model(x)` for models whose output is not the logits (Hugging Face's).
    """

    input_requires_grad = False  # the activation is the graph's leaf: nothing upstream is needed

    def __init__(self, model: nn.Module, module_name: str, call=None):
        super().__init__(model, gradients=True, call=call)
        self.module_name = module_name
        self.module = find_module(model, module_name)
        self.activation: torch.Tensor | None = None
        self._calls = 0

    def install(self) -> None:
        self._handles.append(self.module.register_forward_hook(self._record))

    def _record(self, module, inputs, output):
        if not torch.is_tensor(output):
            raise TypeError(
                f"Grad-CAM target layer {self.module_name!r} returns {type(output).__name__}, "
                "not a tensor; choose a module whose output is a tensor"
            )
        self._calls += 1
        # A leaf that requires grad: dL/d(activation) exists even with frozen parameters and an
        # input without grad. Downstream gets a clone, so in-place operations there stay legal.
        self.activation = output.detach().requires_grad_(True)
        return self.activation.clone()

    def reset(self) -> None:
        self.activation, self._calls = None, 0

    def check_recorded(self) -> None:
        if self._calls == 0:
            raise RuntimeError(
                f"the Grad-CAM target layer {self.module_name!r} of {type(self.model).__name__} "
                "was never called during the forward pass; choose a module that is"
            )
        if self._calls > 1:
            raise ValueError(
                f"the Grad-CAM target layer {self.module_name!r} ran {self._calls} times in one "
                "forward pass; choose a module that runs once (e.g. one block's norm1)"
            )

    def gradient(self, logits: torch.Tensor, targets) -> torch.Tensor:
        """dL/d(activation), L the sum over the batch of each sample's target logit (zeros where
        the output does not depend on the target layer)."""
        if self.activation is None:
            raise RuntimeError("ActivationRecorder.gradient called before forward")
        return self.gradients_wrt(logits, targets, [self.activation])[0]
