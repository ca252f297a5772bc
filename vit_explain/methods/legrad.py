"""LeGrad (Bousselham et al., arXiv 2404.03214): each block's own score, differentiated with
respect to that block's attention."""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch

from ..math.grid import tokens_to_grid
from ..math.legrad import legrad_block_maps, min_max_scale
from ..recording import DEFAULT_ATTENTION_LAYER, BlockScoreRecorder, resolve_targets
from .base import Explainer, Explanation, check_gradients_flow

POOLINGS = ("mean", "model")


class LayerMaps(NamedTuple):
    maps: torch.Tensor      # (B, len(layers), gh, gw) float32, each block's map before any scaling
    logits: torch.Tensor    # (B, classes) the model's output
    targets: torch.Tensor   # (B,) the explained class


def chosen_layers(layers, count: int) -> list[int]:
    """Block indices in forward order from None (all), an int or a sequence (negative from the end)."""
    if layers is None:
        return list(range(count))
    items = [layers] if isinstance(layers, int) else list(layers) if isinstance(layers, (list, tuple, range)) else []
    if not items or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise ValueError(f"layers must be None, a block index or a non-empty list of them; got {layers!r}")
    bad = [i for i in items if not -count <= i < count]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {count} blocks (0..{count - 1}, or negative)")
    return sorted({i % count for i in items})


class VITLeGrad(Explainer):
    """LeGrad: for each chosen block l, its output tokens pooled and pushed through the model's
    final norm and head give a score s_l for the explained class; the block's map is
    ReLU(d s_l / d A_l), A_l the block's post-softmax attention, averaged over heads and query
    rows (prefix-token columns dropped); the maps are averaged over the blocks and min-max
    scaled.

    layers:  the blocks used (indices, negative from the end); None: all (the paper's choice;
             LeGrad's own wrapper defaults to the last two)
    pooling: "mean" of all tokens, class token included, then the final norm, as published and as
             torchcam does; "model": the model's own pooling (the class token for ViT/DeiT)

    One forward and one backward: every block's input is cut from the blocks before it, so a
    single backward of sum_l s_l gives each A_l its own d s_l / d A_l (see
    `vit_explain.recording.blocks`). Defined for timm ViT-style models, Hugging Face ViTs and
    torchvision ViTs; CaiT and Swin are refused with a ValueError at construction.

    Attention-pooled models (SigLIP: timm's global_pool="map", transformers' SiglipModel) get
    LeGrad as its authors define it for SigLIP: block l's tokens, as they are, go through the
    model's own final norm and attention pool (and projection) to give s_l, and the gradient is
    taken with respect to the POOL's attention P_l (its latent query over block l's tokens), not
    the block's self-attention: the block's map is ReLU(d s_l / d P_l) averaged over the heads
    (and the latents; SigLIP has one). `pooling` does not apply there (a mean of the tokens would
    give the pool identical keys). The authors' code feeds the pool the block's tokens without
    the final norm the model applies before it, and can subtract an "empty prompt" map; here
    the pool reads the tokens as the model's own forward does, and no correction is made.
    """

    has_layer_maps = True  # explain(x, per_layer=True): each chosen block's map

    def __init__(self, model, attention_layer_name=DEFAULT_ATTENTION_LAYER, layers=None, pooling="mean"):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        super().__init__(model, attention_layer_name)
        self.blocks = self.adapter.blocks()  # ValueError where LeGrad is not defined
        self.adapter.check_attention()
        self.layers = chosen_layers(layers, len(self.blocks))
        self.pooling = pooling
        self.through_pool = self.adapter.pooled_by_attention()

    def layer_maps(self, input_tensor: torch.Tensor, category_index=None) -> LayerMaps:
        """Each chosen block's map, unscaled, with the logits and the explained classes."""
        x = self.model_input(input_tensor)
        # through the pool: the block's tokens as they are, read by the model's own pool
        score = partial(self.adapter.scores_of_tokens, pooling="model" if self.through_pool else self.pooling)
        attention = self.adapter.recorder(gradients=True)
        with BlockScoreRecorder(attention, self.blocks, self.layers, score) as rec:
            logits = rec.forward(x)
            targets = resolve_targets(logits, category_index)
            found = rec.pool_gradients(targets) if self.through_pool else rec.score_gradients(targets)
            gradients = [g.detach() for g in found]
        check_gradients_flow(self.model, gradients)  # an all-zero map would say nothing
        shape = gradients[0].shape
        if len(shape) != 4 or (shape[-1] != shape[-2] and not self.through_pool):
            raise ValueError(f"LeGrad needs (B, heads, N, N) attention in every block of {type(self.model).__name__}; "
                             f"got {tuple(shape)}")
        layout = self.adapter.layout(tuple(x.shape[-2:]), shape[-1])
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            maps = tokens_to_grid(legrad_block_maps(gradients, layout.num_prefix), 0, layout.grid).float()
        return LayerMaps(maps, logits.detach(), targets)

    def explain(self, input_tensor: torch.Tensor, category_index=None, per_layer: bool = False) -> Explanation:
        """per_layer: `layer_masks` holds each chosen block's map, min-max scaled like the mask,
        and `layer_blocks` their indices."""
        maps, logits, targets = self.layer_maps(input_tensor, category_index)
        if not per_layer:
            return Explanation(min_max_scale(maps.mean(dim=1)), logits, targets)
        return Explanation(min_max_scale(maps.mean(dim=1)), logits, targets,
                           layer_masks=min_max_scale(maps), layer_blocks=list(self.layers))
