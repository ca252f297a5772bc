"""What every explainer shares: the adapter, input checks, the explained class, mask shaping.

What differs between architectures (input sizes, how to call the model, how attention is
recorded, prefix tokens, pooling, grid) is asked of the explainer's `adapter` (see
`adapters/`), chosen per model; what differs between methods is one `relevance` function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..math import check_discard_ratio, check_head_fusion, readout_rows, scale_to_max, tokens_to_grid
from ..recording import DEFAULT_ATTENTION_LAYER, LayerError, resolve_targets
from .adapters import Adapter, TokenLayout, adapter_for

COMPAT_MODES = (None, "vit-explain")


@dataclass
class Explanation:
    """Where the model looked for a batch of images, and what it was explaining.

    masks:      (B, gh, gw) float32 over the patch grid, each map scaled so its maximum is 1 (an
                all-zero map stays 0)
    logits:     (B, num_classes) the model's output for the input
    targets:    (B,) long, the class each mask explains (the predicted class where none was given;
                class-agnostic methods report the predicted class)
    head_masks: (B, heads, gh, gw) float32, one map per attention head, each scaled to its own
                maximum, for methods that show heads (raw attention); None otherwise
    """
    masks: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    head_masks: torch.Tensor | None = None


class Explainer:
    """Base of every explainer: `explain(x, category_index) -> Explanation`, and `__call__`
    giving a float32 numpy mask, (gh, gw) for a batch of one, (B, gh, gw) otherwise."""

    def __init__(self, model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER):
        if not isinstance(attention_layer_name, str) or not attention_layer_name:
            raise LayerError(f"attention_layer_name must be a module name (a non-empty str); "
                             f"got {attention_layer_name!r}")
        # picks the model family (adapters/); fails at construction, not at the first call
        self.adapter: Adapter = adapter_for(model, attention_layer_name)
        self.model = model

    def explain(self, input_tensor: torch.Tensor, category_index=None) -> Explanation:
        raise NotImplementedError

    def model_input(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """The checked input on the model's device, in its dtype. ValueError for an input the model
        cannot take, and for NaN or infinite values, in the input or after the cast to the model's
        dtype (1e5 overflows float16): they would come back as NaN masks without a word."""
        self.adapter.check_input(input_tensor)
        param = next(self.model.parameters(), None)
        x = input_tensor if param is None else input_tensor.to(device=param.device, dtype=param.dtype)
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(input_tensor)).sum())
            if bad:
                raise ValueError(f"the input holds {bad} NaN or infinite values (of {input_tensor.numel()}); "
                                 "explanations of it would be NaN")
            raise ValueError(f"the input has values beyond the range of the model's dtype {x.dtype} "
                             f"(largest {torch.finfo(x.dtype).max:g})")
        return x

    def __call__(self, input_tensor: torch.Tensor, category_index=None) -> np.ndarray:
        """float32 numpy mask: (gh, gw) for a batch of one, (B, gh, gw) otherwise."""
        masks = self.explain(input_tensor, category_index).masks.cpu().numpy()
        return masks[0] if masks.shape[0] == 1 else masks


class Recording(NamedTuple):
    """What one forward (and backward) left for the relevance math (a tuple, so that it also
    unpacks as the 5-tuple record() returned before it had names)."""
    attentions: list        # per block, what block_reduction() made of (B, H, N, N), or the attention
    gradients: list | None  # per block dL/dA, for methods that need gradients
    logits: torch.Tensor
    targets: torch.Tensor
    layout: TokenLayout


class AttentionExplainer(Explainer):
    """Base of the attention methods: subclasses define `needs_gradients` and `relevance`, and
    may define `block_reduction` and `head_relevance`."""

    needs_gradients = False

    def __init__(self, model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER,
                 head_fusion: str = "mean", discard_ratio: float = 0.9, compat: str | None = None):
        check_head_fusion(head_fusion)
        check_discard_ratio(discard_ratio)
        if not (compat is None or (isinstance(compat, str) and compat in COMPAT_MODES)):
            raise ValueError(f"compat must be None or 'vit-explain'; got {compat!r}")
        super().__init__(model, attention_layer_name)
        self.adapter.check_attention()
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)
        self.compat = compat

    def relevance(self, attentions, gradients, layout: TokenLayout) -> torch.Tensor:
        """(B, N) relevance of every input token for the explained output. `attentions` holds
        what `block_reduction()` made of each block's attention (the attention itself by default)."""
        raise NotImplementedError

    def head_relevance(self, attentions, layout: TokenLayout) -> torch.Tensor | None:
        """(B, H, N) relevance per attention head, for methods that show heads; None otherwise."""
        return None

    def block_reduction(self):
        """None, or a function applied to each block's (B, H, N, N) attention as it is recorded
        (methods without gradients only), when `relevance` needs less than every head."""
        return None

    def record(self, input_tensor: torch.Tensor, category_index=None, reduce=None) -> Recording:
        """Run the model once (and backward for gradient methods). With `reduce` (no gradients),
        each block's attention is kept only as reduce(attention)."""
        x = self.model_input(input_tensor)
        with self.adapter.recorder(gradients=self.needs_gradients, reduce=reduce) as rec:
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
        return Recording(attentions, gradients, logits.detach(), targets, layout)

    def explain(self, input_tensor: torch.Tensor, category_index=None) -> Explanation:
        rec = self.record(input_tensor, category_index, reduce=self.block_reduction())
        layout = rec.layout
        # Under a caller's autocast only the model runs in low precision; the relevance math
        # stays in the attention's own dtype.
        with torch.no_grad(), torch.autocast(rec.attentions[0].device.type, enabled=False):
            relevance = self.relevance(rec.attentions, rec.gradients, layout)
            masks = scale_to_max(tokens_to_grid(relevance, layout.num_prefix, layout.grid).float())
            heads = self.head_relevance(rec.attentions, layout)
            if heads is not None:
                heads = scale_to_max(tokens_to_grid(heads, layout.num_prefix, layout.grid).float())
        return Explanation(masks, rec.logits, rec.targets, heads)

    def attention_block_count(self) -> int:
        return self.adapter.block_count()


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
