"""CP-LRP (Ali et al., ICML 2022) and AttnLRP (Achtibat et al., ICML 2024): layer-wise relevance
propagation for ViTs, as gradient x input with a modified backward; signed, at pixel level."""
from __future__ import annotations

import contextlib
import math
from functools import partial

import torch
import torch.nn.functional as F

from ..math.grid import scale_to_max
from ..math.lrp import (activation_identity, gamma_rule, l2_normalize_identity, layer_norm_identity, patch_sums,
                        pixel_relevance, scaled_gradient)
from ..recording import resolve_targets
from ..recording.rules import RuleRecorder
from .adapters.lrp import QUERY_KEY_SCALE, VALUE_SCALE, lrp_parts
from .base import Explainer, Explanation

ATTENTION_RULES = ("cp", "attnlrp")


def _norm_rule(module, inputs, output):
    return layer_norm_identity(inputs[0], output, module.weight, module.eps)


def _activation_rule(module, inputs, output):
    return activation_identity(inputs[0], output)


def _detach_rule(module, inputs, output):
    return output.detach()


def _scale_rule(scales, module, inputs, output):
    return scaled_gradient(output, scales)


# nn.MultiheadAttention.forward(query, key, value, ...): the arguments its rules replace
MULTIHEAD_ARGUMENTS = ("query", "key", "value")


def _multihead_rule(attention: str, module, args, kwargs):
    """The attention rule on the query, key and value arguments of an nn.MultiheadAttention: CP
    detaches the query and the key (the weights are then constants, the output linear in the
    values); AttnLRP scales their gradients by 1/4 and the value's by 1/2 (a linear projection
    passes a scaled gradient on scaled, so this equals the scales on the projections' outputs)."""
    args, kwargs = list(args), dict(kwargs)
    for position, name in enumerate(MULTIHEAD_ARGUMENTS):
        inside = position < len(args)
        value = args[position] if inside else kwargs.get(name)
        if not torch.is_tensor(value):
            continue
        if attention == "cp":
            value = value if name == "value" else value.detach()
        else:
            scale = VALUE_SCALE if name == "value" else QUERY_KEY_SCALE
            value = scaled_gradient(value, torch.tensor(scale, dtype=value.dtype, device=value.device))
        if inside:
            args[position] = value
        else:
            kwargs[name] = value
    return tuple(args), kwargs


def _linear_op(module, x, weight):
    return F.linear(x, weight)


def _conv_op(module, x, weight):
    return module._conv_forward(x, weight, None)


def _gamma_rule(gamma, op, module, inputs, output):
    return gamma_rule(inputs[0], output, module.weight, gamma, partial(op, module))


def _check_gamma(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0: off); got {value!r}")
    return float(value)


