"""Record one module's output (the activations) and dL/d(activations), for Grad-CAM.

`ActivationRecorder` hooks a single module, chosen by its dotted name, and hands the model
back exactly as it came: hooks, requires_grad of the parameters and train/eval mode of every
submodule, also when the forward or backward pass raises.
"""
from __future__ import annotations

import difflib

import torch
from torch import nn

from ._state import RecordingSession
from .targets import target_score

DEFAULT_TARGET_SUFFIX = "norm1"


def _candidates(model: nn.Module, limit: int = 5) -> list[str]:
    """The last few modules named like a block's normalisation layer (most useful last)."""
    names = [name for name, module in model.named_modules()
             if name.split(".")[-1] in ("norm1", "norm", "layernorm_before")
             and not isinstance(module, nn.Identity)]
    return names[-limit:]


def default_target_layer(model: nn.Module, suffix: str = DEFAULT_TARGET_SUFFIX) -> str:
    """The dotted name of the last module named `suffix` (default `norm1`: the last block's first
    normalisation, `blocks.11.norm1` for ViT/DeiT/BEiT/EVA, `layers.3.blocks.1.norm1` for Swin)."""
    names = [name for name, _ in model.named_modules() if name == suffix or name.endswith("." + suffix)]
    if not names:
        hint = _candidates(model)
        raise ValueError(
            f"{type(model).__name__} has no module named '{suffix}' to use as the "
            "default Grad-CAM target layer; pass target_layer= a dotted module name"
            + (f", e.g. {', '.join(repr(n) for n in hint)}" if hint else
               " (list them with [n for n, _ in model.named_modules()])")
        )
    return names[-1]


def find_module(model: nn.Module, module_name: str) -> nn.Module:
    """The submodule with this exact dotted name; ValueError naming candidates otherwise."""
    modules = dict(model.named_modules())
    if isinstance(module_name, str) and module_name and module_name in modules:
        return modules[module_name]
    close = difflib.get_close_matches(str(module_name), [n for n in modules if n], n=3)
    hint = list(dict.fromkeys(close + _candidates(model)))
    raise ValueError(
        f"{type(model).__name__} has no module named {module_name!r}; pass a dotted module name"
        + (f" such as {', '.join(repr(n) for n in hint)}" if hint else
           " (list them with [n for n, _ in model.named_modules()])")
    )


class ActivationRecorder(RecordingSession):
    """Context manager: the output of one module and the gradient of a target score with respect to it.

        with ActivationRecorder(model, "blocks.11.norm1") as rec:
            logits = rec.forward(x)
            grad = rec.gradient(logits, targets)   # dL/d(rec.activation), same shape
            act = rec.activation

    During the context the model is in eval mode and its parameters are frozen (only the
    activation's gradient is needed). The hook hands the rest of the network a copy of the
    module's output that starts a new graph, so nothing upstream of the module is recorded for
    backward; the values the model computes are unchanged.
    """

    def __init__(self, model: nn.Module, module_name: str, call=None):
        super().__init__(model, freeze=True)
        self.call = call or model  # x -> logits (Hugging Face models need their own call)
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

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Run the model with a graph from the target module on (works under no_grad/inference_mode)."""
        self.activation, self._calls = None, 0
        with torch.inference_mode(False), torch.enable_grad():
            x = input_tensor.clone() if input_tensor.is_inference() else input_tensor.detach()
            logits = self.call(x)
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
        return logits

    def gradient(self, logits: torch.Tensor, targets) -> torch.Tensor:
        """dL/d(activation), L the sum over the batch of each sample's target logit.

        Samples do not interact (eval mode), so each sample gets the gradient of its own target.
        """
        if self.activation is None:
            raise RuntimeError("ActivationRecorder.gradient called before forward")
        with torch.inference_mode(False), torch.enable_grad():
            # clone: targets chosen under inference_mode would be inference tensors
            score = target_score(logits, torch.as_tensor(targets, device=logits.device).clone())
            if not score.requires_grad:  # the output does not depend on the target layer
                return torch.zeros_like(self.activation)
            (grad,) = torch.autograd.grad(score, self.activation, allow_unused=True)
        return torch.zeros_like(self.activation) if grad is None else grad
