"""The method table: the one place that knows which explanation methods exist.

Everything else reads it: the command line's `--method` choices and `--compat` check, how an
explainer is built from the command's options, output-file names, the parameters recorded in
the manifest, the public API (`vit_explain.VITAttentionRollout`, ...) and the contract tests
(tests/test_contracts.py), which run every method listed here on every model family.

Importing this module does not import torch (`vit-explain --help` stays fast): an entry names
its class as "module:Class" under vit_explain.methods, imported when it is first built.

To add a method: its file in vit_explain/methods/ (an `Explainer` subclass) plus one line below.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Callable

DEFAULT_METHOD = "rollout"                    # what the command explains with when nothing is asked
DEFAULT_CLASS_SPECIFIC_METHOD = "grad-rollout"  # ... and when a class is named (--category_index)


@dataclass(frozen=True)
class MethodSpec:
    """One explanation method as the command line and the public API see it."""
    name: str                       # what users type: --method NAME
    explainer: str                  # "module:Class" in vit_explain.methods
    options: tuple[str, ...]        # constructor keywords, read by name from the command's options
    suffix: Callable                # (options, explained class or None) -> output-name suffix
    class_specific: bool = False    # does the map depend on the explained class?
    extra_outputs: tuple[str, ...] = ()  # outputs beyond overlay and mask (output sink names)
    optional_outputs: tuple[str, ...] = ()  # outputs it can give when asked (--per-layer, --outputs)

    @property
    def compat(self) -> bool:
        """Whether --compat vit-explain applies: the class takes a compat mode."""
        return "compat" in self.options

    @property
    def class_name(self) -> str:
        return self.explainer.split(":")[1]

    def load(self) -> type:
        module, name = self.explainer.split(":")
        return getattr(import_module(f".{module}", __package__), name)

    def build(self, model, options):
        """The explainer for model, its keywords taken from options (any object with them as attributes)."""
        return self.load()(model, **{key: getattr(options, key) for key in self.options})


# The per-block figures (io/figure_sinks.py): for the methods whose explainer `has_layer_maps`,
# and for those that show heads (`has_layer_head_maps`) the labelled head grids too.
LAYER_OUTPUTS = ("layers", "layers-gif", "layers-webp")
HEAD_OUTPUTS = ("heads-figure", "heads-blocks")


def _grad_cam_suffix(o, c) -> str:
    return f"grad_cam_{c}" + (f"_{o.target_layer.replace('.', '_')}" if o.target_layer else "")


# Output names as the original vit-explain wrote them: attention_rollout_0.900_max, grad_rollout_243_0.900_max
METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("rollout", "rollout:VITAttentionRollout", ("head_fusion", "discard_ratio", "compat"),
               lambda o, c: f"attention_rollout_{o.discard_ratio:.3f}_{o.head_fusion}",
               optional_outputs=LAYER_OUTPUTS),
    MethodSpec("grad-rollout", "rollout:VITAttentionGradRollout", ("head_fusion", "discard_ratio", "compat"),
               lambda o, c: f"grad_rollout_{c}_{o.discard_ratio:.3f}_{o.head_fusion}", class_specific=True,
               optional_outputs=LAYER_OUTPUTS),
    MethodSpec("chefer", "attention:VITGradWeightedAttention", ("start_layer",),
               lambda o, c: f"chefer_{c}" + (f"_start{o.start_layer}" if o.start_layer else ""), class_specific=True),
    MethodSpec("raw-attention", "attention:VITRawAttention", ("layer",),
               lambda o, c: "raw_attention_last" if o.layer == -1 else f"raw_attention_layer{o.layer}",
               extra_outputs=("heads",), optional_outputs=LAYER_OUTPUTS + HEAD_OUTPUTS),
    MethodSpec("flow", "flow:VITAttentionFlow", (), lambda o, c: "attention_flow"),
    MethodSpec("grad-cam", "gradcam:VITGradCAM", ("target_layer",), _grad_cam_suffix, class_specific=True),
    MethodSpec("gradsam", "gradsam:VITGradSAM", (), lambda o, c: f"gradsam_{c}", class_specific=True,
               optional_outputs=LAYER_OUTPUTS),
    MethodSpec("legrad", "legrad:VITLeGrad", (), lambda o, c: f"legrad_{c}", class_specific=True,
               optional_outputs=LAYER_OUTPUTS),
    MethodSpec("agcam", "agcam:VITAGCAM", (), lambda o, c: f"agcam_{c}", class_specific=True),
    MethodSpec("tokentm", "tokentm:VITTokenTM", (), lambda o, c: f"tokentm_{c}", class_specific=True),
    MethodSpec("daam", "daam:VITDAAM", (), lambda o, c: f"daam_{c}", class_specific=True),
    MethodSpec("cola", "cola:VITCoLa", (), lambda o, c: f"cola_{c}", class_specific=True,
               optional_outputs=LAYER_OUTPUTS),
    MethodSpec("cp-lrp", "lrp:VITCPLRP", (), lambda o, c: f"cp_lrp_{c}", class_specific=True,
               extra_outputs=("relevance", "relevance-overlay")),
)}
