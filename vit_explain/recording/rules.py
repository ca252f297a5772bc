"""Run a model with some modules' outputs swapped for ones with the same values and a modified
backward, and take the gradient of the explained score with respect to the input: what LRP-type
methods (CP-LRP, AttnLRP) need.

A rule is a function (module, inputs, output) -> the output to pass on, or None to pass the
module's own; it is installed as a forward hook for the call only. A pre-rule is a function
(module, args, kwargs) -> (args, kwargs) to call the module with, installed as a forward pre-hook:
for modules whose parts are computed inside one call (`nn.MultiheadAttention` projects its query,
key and value arguments itself), a rule on the arguments is the only place to change them. The model's forward is never
patched: the hooks are removed on exit, also when the call raises, and the model's state comes
back as it was (`RecordingSession`).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn

from .session import RecordingSession

Rule = Callable[[nn.Module, tuple, torch.Tensor], "torch.Tensor | None"]
PreRule = Callable[[nn.Module, tuple, dict], "tuple[tuple, dict] | None"]


class RuleRecorder(RecordingSession):
    """Context manager:

        with RuleRecorder(model, [(module, rule), ...]) as rec:
            logits = rec.forward(x)
            g = rec.input_gradient(logits, targets)   # the modified dL/dx, x's shape
            x = rec.input                            # the input the graph starts from

    Several rules on one module run in the order given, each on the previous one's output.
    Every module given must run at least once per forward pass (RuntimeError otherwise: the
    model computes that part without calling the module, and the rule would silently not apply).
    """

    def __init__(self, model: nn.Module, rules: Sequence[tuple[nn.Module, Rule]], call=None,
                 pre_rules: Sequence[tuple[nn.Module, PreRule]] = ()):
        super().__init__(model, gradients=True, call=call)
        self.rules = list(rules)
        self.pre_rules = list(pre_rules)
        self.input: torch.Tensor | None = None
        self._calls: list[int] = [0] * (len(self.rules) + len(self.pre_rules))

    def install(self) -> None:
        for index, (module, rule) in enumerate(self.rules):
            self._handles.append(module.register_forward_hook(partial(self._apply, index, rule)))
        for index, (module, rule) in enumerate(self.pre_rules, start=len(self.rules)):
            self._handles.append(module.register_forward_pre_hook(partial(self._apply_pre, index, rule),
                                                                  with_kwargs=True))

    def _apply(self, index: int, rule: Rule, module, inputs, output):
        self._calls[index] += 1
        return rule(module, inputs, output)

    def _apply_pre(self, index: int, rule: PreRule, module, args, kwargs):
        self._calls[index] += 1
        return rule(module, args, kwargs)

    def run(self, input_tensor: torch.Tensor) -> torch.Tensor:
        self.input = input_tensor
        return self.call(input_tensor)

    def reset(self) -> None:
        self.input = None
        self._calls = [0] * (len(self.rules) + len(self.pre_rules))

    def check_recorded(self) -> None:
        missed = [type(module).__name__ for (module, _), calls in zip(self.rules + self.pre_rules, self._calls)
                  if calls == 0]
        if missed:
            raise RuntimeError(f"{type(self.model).__name__} never called some modules whose backward rules apply "
                               f"({', '.join(sorted(set(missed)))}) during the forward pass")

    def input_gradient(self, logits: torch.Tensor, targets) -> torch.Tensor:
        """The modified gradient of the sum over the batch of each sample's target logit, with
        respect to the input (zeros where the score does not reach it)."""
        if self.input is None:
            raise RuntimeError("RuleRecorder.input_gradient called before forward")
        return self.gradients_wrt(logits, targets, [self.input])[0]
