"""Architecture adapters: what an explainer must know about one family of models.

An adapter answers four questions for the explainers (`AttentionExplainer.record`):

* `check_input(x)`: ValueError, naming the expected and the given shape, for an input the
  model cannot take;
* `recorder(gradients, reduce=None)`: a context manager with `.forward(x) -> logits`, `.attentions`
  (one (B, H, N, N) tensor per block, in forward order, all over the same N tokens, each passed
  through `reduce` when given; see `RecordingSession`) and
  `.attention_gradients(logits, targets)` (dL/dA per block, keyed by block), that hands the
  model back exactly as it came;
* `layout(image_hw, num_tokens)`: the `TokenLayout` (prefix tokens, pooling, patch grid);
* `block_count()`: how many attention blocks `.attentions` will hold.

`adapter_for(model, attention_layer_name)` picks one:

* `HuggingFaceViTAdapter`: a transformers `ViTForImageClassification` (the `hf` extra; the
  attention comes from `output_attentions=True` with eager attention);
* `CaitAdapter`: a timm CaiT (`Cait`): self-attention blocks over the patches and
  class-attention blocks, embedded in the [cls, patches] token space
  (see `vit_explain.recording.cait`);
* `TimmAdapter`: every other timm ViT-style model, hooked at `attention_layer_name`
  (default `attn_drop`); also CaiT when a non-default `attention_layer_name` is given.

An explainer's adapter can be replaced, e.g. to let a Hugging Face ViT take other image
sizes: `explainer.adapter = HuggingFaceViTAdapter(model, interpolate_pos_encoding=True)`.
"""
from __future__ import annotations

from typing import ContextManager

from torch import nn

from ..recording import DEFAULT_ATTENTION_LAYER, AttentionRecorder, find_attention_modules
from ..recording.cait import CaitAttentionRecorder, is_cait
from ..recording.huggingface import HuggingFaceAttentionRecorder, is_huggingface_model
from .layout import TokenLayout, _pair, check_input, check_input_shape, pooling_of, token_layout


class Adapter:
    """Base class; see the module docstring."""

    name = "adapter"

    def __init__(self, model: nn.Module):
        self.model = model

    def check_input(self, input_tensor) -> None:
        raise NotImplementedError

    def recorder(self, gradients: bool, reduce=None) -> ContextManager:
        raise NotImplementedError

    def layout(self, image_hw: tuple[int, int], num_tokens: int) -> TokenLayout:
        raise NotImplementedError

    def block_count(self) -> int:
        raise NotImplementedError

    def blocks_the_readout_skips(self) -> range:
        """Blocks in which the token the classifier reads takes no part (its row is the identity)."""
        return range(0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"


class TimmAdapter(Adapter):
    """timm ViT-style models: hooks on the module that receives the post-softmax attention."""

    name = "timm"

    def __init__(self, model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER):
        super().__init__(model)
        find_attention_modules(model, attention_layer_name)  # fail at construction, not at the first call
        self.attention_layer_name = attention_layer_name

    def check_input(self, input_tensor) -> None:
        check_input(self.model, input_tensor)

    def recorder(self, gradients: bool, reduce=None) -> AttentionRecorder:
        return AttentionRecorder(self.model, self.attention_layer_name, gradients=gradients, reduce=reduce)

    def layout(self, image_hw, num_tokens) -> TokenLayout:
        return token_layout(self.model, image_hw, num_tokens)

    def block_count(self) -> int:
        return len(find_attention_modules(self.model, self.attention_layer_name))


class CaitAdapter(TimmAdapter):
    """timm CaiT: 1 class token (joined after the self-attention blocks), token pooling (or
    average pooling with global_pool='avg'), the patch embedding's grid. Every block is
    embedded in the [cls, patches] token space, see `vit_explain.recording.cait`."""

    name = "cait"

    def __init__(self, model: nn.Module):
        if not is_cait(model):
            raise ValueError(f"{type(model).__name__} is not a CaiT model")
        Adapter.__init__(self, model)
        self.attention_layer_name = DEFAULT_ATTENTION_LAYER

    def recorder(self, gradients: bool, reduce=None) -> CaitAttentionRecorder:
        return CaitAttentionRecorder(self.model, gradients=gradients, reduce=reduce)

    def block_count(self) -> int:
        return len(self.model.blocks) + len(self.model.blocks_token_only)

    def blocks_the_readout_skips(self) -> range:
        # the class token joins after the self-attention blocks; average pooling reads the patches
        return range(len(self.model.blocks)) if pooling_of(self.model) == "token" else range(0)


# transformers class name -> prefix tokens before the patches (the classifier reads token 0)
HF_PREFIX_TOKENS = {"ViTForImageClassification": 1}


def _hf_class(model: nn.Module) -> str | None:
    for cls in type(model).__mro__:
        if cls.__name__ in HF_PREFIX_TOKENS and cls.__module__.split(".")[0] == "transformers":
            return cls.__name__
    return None


class HuggingFaceViTAdapter(Adapter):
    """transformers `ViTForImageClassification`: 1 class token, the classifier reads token 0,
    grid = image_size // patch_size from the config. With interpolate_pos_encoding=True the
    model is called with it and takes any size of at least one patch (grid H // p, W // p)."""

    name = "huggingface"

    def __init__(self, model: nn.Module, interpolate_pos_encoding: bool = False):
        super().__init__(model)
        hf_class = _hf_class(model)
        if hf_class is None:
            raise ValueError(
                f"the Hugging Face model {type(model).__name__} is not supported: vit-explain explains "
                f"{', '.join(sorted(HF_PREFIX_TOKENS))} (or use a timm model)")
        self.num_prefix = HF_PREFIX_TOKENS[hf_class]
        config = model.config
        self.image_size = tuple(int(v) for v in _pair(config.image_size))
        self.patch_size = tuple(int(v) for v in _pair(config.patch_size))
        self.channels = int(getattr(config, "num_channels", 3))
        self.interpolate_pos_encoding = bool(interpolate_pos_encoding)

    def check_input(self, input_tensor) -> None:
        if self.interpolate_pos_encoding:
            check_input_shape(input_tensor, self.channels, None, self.patch_size)
        else:
            check_input_shape(input_tensor, self.channels, self.image_size, self.patch_size,
                              note=" (other sizes need HuggingFaceViTAdapter(model, "
                                   "interpolate_pos_encoding=True) as the explainer's adapter)")

    def logits(self, x):
        """The model's logits for pixel values x (no attention recorded)."""
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate_pos_encoding else {}
        return self.model(pixel_values=x, **kwargs).logits

    def recorder(self, gradients: bool, reduce=None) -> HuggingFaceAttentionRecorder:
        return HuggingFaceAttentionRecorder(self.model, gradients=gradients, reduce=reduce,
                                            interpolate_pos_encoding=self.interpolate_pos_encoding)

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


def adapter_for(model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER) -> Adapter:
    """The adapter for this model (see the module docstring); ValueError when there is none."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if is_huggingface_model(model):
        if attention_layer_name != DEFAULT_ATTENTION_LAYER:
            raise ValueError(
                f"attention_layer_name does not apply to Hugging Face models ({type(model).__name__}): "
                "their attention is read from output_attentions; leave it at its default")
        return HuggingFaceViTAdapter(model)
    if attention_layer_name == DEFAULT_ATTENTION_LAYER and is_cait(model):
        return CaitAdapter(model)
    return TimmAdapter(model, attention_layer_name)
