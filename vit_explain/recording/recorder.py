"""Record the post-softmax attention of every block, and optionally dL/dA.

The recorder hooks the module that receives the attention after the softmax (timm's
`attn_drop`), switches fused attention off while it records (fused attention never calls
that module), and hands the model back exactly as it came: fused flags, hooks,
requires_grad of the parameters and train/eval mode of every submodule.
"""
from __future__ import annotations

import torch
from torch import nn

from .modules import DEFAULT_ATTENTION_LAYER, find_attention_modules
from .session import RecordingSession


class AttentionRecorder(RecordingSession):
    """Context manager: `with AttentionRecorder(model, gradients=True) as rec: logits = rec.forward(x)`.

    rec.attentions holds one (B, H, N, N) tensor per attention call, in forward order (or what
    `reduce` made of it); rec.attention_gradients(logits, targets) returns dL/dA for each of
    them, in the same order. `call` (x -> logits) replaces `model(x)` for models whose output
    is not the logits.
    """

    def __init__(self, model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER,
                 gradients: bool = False, reduce=None, call=None, modules=None):
        super().__init__(model, gradients=gradients, reduce=reduce, call=call)
        # modules: find_attention_modules(model, attention_layer_name) found earlier (an adapter
        # keeps them: searching the module tree on every call costs more than the hooks)
        self.modules = find_attention_modules(model, attention_layer_name) if modules is None else modules
        self.attentions: list[torch.Tensor] = []

    def install(self) -> None:
        for _, module, parent in self.modules:
            self.unfuse(parent)
            self._handles.append(module.register_forward_hook(self._record))

    def _record(self, module, inputs, output) -> None:
        self.attentions.append(self.reduced(output))

    def reset(self) -> None:
        self.attentions = []

    def check_recorded(self) -> None:
        if not self.attentions:
            raise RuntimeError(
                f"{type(self.model).__name__} never called its attention modules "
                f"({self.modules[0][0]}, ...) during the forward pass; they may compute attention "
                "in a fused kernel without a 'fused_attn' switch"
            )

    def attention_gradients(self, logits: torch.Tensor, targets) -> list[torch.Tensor]:
        """dL/dA for every recorded attention, paired by position (block), not by arrival."""
        return self.gradients_wrt(logits, targets, self.attentions)
