"""What every attention explainer shares: validation, recording, layout, mask shaping.

What differs between architectures (input sizes, how attention is recorded, prefix tokens,
pooling, grid) is asked of the explainer's `adapter` (see `adapters.py`), chosen per model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..math import check_discard_ratio, check_head_fusion, readout_rows, scale_to_max, tokens_to_grid
from ..recording import resolve_targets
from .adapters import Adapter, adapter_for
from .layout import TokenLayout

COMPAT_MODES = (None, "vit-explain")


@dataclass
class Explanation:
    """Tensors for people who want them.

    masks:   (B, gh, gw) float32, each map scaled so its maximum is 1 (an all-zero map stays 0)
    logits:  (B, num_classes) the model's output for the input
    targets: (B,) long, the class each mask explains (the predicted class where none was given)
    """
    masks: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


class AttentionExplainer:
    """Base class: subclasses define `needs_gradients` and `relevance`, and may define
    `block_reduction`."""

    needs_gradients = False

    def __init__(self, model: nn.Module, attention_layer_name: str = "attn_drop",
                 head_fusion: str = "mean", discard_ratio: float = 0.9, compat: str | None = None):
        check_head_fusion(head_fusion)
        check_discard_ratio(discard_ratio)
        if compat not in COMPAT_MODES:
            raise ValueError(f"compat must be None or 'vit-explain'; got {compat!r}")
        # picks timm ViT-style / CaiT / Hugging Face; fails at construction, not at the first call
        self.adapter: Adapter = adapter_for(model, attention_layer_name)
        self.model = model
        self.attention_layer_name = attention_layer_name
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)
        self.compat = compat

    def relevance(self, attentions, gradients, layout: TokenLayout) -> torch.Tensor:
        """(B, N) relevance of every input token for the explained output. `attentions` holds
        what `block_reduction()` made of each block's attention (the attention itself by default)."""
        raise NotImplementedError

    def block_reduction(self):
        """None, or a function applied to each block's (B, H, N, N) attention as it is recorded
        (methods without gradients only), when `relevance` needs less than every head."""
        return None

    def record(self, input_tensor: torch.Tensor, category_index=None, reduce=None):
        """Run the model once: (attentions, gradients or None, logits, targets, layout).
        With `reduce` (no gradients), each block's attention is kept only as reduce(attention)."""
        self.adapter.check_input(input_tensor)
        param = next(self.model.parameters(), None)
        x = input_tensor if param is None else input_tensor.to(device=param.device, dtype=param.dtype)
        with self.adapter.recorder(gradients=self.needs_gradients, reduce=_square_only(reduce)) as rec:
            logits = rec.forward(x)
            targets = resolve_targets(logits, category_index)
            gradients = None
            if self.needs_gradients:
                gradients = [g.detach() for g in rec.attention_gradients(logits, targets)]
            attentions = [a.detach() for a in rec.attentions]
        check_attention_shapes(self.model, attentions, x.shape[0])
        layout = self.adapter.layout(tuple(x.shape[-2:]), attentions[0].shape[-1])
        if self.compat:
            layout = TokenLayout(1, "token", layout.grid)  # the original read R[0, 0, 1:]
        return attentions, gradients, logits.detach(), targets, layout

    def explain(self, input_tensor: torch.Tensor, category_index=None) -> Explanation:
        attentions, gradients, logits, targets, layout = self.record(input_tensor, category_index,
                                                                     reduce=self.block_reduction())
        # Under a caller's autocast only the model runs in low precision; the relevance math
        # stays in the attention's own dtype.
        with torch.no_grad(), torch.autocast(attentions[0].device.type, enabled=False):
            relevance = self.relevance(attentions, gradients, layout)
            masks = scale_to_max(tokens_to_grid(relevance, layout.num_prefix, layout.grid).float())
        return Explanation(masks, logits, targets)

    def attention_block_count(self) -> int:
        return self.adapter.block_count()

    def __call__(self, input_tensor: torch.Tensor, category_index=None) -> np.ndarray:
        """float32 numpy mask: (gh, gw) for a batch of one, (B, gh, gw) otherwise."""
        masks = self.explain(input_tensor, category_index).masks.cpu().numpy()
        return masks[0] if masks.shape[0] == 1 else masks


def _square_only(reduce):
    """reduce, leaving attention of a shape rollout cannot use (not (B, H, N, N)) as it is, for
    check_attention_shapes to name."""
    if reduce is None:
        return None

    def reduce_square(attention: torch.Tensor) -> torch.Tensor:
        if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
            return attention
        return reduce(attention)
    return reduce_square


def readout_for(attentions, layout: TokenLayout) -> torch.Tensor:
    """(B, 1, N) rows the classifier reads, in the attention's dtype and device."""
    batch, n = attentions[0].shape[0], attentions[0].shape[-1]
    return readout_rows(batch, n, layout.num_prefix, layout.pooling,
                        dtype=attentions[0].dtype, device=attentions[0].device)


def check_attention_shapes(model: nn.Module, attentions, batch: int) -> None:
    for index, attention in enumerate(attentions):
        # (B, H, N, N), or (B, N, N) once a block_reduction fused the heads
        if attention.ndim not in (3, 4) or attention.shape[-1] != attention.shape[-2] or attention.shape[0] != batch:
            raise ValueError(
                f"attention of block {index} of {type(model).__name__} has shape {tuple(attention.shape)}; "
                f"rollout needs (B={batch}, heads, N, N) in every block (windowed attention such as "
                "Swin's has no rollout)"
            )
    sizes = {a.shape[-1] for a in attentions}
    if len(sizes) > 1:
        raise ValueError(
            f"the blocks of {type(model).__name__} attend over different token counts {sorted(sizes)}; "
            "rollout needs the same tokens in every block"
        )
