"""The --method choices: how each builds its explainer and names its outputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class MethodSpec:
    build: Callable            # (options, model) -> explainer with explain(x, category)
    suffix: Callable           # (options, explained class or None) -> output name suffix
    class_specific: bool       # does the map depend on the explained class?
    compat: bool = False       # does --compat vit-explain apply?


def _rollout(o, model):
    from ..methods import VITAttentionRollout
    return VITAttentionRollout(model, head_fusion=o.head_fusion, discard_ratio=o.discard_ratio, compat=o.compat)


def _grad_rollout(o, model):
    from ..methods import VITAttentionGradRollout
    return VITAttentionGradRollout(model, discard_ratio=o.discard_ratio, head_fusion=o.head_fusion, compat=o.compat)


def _chefer(o, model):
    from ..methods import VITGradWeightedAttention
    return VITGradWeightedAttention(model)


def _raw(o, model):
    from ..methods import VITRawAttention
    return VITRawAttention(model, layer=o.layer)


def _flow(o, model):
    from ..methods import VITAttentionFlow
    return VITAttentionFlow(model)


def _grad_cam(o, model):
    from ..methods import VITGradCAM
    return VITGradCAM(model, target_layer=o.target_layer)


METHODS = {
    # names as the original vit-explain wrote them: attention_rollout_0.900_max, grad_rollout_243_0.900_max
    "rollout": MethodSpec(_rollout, lambda o, c: f"attention_rollout_{o.discard_ratio:.3f}_{o.head_fusion}",
                          class_specific=False, compat=True),
    "grad-rollout": MethodSpec(_grad_rollout,
                               lambda o, c: f"grad_rollout_{c}_{o.discard_ratio:.3f}_{o.head_fusion}",
                               class_specific=True, compat=True),
    "chefer": MethodSpec(_chefer, lambda o, c: f"chefer_{c}", class_specific=True),
    "raw-attention": MethodSpec(_raw, lambda o, c: "raw_attention_last" if o.layer == -1 else f"raw_attention_layer{o.layer}", class_specific=False),
    "flow": MethodSpec(_flow, lambda o, c: "attention_flow", class_specific=False),
    "grad-cam": MethodSpec(_grad_cam, lambda o, c: f"grad_cam_{c}" + (f"_{o.target_layer.replace('.', '_')}" if o.target_layer else ""),
                           class_specific=True),
}
