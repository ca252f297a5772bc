"""Grad-CAM for vision transformers: where a layer's features, weighted by the class's gradient, lie."""
from __future__ import annotations

import torch
from torch import nn

from ..math import scale_to_max
from ..math.gradcam import grad_cam
from ..recording import find_module, resolve_targets
from .base import Explainer, Explanation, check_gradients_flow


def is_channels_first(module: nn.Module) -> bool:
    """True for modules whose 4-D output is (B, C, H, W): convolutions, batch/group norms, timm's
    LayerNorm2d and other *2d modules. Everything else (Swin's blocks, LayerNorm) is taken as NHWC."""
    if isinstance(module, (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
        return True
    return type(module).__name__.lower().endswith("2d")


def feature_map(module: nn.Module, tensor: torch.Tensor, image_hw: tuple[int, int], layout) -> torch.Tensor:
    """A target layer's output (or its gradient) as a channels-last grid (B, gh, gw, C).

    (B, N, C) token sequences lose their prefix tokens (class, distillation, registers) and are
    laid out on the patch grid of this input (`layout(image_hw, num_tokens)`, the adapter's);
    (B, H, W, C) maps (Swin) are used as they are; (B, C, H, W) maps of convolution-like modules
    are moved to channels-last.
    """
    if tensor.ndim == 3:  # (B, N, C) tokens -> (B, gh, gw, C) patches
        tokens = layout(image_hw, tensor.shape[1])
        gh, gw = tokens.grid
        return tensor[:, tokens.num_prefix:].reshape(tensor.shape[0], gh, gw, tensor.shape[-1])
    if tensor.ndim == 4:
        return tensor.permute(0, 2, 3, 1) if is_channels_first(module) else tensor
    raise ValueError(
        f"the Grad-CAM target layer's output has shape {tuple(tensor.shape)}; expected tokens "
        "(B, N, C) or a feature map (B, H, W, C)"
    )


class VITGradCAM(Explainer):
    """Grad-CAM for transformers: relu(sum_c w_c A_c) on the target layer's patch grid, where A is
    the layer's output and w_c the spatial mean of dL/dA_c for the explained class's logit L.

    `VITGradCAM(model, target_layer=None)(input_tensor, category_index=None)` returns a float32
    numpy mask over the patch grid, (gh, gw) for one image or (B, gh, gw) for a batch, each map
    scaled so its maximum is 1. target_layer is a dotted module name; the default is the model
    family's (its adapter's `default_gradcam_layer()`): the last module named `norm1` for timm
    models (the last block's first normalisation: `blocks.11.norm1` for a 12-block ViT,
    `layers.3.blocks.1.norm1` for Swin-T), the last `layernorm_before` for a Hugging Face ViT
    (e.g. `vit.encoder.layer.11.layernorm_before`). Input sizes, the model call and the token
    layout come from the `adapter` (replaceable, as for the attention explainers).
    """

    def __init__(self, model: nn.Module, target_layer: str | None = None):
        super().__init__(model)
        name = self.adapter.default_gradcam_layer() if target_layer is None else target_layer
        self.module = find_module(model, name)  # fail at construction, not at the first call
        self.target_layer = name

    def explain(self, input_tensor: torch.Tensor, category_index=None, per_layer: bool = False) -> Explanation:
        """per_layer is accepted for every method; Grad-CAM reads one layer and has no per-block maps."""
        x = self.model_input(input_tensor)
        with self.adapter.activation_recorder(self.target_layer) as rec:
            logits = rec.forward(x)
            targets = resolve_targets(logits, category_index)
            gradient = rec.gradient(logits, targets).detach()
            activation = rec.activation.detach()
        check_gradients_flow(self.model, [gradient], self.target_layer)  # no silent all-zero map
        image_hw = tuple(x.shape[-2:])
        with torch.no_grad():
            activation = feature_map(self.module, activation, image_hw, self.adapter.layout)
            gradient = feature_map(self.module, gradient, image_hw, self.adapter.layout)
            masks = scale_to_max(grad_cam(activation, gradient).float())
        return Explanation(masks, logits.detach(), targets)
