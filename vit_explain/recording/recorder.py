"""Record the post-softmax attention of every block, and optionally dL/dA.

The recorder hooks the module that receives the attention after the softmax (timm's
`attn_drop`), switches fused attention off while it records (fused attention never calls
that module), and hands the model back exactly as it came: fused flags, hooks,
requires_grad of the parameters and train/eval mode of every submodule.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import nn

DEFAULT_ATTENTION_LAYER = "attn_drop"


def find_attention_modules(model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER
                           ) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, attention-receiving module, its parent) in registration order, which is block order
    for timm models.

    A module matches when its dotted name equals attention_layer_name or ends with
    '.' + attention_layer_name ("attn_drop", "attn.attn_drop", "blocks.3.attn.attn_drop").
    """
    found = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if name == attention_layer_name or name.endswith("." + attention_layer_name):
                found.append((name, child, parent))
    if not found:
        raise ValueError(
            f"no attention modules found in {type(model).__name__}: no submodule is named "
            f"{attention_layer_name!r}. Pass attention_layer_name= the name (or dotted name suffix) of "
            "the module that receives each block's post-softmax attention, e.g. 'attn.attn_drop'; "
            "list candidates with [n for n, _ in model.named_modules()]"
        )
    return found


class AttentionRecorder:
    """Context manager: `with AttentionRecorder(model, gradients=True) as rec: logits = rec.forward(x)`.

    rec.attentions holds one (B, H, N, N) tensor per attention call, in forward order;
    rec.attention_gradients(score) returns dL/dA for each of them, in the same order.
    """

    def __init__(self, model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER,
                 gradients: bool = False):
        self.model = model
        self.gradients = gradients
        self.modules = find_attention_modules(model, attention_layer_name)
        self.attentions: list[torch.Tensor] = []
        self._handles = []
        self._saved_training: dict[nn.Module, bool] = {}
        self._saved_fused: dict[nn.Module, bool] = {}
        self._saved_requires_grad: dict[nn.Parameter, bool] = {}

    def __enter__(self) -> "AttentionRecorder":
        try:
            self._saved_training = {m: m.training for m in self.model.modules()}
            self.model.eval()
            for _, _, parent in self.modules:
                if isinstance(getattr(parent, "fused_attn", None), bool):
                    self._saved_fused[parent] = parent.fused_attn
                    parent.fused_attn = False
            if self.gradients:
                # Only activation gradients are needed: frozen weights save backward time.
                self._saved_requires_grad = {p: p.requires_grad for p in self.model.parameters()}
                for p in self._saved_requires_grad:
                    p.requires_grad_(False)
            for _, module, _ in self.modules:
                self._handles.append(module.register_forward_hook(self._record))
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
        for p, flag in self._saved_requires_grad.items():
            p.requires_grad_(flag)
        for parent, flag in self._saved_fused.items():
            parent.fused_attn = flag
        for module, flag in self._saved_training.items():
            module.training = flag
        self._saved_requires_grad, self._saved_fused, self._saved_training = {}, {}, {}

    def _record(self, module, inputs, output) -> None:
        self.attentions.append(output)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Run the model, recording attention (with a graph when gradients are wanted)."""
        self.attentions = []
        if not self.gradients:
            with torch.no_grad():
                logits = self.model(input_tensor)
        else:
            with torch.inference_mode(False), torch.enable_grad():
                x = input_tensor.clone() if input_tensor.is_inference() else input_tensor.detach()
                logits = self.model(x.requires_grad_(True))
        if not self.attentions:
            raise RuntimeError(
                f"{type(self.model).__name__} never called its attention modules "
                f"({self.modules[0][0]}, ...) during the forward pass; they may compute attention "
                "in a fused kernel without a 'fused_attn' switch"
            )
        return logits

    def attention_gradients(self, logits: torch.Tensor, targets) -> list[torch.Tensor]:
        """dL/dA for every recorded attention, paired by position (block), not by arrival.

        L is the sum over the batch of each sample's target logit; samples do not interact,
        so each sample gets the gradient of its own target.
        """
        if not self.gradients:
            raise RuntimeError("AttentionRecorder was created with gradients=False")
        with torch.inference_mode(False), torch.enable_grad():
            # clone: targets chosen under inference_mode would be inference tensors
            score = target_score(logits, torch.as_tensor(targets, device=logits.device).clone())
            grads = torch.autograd.grad(score, self.attentions, allow_unused=True)
        return [torch.zeros_like(a) if g is None else g for a, g in zip(self.attentions, grads)]


def resolve_targets(logits: torch.Tensor, category_index=None) -> torch.Tensor:
    """The class to explain for each sample: (B,) long.

    None means each sample's predicted class; an int applies to all samples; a sequence or
    tensor gives one per sample.
    """
    batch, num_classes = logits.shape
    if category_index is None:
        return logits.argmax(dim=-1)
    if isinstance(category_index, numbers.Integral) or getattr(category_index, "ndim", None) == 0:
        targets = torch.full((batch,), int(category_index), dtype=torch.long)
    else:
        targets = torch.as_tensor(list(category_index) if not torch.is_tensor(category_index)
                                  else category_index, dtype=torch.long).flatten()
        if targets.numel() != batch:
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


def target_score(logits: torch.Tensor, targets: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each sample's target logit (samples do not interact)."""
    return logits.gather(1, torch.as_tensor(targets, device=logits.device).view(-1, 1)).sum()
