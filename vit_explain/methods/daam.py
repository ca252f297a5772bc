"""DAAM: Dynamic Accumulated Attention Map (Liao, Gao & Zhang, Pattern Recognition 2025, arXiv 2503.14640)."""
from __future__ import annotations

import torch

from ..math.daam import daam_block_maps, feature_weights
from ..math.grid import tokens_to_grid
from ..recording import DEFAULT_ATTENTION_LAYER
from .base import Recording
from .legrad import LayerMaps
from .tapped import TappedExplainer


class VITDAAM(TappedExplainer):
    """DAAM: for every block b, with A its attention, V its values and T = A @ V its heads' outputs
    side by side (the input of the output projection):
        S_b[n, (h, d)] = A[h, cls, n] * V[h, n, d]        what token n brought to each channel of T[cls]
        C_b = dy/dT[cls]                                   the channels' importance
        L_b[n] = ReLU(sum over channels c of ReLU(C_b)[c] * S_b[n, c])
    and block k's dynamic accumulated map is sum_{b <= k} L_b: how the final map forms, block by
    block. The map of `explain` is the last one, min-max scaled (as the authors display it);
    `layer_maps(x, category_index).maps` holds every L_b (B, blocks, gh, gw), unscaled, and
    `.cumsum(dim=1)` of it the accumulated maps. Average-pooled models decompose the patch rows
    the classifier averages instead of the class token's.

    y is the explained class's logit, or, with label_free=True (self-supervised backbones, models
    without a classifier), y = sum_d w_d f_d over the pooled feature f the classifier would read,
    with DAAM's dimension-wise weights w = min-max over d of mean_k(f_hat_d * z_hat_kd), z_k the
    `references` (K, D) (e.g. features of images of one class, as the authors use a k-NN memory
    bank), or the image's own feature when there are none. Label-free maps explain no class:
    `category_index` must be None, and `targets` report the model output's argmax (None on a
    model without classes).

    Definitions as in the authors' code (ly9802/DynamicAccumulatedAttentionMap, utils/DAAM.py; no
    per-block normalisation, as their scripts run it by default); ReLU(C_b) in the label-free mode
    too, where the authors' self-supervised script leaves C_b unclamped. One forward and one backward. Defined for
    timm's standard ViT blocks, Hugging Face ViTs, torchvision ViTs and the
    foundation families (HF CLIP / SigLIP / DINOv2, OpenCLIP); other families are refused
    with a ValueError at construction.
    """

    single_taps = ("features",)

    def __init__(self, model, attention_layer_name=DEFAULT_ATTENTION_LAYER, label_free: bool = False,
                 references: torch.Tensor | None = None):
        if not isinstance(label_free, bool):
            raise ValueError(f"label_free must be True or False; got {label_free!r}")
        if references is not None:
            if not label_free:
                raise ValueError("references apply to label_free=True only")
            if not torch.is_tensor(references) or references.ndim not in (1, 2) or not references.numel() \
                    or not references.is_floating_point() or not bool(torch.isfinite(references).all()):
                raise ValueError("references must be a finite float tensor of reference features, (D,) or (K, D)")
        self.label_free = label_free
        self.references = references
        super().__init__(model, attention_layer_name)

    def block_taps(self):
        taps = {"values": self.adapter.value_taps(), "mixed": self.adapter.mixed_taps()}
        if self.label_free:
            taps["features"] = [self.adapter.feature_tap()]
        return taps

    def gradients_of(self, rec, logits, targets):
        if not self.label_free:
            return rec.gradients_wrt(logits, targets, rec.tapped["mixed"])
        features = rec.tapped["features"][0]
        if features.ndim != 2:
            raise ValueError(f"label-free DAAM needs pooled features (B, D) at the classifier of "
                             f"{type(self.model).__name__}; got {tuple(features.shape)}")
        # out of inference mode: the weights join the graph's product (a no_grad weight is a constant)
        with torch.inference_mode(False), torch.no_grad():
            references = None if self.references is None else self.references.to(features.device)
            weights = feature_weights(features.detach(), references)
        with torch.inference_mode(False), torch.enable_grad():
            score = (features * weights).sum(dim=-1, keepdim=True)  # one "class" per sample
        return rec.gradients_wrt(score, torch.zeros(len(score), dtype=torch.long), rec.tapped["mixed"])

    def record(self, input_tensor, category_index=None, reduce=None) -> Recording:
        if self.label_free and category_index is not None:
            raise ValueError("label-free DAAM explains no class: category_index must be None")
        return super().record(input_tensor, category_index, reduce)

    def block_maps(self, rec: Recording) -> torch.Tensor:
        """(B, blocks, N): every block's L_b from one recording."""
        layout = rec.layout
        rows = slice(0, 1) if layout.pooling == "token" else slice(layout.num_prefix, None)
        return daam_block_maps(rec.attentions, rec.taps["values"], rec.gradients, rows)

    def relevance_of(self, rec):
        final = self.block_maps(rec).sum(dim=1)
        # less its minimum over the patches: scaled to its maximum, the map is min-max scaled
        return final - final[:, rec.layout.num_prefix:].amin(dim=1, keepdim=True)

    def layer_maps(self, input_tensor: torch.Tensor, category_index=None) -> LayerMaps:
        """Every block's map L_b, unscaled, (B, blocks, gh, gw), with the logits and the targets."""
        rec = self.record(input_tensor, category_index)
        with torch.no_grad(), torch.autocast(rec.attentions[0].device.type, enabled=False):
            maps = tokens_to_grid(self.block_maps(rec), rec.layout.num_prefix, rec.layout.grid).float()
        return LayerMaps(maps, rec.logits, rec.targets)
