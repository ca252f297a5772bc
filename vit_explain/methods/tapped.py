"""The base of the attention methods that read more of every block than its attention: the
queries and keys (AGCAM), the block's input, post-attention residual and output (TokenTM), the
values and the heads' outputs (DAAM). The adapter says where those are (as `Tap`s); the
recording wraps the attention recorder in a `TapRecorder`; one forward and one backward."""
from __future__ import annotations

import torch

from ..recording import DEFAULT_ATTENTION_LAYER, Tap, TapRecorder
from .base import AttentionExplainer, Recording


class TappedExplainer(AttentionExplainer):
    """Subclasses define `block_taps()` (name -> one Tap per block, or one Tap in all for the names
    in `single_taps`; asked at construction, so a family without those parts is refused there with
    the adapter's ValueError), `relevance_of`, and may define `cut_modules()` (modules whose token
    input is cut from the graph)."""

    needs_gradients = True
    single_taps: tuple[str, ...] = ()

    def __init__(self, model, attention_layer_name=DEFAULT_ATTENTION_LAYER):
        super().__init__(model, attention_layer_name, head_fusion="mean", discard_ratio=0.0)
        self.taps = self.block_taps()
        self.cut = self.cut_modules()

    def block_taps(self) -> dict[str, list[Tap]]:
        raise NotImplementedError

    def cut_modules(self) -> list:
        return []

    def recorder(self, reduce=None) -> TapRecorder:
        return TapRecorder(self.adapter.recorder(gradients=True), self.taps, self.cut)

    def record(self, input_tensor: torch.Tensor, category_index=None, reduce=None) -> Recording:
        rec = super().record(input_tensor, category_index, reduce)
        for name, tensors in rec.taps.items():
            # a per-block tap list of another length than the attentions would pair blocks wrongly
            if name not in self.single_taps and len(tensors) != len(rec.attentions):
                raise ValueError(f"{type(self.model).__name__} recorded {len(rec.attentions)} attentions for "
                                 f"{len(tensors)} blocks; {type(self).__name__} needs one attention per block "
                                 "(is attention_layer_name one module per block?)")
        return rec
