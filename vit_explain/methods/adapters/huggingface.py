"""Hugging Face transformers `ViTForImageClassification` (the `hf` extra).

The attention comes from `output_attentions=True` with eager attention (see
`vit_explain.recording.huggingface`); the model takes `pixel_values=` and returns an output
object whose `.logits` are the scores.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from ...recording import DEFAULT_ATTENTION_LAYER, HuggingFaceAttentionRecorder, Tap, default_target_layer
from ...recording import is_huggingface_model
from .base import Adapter, TokenLayout, check_input_shape, pair, seeded

# transformers class name -> prefix tokens before the patches (the classifier reads token 0)
HF_PREFIX_TOKENS = {"ViTForImageClassification": 1}
HF_TARGET_SUFFIX = "layernorm_before"  # transformers' name for a ViT layer's first normalisation


class Projections(NamedTuple):
    """The linear maps of one ViT layer's attention, under either transformers spelling."""
    query: nn.Module
    key: nn.Module
    value: nn.Module
    output: nn.Module   # takes the heads' outputs side by side
    heads: int
    scaling: float


def projections(layer: nn.Module) -> Projections | None:
    """transformers >= 5: layer.attention.{q,k,v,o}_proj (ViT, DINOv2) or layer.self_attn.{q,k,v,out}_proj
    (CLIP, SigLIP); earlier: layer.attention.attention.{query,key,value} and layer.attention.output.dense.
    None for anything else."""
    attention = getattr(layer, "attention", None) or getattr(layer, "self_attn", None)
    output = getattr(attention, "o_proj", None) or getattr(attention, "out_proj", None)
    if output is not None and all(hasattr(attention, n) for n in ("q_proj", "k_proj", "v_proj", "head_dim")):
        heads = attention.q_proj.out_features // attention.head_dim
        scaling = getattr(attention, "scaling", getattr(attention, "scale", attention.head_dim ** -0.5))
        return Projections(attention.q_proj, attention.k_proj, attention.v_proj, output, heads, float(scaling))
    inner, output = getattr(attention, "attention", None), getattr(attention, "output", None)
    if all(hasattr(inner, n) for n in ("query", "key", "value", "attention_head_size")) and hasattr(output, "dense"):
        return Projections(inner.query, inner.key, inner.value, output.dense, int(inner.num_attention_heads),
                           inner.attention_head_size ** -0.5)
    return None


