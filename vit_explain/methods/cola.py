"""CoLa: contrastive layer-wise attention contributions, vit-explain's own class-specific method."""
from __future__ import annotations

from functools import partial

import torch

from ..math.cola import contrastive_scores, contribution_maps
from ..math.grid import tokens_to_grid
from ..math.legrad import min_max_scale
from ..recording import DEFAULT_ATTENTION_LAYER, BlockScoreRecorder, resolve_targets
from .base import Explainer, Explanation, check_gradients_flow
from .legrad import LayerMaps, chosen_layers


class VITCoLa(Explainer):
    """CoLa (contrastive layer-wise attention contributions). For every block l:

    * the block's output tokens, mean-pooled and pushed through the model's final norm and head
      (as LeGrad does), give the block's class scores y_l, and S_l = log softmax(y_l)[c] is its
      contrastive score for the explained class c: the evidence for c over the alternatives;
    * the block's map is relu(mean_h(A_l * dS_l/dA_l)) averaged over the query rows: the
      first-order contribution of each key to S_l through block l's attention.

    The maps are averaged over the blocks and min-max scaled. Three choices, each for a reason:
    per-block scores find evidence in the block where it forms (LeGrad); attention times its
    gradient measures what an edge did rather than what it could have done (Chefer, Grad-SAM);
    the contrastive score removes the evidence that every likely class shares, which is what
    makes other maps light up a second object in the image. One forward and one backward (every
    block is cut from the blocks before it; see `vit_explain.recording.blocks`). Defined where
    LeGrad is: timm ViT-style models, Hugging Face and torchvision ViTs.
    """

    has_layer_maps = True  # explain(x, per_layer=True): each chosen block's map

    def __init__(self, model, attention_layer_name=DEFAULT_ATTENTION_LAYER, layers=None):
        super().__init__(model, attention_layer_name)
        self.blocks = self.adapter.blocks()  # ValueError where per-block scores are not defined
        self.adapter.check_attention()
        self.layers = chosen_layers(layers, len(self.blocks))

    def layer_maps(self, input_tensor: torch.Tensor, category_index=None) -> tuple:
        """(maps (B, L, gh, gw) unscaled, logits, targets)."""
        x = self.model_input(input_tensor)
        score = partial(self._score, self.adapter.scores_of_tokens)
        with BlockScoreRecorder(self.adapter.recorder(gradients=True), self.blocks, self.layers, score) as rec:
            logits = rec.forward(x)
            targets = resolve_targets(logits, category_index)
            gradients = [g.detach() for g in rec.score_gradients(targets)]
            attentions = [rec.attentions[i].detach() for i in self.layers]
        check_gradients_flow(self.model, gradients)  # an all-zero map would say nothing
        shape = gradients[0].shape
        if len(shape) != 4 or shape[-1] != shape[-2]:
            raise ValueError(f"CoLa needs (B, heads, N, N) attention in every block of {type(self.model).__name__}; "
                             f"got {tuple(shape)}")
        layout = self.adapter.layout(tuple(x.shape[-2:]), shape[-1])
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            maps = contribution_maps(attentions, gradients, layout.num_prefix)
            maps = tokens_to_grid(maps, 0, layout.grid).float()
        return maps, logits.detach(), targets

    @staticmethod
    def _score(scores_of_tokens, tokens: torch.Tensor) -> torch.Tensor:
        return contrastive_scores(scores_of_tokens(tokens, pooling="mean"))

    def explain(self, input_tensor: torch.Tensor, category_index=None, per_layer: bool = False) -> Explanation:
        """per_layer: `layer_masks` holds each chosen block's map, min-max scaled like the mask,
        and `layer_blocks` their indices."""
        maps, logits, targets = self.layer_maps(input_tensor, category_index)
        mask = min_max_scale(maps.mean(dim=1))
        if not per_layer:
            return Explanation(mask, logits, targets)
        return Explanation(mask, logits, targets, layer_masks=min_max_scale(maps), layer_blocks=list(self.layers))
