"""The recording session every recorder is built on: the model's state, forward and backward.

`ModelState` puts a model in eval mode (and freezes its parameters for gradient methods) and
puts back exactly what it found: every submodule's training flag and every parameter's
requires_grad. `HookSnapshot` removes hooks (and hook-installed flags) that a library added
to the model during a call, leaving the caller's own hooks alone.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .targets import target_score

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


class ModelState:
    """save() records training flags (and requires_grad when freezing), then sets eval mode
    (and requires_grad=False); restore() puts everything back and may be called more than once."""

    def __init__(self, model: nn.Module, freeze: bool):
        self.model = model
        self.freeze = freeze
        self._training: dict[nn.Module, bool] = {}
        self._requires_grad: dict[nn.Parameter, bool] = {}

    def save(self) -> None:
        self._training = {m: m.training for m in self.model.modules()}
        if any(self._training.values()):  # eval() visits every module: only when one is training
            self.model.eval()
        if self.freeze:
            # Only activation gradients are needed: frozen weights save backward time.
            self._requires_grad = {p: p.requires_grad for p in self.model.parameters()}
            for p in self._requires_grad:
                p.requires_grad_(False)

    def restore(self) -> None:
        for p, flag in self._requires_grad.items():
            p.requires_grad_(flag)
        for module, flag in self._training.items():
            if module.training != flag:  # nn.Module's __setattr__ is slow: set only what changed
                module.training = flag
        self._training, self._requires_grad = {}, {}


class RecordingSession:
    """Base of the recorders: the protocol every recorder shares.

    Entering saves the model's state (eval mode; parameters frozen when gradients are wanted,
    as only activation gradients are needed) and calls install(); leaving, or a failed install,
    removes the hooks install() registered, switches fused attention back on and restores the
    state. `forward(x)` clears what the last call recorded (`reset`), runs `call` (x -> logits;
    the model itself unless the adapter says otherwise) with a graph when `gradients` is set, and
    checks that the hooks saw what they should (`check_recorded`). `gradients_wrt(logits,
    targets, tensors)` is dL/d(tensor) for recorded tensors, refused without `gradients`.

    `reduce` (recording without gradients only): applied to each block's (B, H, N, N) attention
    as soon as it is recorded, so only what an explainer needs is kept (e.g. rollout's fused,
    discarded map instead of every head): less memory held, and the map is reduced while it is in
    the cache. Attention of another shape is kept as it is, for the explainer to name.
    """

    # The input joins the graph: with frozen parameters, hooked tensors depend on the weights
    # only through it. A recorder that makes its own leaf (Grad-CAM's) can say False.
    input_requires_grad = True

    def __init__(self, model: nn.Module, gradients: bool = False, reduce: Callable | None = None,
                 call: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if gradients and reduce is not None:
            raise ValueError("reduce applies to recording without gradients: dL/dA needs every head")
        self.model = model
        self.gradients = gradients
        self.reduce = reduce
        self.call = call or model
        self._state = ModelState(model, freeze=gradients)
        self._handles = []
        self._saved_fused: dict[nn.Module, bool] = {}

    def install(self) -> None:
        """Register hooks (their handles in self._handles); unfuse() attention modules."""

    def reset(self) -> None:
        """Forget what the previous forward recorded."""

    def check_recorded(self) -> None:
        """Raise when the hooks did not see what they should have during the forward."""

    def run(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """One call of the model: logits (recorders that must call the model differently override it)."""
        return self.call(input_tensor)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Run the model, recording (with a graph when gradients are wanted): the logits."""
        self.reset()
        logits = run_forward(self.run, input_tensor, self.gradients, self.input_requires_grad)
        self.check_recorded()
        return logits

    def gradients_wrt(self, logits: torch.Tensor, targets, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """dL/d(tensor) for each recorded tensor, in order; L is the sum over the batch of each
        sample's target logit (samples do not interact, so each gets its own target's gradient)."""
        if not self.gradients:
            raise RuntimeError(f"{type(self).__name__} was created with gradients=False")
        return gradients_of(logits, targets, tensors)

    def reduced(self, attention: torch.Tensor) -> torch.Tensor:
        square = attention.ndim == 4 and attention.shape[-1] == attention.shape[-2]
        return attention if self.reduce is None or not square else self.reduce(attention)

    def unfuse(self, module: nn.Module) -> None:
        """Fused attention never shows its attention matrix: switch it off for the call."""
        if isinstance(getattr(module, "fused_attn", None), bool):
            self._saved_fused[module] = module.fused_attn
            module.fused_attn = False

    def __enter__(self):
        try:
            self._state.save()
            self.install()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, flag in self._saved_fused.items():
            module.fused_attn = flag
        self._saved_fused = {}
        self._state.restore()


class HookSnapshot:
    """Remembers every module's hooks and selected instance attributes; restore() removes hooks
    added since and deletes (or resets) those attributes, so the model comes back as it was."""

    def __init__(self, model: nn.Module, attributes: Sequence[str] = ()):
        self.model = model
        self.attributes = tuple(attributes)
        self._hooks = {}
        self._attributes = {}

    def save(self) -> None:
        self._hooks = {m: {name: set(getattr(m, name, {}) or {}) for name in HOOK_DICTS}
                       for m in self.model.modules()}
        self._attributes = {m: {a: m.__dict__[a] for a in self.attributes if a in m.__dict__}
                            for m in self.model.modules()}

    def restore(self) -> None:
        if not self._hooks:  # never saved: nothing of ours to remove
            return
        for module in self.model.modules():
            saved = self._hooks.get(module, {})
            for name in HOOK_DICTS:
                hooks = getattr(module, name, None)
                if not hooks:
                    continue
                for key in [k for k in hooks if k not in saved.get(name, ())]:
                    del hooks[key]
            old = self._attributes.get(module, {})
            for attribute in self.attributes:
                if attribute in old:
                    module.__dict__[attribute] = old[attribute]
                elif attribute in module.__dict__:
                    del module.__dict__[attribute]
        self._hooks, self._attributes = {}, {}


def run_forward(call: Callable[[torch.Tensor], torch.Tensor], input_tensor: torch.Tensor,
                gradients: bool, input_requires_grad: bool = True) -> torch.Tensor:
    """call(input) under no_grad, or with a graph when gradients are wanted, also inside no_grad /
    inference_mode (the input requiring grad unless input_requires_grad is False)."""
    if not gradients:
        with torch.no_grad():
            return call(input_tensor)
    with torch.inference_mode(False), torch.enable_grad():
        x = input_tensor.clone() if input_tensor.is_inference() else input_tensor.detach()
        return call(x.requires_grad_(True) if input_requires_grad else x)


def gradients_of(logits: torch.Tensor, targets, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """d(sum over the batch of each sample's target logit)/d tensor for each tensor, in order
    (zeros for a tensor the score does not depend on)."""
    with torch.inference_mode(False), torch.enable_grad():
        # clone: targets chosen under inference_mode would be inference tensors
        score = target_score(logits, torch.as_tensor(targets, device=logits.device).clone())
        if not score.requires_grad:  # nothing recorded lies on the score's graph
            return [torch.zeros_like(t) for t in tensors]
        grads = torch.autograd.grad(score, list(tensors), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
