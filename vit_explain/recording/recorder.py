"""Record the post-softmax attention of every block, and optionally dL/dA.

The recorder hooks the module that receives the attention after the softmax (timm's
`attn_drop`), switches fused attention off while it records (fused attention never calls
that module), and hands the model back exactly as it came: fused flags, hooks,
requires_grad of the parameters and train/eval mode of every submodule.
"""
from __future__ import annotations

import torch
from torch import nn

from ._state import RecordingSession, gradients_of, run_forward

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


class AttentionRecorder(RecordingSession):
    """Context manager: `with AttentionRecorder(model, gradients=True) as rec: logits = rec.forward(x)`.

    rec.attentions holds one (B, H, N, N) tensor per attention call, in forward order (or what
    `reduce` made of it); rec.attention_gradients(score) returns dL/dA for each of them, in the
    same order.
    """

    def __init__(self, model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER,
                 gradients: bool = False, reduce=None):
        super().__init__(model, freeze=gradients, reduce=reduce)
        self.gradients = gradients
        self.modules = find_attention_modules(model, attention_layer_name)
        self.attentions: list[torch.Tensor] = []

    def install(self) -> None:
        for _, module, parent in self.modules:
            self.unfuse(parent)
            self._handles.append(module.register_forward_hook(self._record))

    def _record(self, module, inputs, output) -> None:
        self.attentions.append(self.reduced(output))

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Run the model, recording attention (with a graph when gradients are wanted)."""
        self.attentions = []
        logits = run_forward(self.model, input_tensor, self.gradients)
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
        return gradients_of(logits, targets, self.attentions)