def head_split(heads: int, scale: float, tensor: torch.Tensor) -> torch.Tensor:
    """(B, N, H * d) -> (B, H, N, d), times scale."""
    batch, tokens, width = tensor.shape
    split = tensor.view(batch, tokens, heads, width // heads).transpose(1, 2)
    return split if scale == 1.0 else split * scale


def projection_taps(kind: str):
    """An adapter method giving the taps of kind "query_key", "value" or "mixed" from the adapter's
    `_projections()` (transformers' separate q/k/v projections, eager attention: (q @ k^T) * scaling);
    shared by the Hugging Face adapters."""
    def taps(self):
        found = self._projections()
        if kind == "query_key":
            return ([Tap(p.query, "output", partial(head_split, p.heads, p.scaling)) for p in found],
                    [Tap(p.key, "output", partial(head_split, p.heads, 1.0)) for p in found])
        if kind == "value":
            return [Tap(p.value, "output", partial(head_split, p.heads, 1.0)) for p in found]
        return [Tap(p.output, "input") for p in found]
    taps.__name__ = f"{kind}_taps"
    return taps


def _hf_class(model: nn.Module) -> str | None:
    for cls in type(model).__mro__:
        if cls.__name__ in HF_PREFIX_TOKENS and cls.__module__.split(".")[0] == "transformers":
            return cls.__name__
    return None


class HuggingFaceViTAdapter(Adapter):
    """1 class token, the classifier reads token 0, grid = image_size // patch_size from the
    config. With interpolate_pos_encoding=True the model is called with it and takes any size
    of at least one patch (grid H // p, W // p). An explainer's adapter can be replaced to get
    that: `explainer.adapter = HuggingFaceViTAdapter(model, interpolate_pos_encoding=True)`."""

    def __init__(self, model: nn.Module, interpolate_pos_encoding: bool = False):
        super().__init__(model)
        hf_class = _hf_class(model)
        if hf_class is None:
            raise ValueError(
                f"the Hugging Face model {type(model).__name__} is not supported: vit-explain explains "
                f"{', '.join(sorted(HF_PREFIX_TOKENS))} (or use a timm model)")
        self.num_prefix = HF_PREFIX_TOKENS[hf_class]
        config = model.config
        self.image_size = tuple(int(v) for v in pair(config.image_size))
        self.patch_size = tuple(int(v) for v in pair(config.patch_size))
        self.channels = int(getattr(config, "num_channels", 3))
        self.interpolate_pos_encoding = bool(interpolate_pos_encoding)

    @classmethod
    def matches(cls, model: nn.Module, attention_layer_name: str) -> bool:
        return is_huggingface_model(model)

    @classmethod
    def for_model(cls, model: nn.Module, attention_layer_name: str) -> "HuggingFaceViTAdapter":
        if attention_layer_name != DEFAULT_ATTENTION_LAYER:
            raise ValueError(
                f"attention_layer_name does not apply to Hugging Face models ({type(model).__name__}): "
                "their attention is read from output_attentions; leave it at its default")
        return cls(model)

    @classmethod
    def example(cls) -> nn.Module:
        """A 2-layer transformers ViT classifier on 32x32 inputs (4x4 patches), 5 classes; needs
        transformers (ImportError without it)."""
        import transformers
        config = transformers.ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=48,
                                        num_attention_heads=3, intermediate_size=96, num_labels=5)
        return seeded(lambda: transformers.ViTForImageClassification(config))

    def check_input(self, input_tensor) -> None:
        if self.interpolate_pos_encoding:
            check_input_shape(input_tensor, self.channels, None, self.patch_size)
        else:
            check_input_shape(input_tensor, self.channels, self.image_size, self.patch_size,
                              note=" (other sizes need HuggingFaceViTAdapter(model, "
                                   "interpolate_pos_encoding=True) as the explainer's adapter)")

    def logits(self, x):
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate_pos_encoding else {}
        return self.model(pixel_values=x, **kwargs).logits

    def recorder(self, gradients: bool, reduce=None) -> HuggingFaceAttentionRecorder:
        return HuggingFaceAttentionRecorder(self.model, gradients=gradients, reduce=reduce,
                                            interpolate_pos_encoding=self.interpolate_pos_encoding)

    def default_gradcam_layer(self) -> str:
        return default_target_layer(self.model, HF_TARGET_SUFFIX)

    def layout(self, image_hw, num_tokens) -> TokenLayout:
        size = tuple(image_hw) if self.interpolate_pos_encoding else self.image_size
        grid = (size[0] // self.patch_size[0], size[1] // self.patch_size[1])
        if num_tokens != self.num_prefix + grid[0] * grid[1]:
            raise ValueError(
                f"cannot arrange {num_tokens} tokens of {type(self.model).__name__} ({self.num_prefix} prefix "
                f"tokens) into a {grid[0]}x{grid[1]} patch grid for a {image_hw[0]}x{image_hw[1]} input")
        return TokenLayout(self.num_prefix, "token", grid)

    def block_count(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def blocks(self) -> list[nn.Module]:
        vit = self.model.vit
        # transformers >= 5 keeps the layers on the model, earlier versions in an encoder
        layers = getattr(vit, "layers", None)
        if layers is None:
            layers = getattr(getattr(vit, "encoder", None), "layer", None)
        if layers is None:
            raise ValueError(f"LeGrad cannot find the layers of {type(self.model).__name__} "
                             "(neither vit.layers nor vit.encoder.layer)")
        return list(layers)

    def scores_of_tokens(self, tokens, pooling):
        norm, classifier = self.model.vit.layernorm, self.model.classifier
        return classifier(norm(tokens.mean(dim=1)) if pooling == "mean" else norm(tokens)[:, 0])

    def _projections(self) -> list[Projections]:
        found = [projections(layer) for layer in self.blocks()]
        if any(p is None for p in found):
            raise ValueError(f"vit-explain does not know the query, key and value projections of the attention of "
                             f"{type(self.model).__name__}'s layers (neither q_proj/k_proj/v_proj/o_proj nor "
                             "attention.query/key/value)")
        return found

    def attention_modules(self):
        self._projections()
        return [layer.attention for layer in self.blocks()]

    query_key_taps, value_taps, mixed_taps = (projection_taps(name) for name in ("query_key", "value", "mixed"))

    def residual_taps(self):
        self._projections()
        return [Tap(layer.layernorm_after, "input") for layer in self.blocks()]

    def feature_tap(self):
        return Tap(self.model.classifier, "input")