class VITCPLRP(Explainer):
    """CP-LRP: layer-wise relevance propagation for vision transformers, as gradient x input with a
    modified backward (one forward, one backward):

    * LayerNorm: its standard deviation held constant (identity rule);
    * the MLP's GELU: relevance passed through unchanged, gradient g * GELU(x) / x (identity rule);
    * attention (`attention="cp"`, CP-LRP): queries and keys detached, so relevance flows through
      the values only; `attention="attnlrp"`: AttnLRP's uniform rule on the two bilinear products
      (gradients to q and k times 1/4, to v times 1/2; the softmax keeps its gradient);
    * Linear layers: the gradient (LRP-0), or the generalised gamma rule with `gamma` > 0; the
      patch embedding likewise with `patch_gamma` (both default 0: off).

    The relevance is signed and pixel-level: `Explanation.pixel_relevance` (B, H, W) is the input
    times its modified gradient summed over the colour channels, in units of the explained logit
    (without biases it sums to the logit: the rules are conservative); `patch_relevance`
    (B, gh, gw) sums it over each patch. `masks` is the positive part of `patch_relevance`
    scaled to a maximum of 1 (the patches that speak for the class; an image with no positive
    patch gets an all-zero mask). `Explanation.signed` is True.

    Prompt and reference targets (CLIP-family scores scale * cos(image embedding, key) + bias):
    the L2 normalisation of the image embedding takes the identity rule (its norm held constant,
    as LayerNorm's standard deviation), so the relevance sums to the score less the bias, in the
    units of the explained score (`vit_explain.math.lrp`: the true gradient of a cosine similarity
    would hand the input a total of zero).

    Defined for timm's standard ViT, Hugging Face ViTs, the vision towers of Hugging Face CLIP,
    SigLIP (its attention-pooling head included) and DINOv2, and OpenCLIP ViTs; other families are
    refused with a ValueError at construction naming the model (`vit_explain/methods/adapters/lrp.py`,
    `lrp_foundation.py`). `gamma` > 0 is refused where an nn.MultiheadAttention computes
    projections the rule cannot reach (OpenCLIP's blocks, SigLIP's head). The model's forward is
    never patched: the rules are forward hooks and pre-hooks for the call only.
    """

    signed = True

    def __init__(self, model, gamma: float = 0.0, patch_gamma: float = 0.0, attention: str = "cp"):
        self.gamma = _check_gamma("gamma", gamma)
        self.patch_gamma = _check_gamma("patch_gamma", patch_gamma)
        if attention not in ATTENTION_RULES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_RULES)}; got {attention!r}")
        self.attention = attention
        super().__init__(model)
        self.parts = lrp_parts(self.adapter)  # ValueError naming the model where the rules are not defined
        if self.gamma and self.parts.multihead:
            raise ValueError(f"gamma > 0 cannot apply to {type(model).__name__}: its nn.MultiheadAttention computes "
                             "its projections inside one call, where the gamma rule cannot reach them; use gamma=0")

    def rules(self, tokens: list) -> list:
        """(module, rule) pairs for the recording, in the order each module's rules apply."""
        parts = self.parts
        rules = [(parts.first_norm, lambda module, inputs, output: tokens.append(inputs[0].shape[1]))]
        rules += [(m, partial(_gamma_rule, self.gamma, _linear_op)) for m in parts.linears if self.gamma]
        if self.patch_gamma:
            rules.append((parts.patch_embedding, partial(_gamma_rule, self.patch_gamma, _conv_op)))
        rules += [(m, _norm_rule) for m in parts.norms]
        rules += [(m, _activation_rule) for m in parts.activations]
        if self.attention == "cp":
            rules += [(m, _detach_rule) for m in parts.queries_keys]
        else:
            rules += [(m, partial(_scale_rule, scales)) for m, scales in parts.attention_scales]
        return rules

    def normalisation_rule(self):
        """A prompt's or reference's scores with the L2 normalisation's identity rule, for the call."""
        scorer = self.adapter.scorer
        if scorer is None:
            return contextlib.nullcontext()
        return self.adapter.scoring(scorer.with_normalize(l2_normalize_identity))

    def relevance(self, input_tensor: torch.Tensor, category_index=None):
        """(pixel relevance (B, H, W), logits, targets, token count): the input times its modified gradient."""
        x = self.model_input(input_tensor)
        tokens: list[int] = []
        pre_rules = [(m, partial(_multihead_rule, self.attention)) for m in self.parts.multihead]
        with self.normalisation_rule(), \
                RuleRecorder(self.model, self.rules(tokens), call=self.adapter.logits, pre_rules=pre_rules) as rec:
            logits = rec.forward(x)
            targets = resolve_targets(logits, category_index)
            gradient = rec.input_gradient(logits, targets).detach()
            inputs = rec.input.detach()
        dtype = torch.promote_types(inputs.dtype, torch.float32)
        with torch.no_grad(), torch.autocast(inputs.device.type, enabled=False):
            pixels = pixel_relevance(inputs.to(dtype), gradient.to(dtype))
        reached = (pixels != 0).flatten(1).any(dim=1)
        if not bool(reached.all()):
            samples = (~reached).nonzero().flatten().tolist()
            raise ValueError(f"no relevance of the explained score reaches the input of {type(self.model).__name__} "
                             f"(samples {samples} of the batch): the map would be all zero")
        return pixels, logits.detach(), targets, tokens[0]

    def explain(self, input_tensor: torch.Tensor, category_index=None, per_layer: bool = False) -> Explanation:
        """per_layer is accepted for every method; CP-LRP has no per-block maps."""
        pixels, logits, targets, count = self.relevance(input_tensor, category_index)
        layout = self.adapter.layout(tuple(pixels.shape[-2:]), count)
        with torch.no_grad():
            patches = patch_sums(pixels, layout.grid, self.parts.patch_size)
            masks = scale_to_max(patches.clamp(min=0).float())
        return Explanation(masks, logits, targets, pixel_relevance=pixels, patch_relevance=patches, signed=True)
