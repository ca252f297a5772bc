"""Hugging Face transformers models whose output is an embedding, not class logits: `CLIPModel`
and `SiglipModel` (image and text towers: prompt and reference targets) and `Dinov2Model` (a
headless backbone: reference targets).

The vision tower is called with `output_attentions=True` under eager attention, as for ViT
classifiers (`vit_explain.recording.huggingface`); its pooled output, through the model's own
projection, is the image embedding the target scores. SigLIP reads its tokens with an attention
pool (`nn.MultiheadAttention`, a learned probe): its weights are recorded as rollout's last step.
Prompts are tokenized with `tokenizer` (the processor's; `--model hf:` attaches the one saved with
the model as `model.tokenizer`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ...recording import DEFAULT_ATTENTION_LAYER, HuggingFaceAttentionRecorder, Tap, default_target_layer
from .base import Adapter, TokenLayout, check_input_shape, pair, seeded
from .huggingface import Projections, projection_taps, projections


@dataclass(frozen=True)
class Family:
    """How one transformers class is called and read."""
    vision: Callable[[nn.Module], nn.Module]          # model -> its vision tower (returns pooler_output)
    projection: Callable[[nn.Module], nn.Module]      # model -> pooled output -> image embedding
    final: Callable[[nn.Module], nn.Module]           # model -> the norm the pool reads the last tokens through
    layers: Callable[[nn.Module], nn.Module]          # model -> the vision tower's layers
    vision_config: Callable[[object], object]         # config -> the vision tower's config
    num_prefix: int                                   # class token(s) before the patches
    pooling: str                                      # "token" (class token) or "map" (attention pool)
    targets: tuple[str, ...]
    gradcam_layer: str                                # transformers' name for a layer's first norm
    second_norm: str                                  # ... its second norm (its input: the post-attention residual)
    feature: Callable[[nn.Module], object] | None = None  # model -> Tap of the pooled (B, D) features
    fixed_size: bool = True                           # the input must be config.image_size
    pad_to_max_length: bool = False                   # SigLIP's text tower was trained on max-length padding


def _identity(model):
    return nn.Identity()


FAMILIES = {
    "CLIPModel": Family(vision=lambda m: m.vision_model, projection=lambda m: m.visual_projection,
                        final=lambda m: m.vision_model.post_layernorm, layers=lambda m: m.vision_model.encoder.layers,
                        vision_config=lambda c: c.vision_config, num_prefix=1, pooling="token",
                        targets=("prompt", "reference"), gradcam_layer="layer_norm1",
                        second_norm="layer_norm2", feature=lambda m: Tap(m.visual_projection, "input")),
    "SiglipModel": Family(vision=lambda m: m.vision_model, projection=_identity,
                          final=lambda m: m.vision_model.post_layernorm, layers=lambda m: m.vision_model.encoder.layers,
                          vision_config=lambda c: c.vision_config, num_prefix=0, pooling="map",
                          targets=("prompt", "reference"), gradcam_layer="layer_norm1", pad_to_max_length=True,
                          second_norm="layer_norm2", feature=lambda m: Tap(m.vision_model.head, "output")),
    "Dinov2Model": Family(vision=lambda m: m, projection=_identity, final=lambda m: m.layernorm,
                          layers=lambda m: m.encoder.layer, vision_config=lambda c: c, num_prefix=1, pooling="token",
                          targets=("reference",), gradcam_layer="norm1", fixed_size=False,
                          second_norm="norm2"),
}


def family_of(model: nn.Module) -> str | None:
    for cls in type(model).__mro__:
        if cls.__name__ in FAMILIES and cls.__module__.split(".")[0] == "transformers":
            return cls.__name__
    return None


def _pooled(outputs) -> torch.Tensor:
    return outputs if torch.is_tensor(outputs) else outputs.pooler_output


class HuggingFaceEmbeddingAdapter(Adapter):
    """CLIPModel, SiglipModel, Dinov2Model (see the module docstring). tokenizer: turns prompts into
    `input_ids` (a transformers tokenizer or processor); default `model.tokenizer`."""

    def __init__(self, model: nn.Module, tokenizer=None):
        super().__init__(model)
        self.name = family_of(model)
        self.family = FAMILIES[self.name]
        config = self.family.vision_config(model.config)
        self.image_size = tuple(int(v) for v in pair(config.image_size))
        self.patch_size = tuple(int(v) for v in pair(config.patch_size))
        self.channels = int(getattr(config, "num_channels", 3))
        self.tokenizer = tokenizer

    @property
    def targets(self) -> tuple[str, ...]:
        return self.family.targets

    @classmethod
    def matches(cls, model: nn.Module, attention_layer_name: str) -> bool:
        return family_of(model) is not None

    @classmethod
    def for_model(cls, model: nn.Module, attention_layer_name: str) -> "HuggingFaceEmbeddingAdapter":
        if attention_layer_name != DEFAULT_ATTENTION_LAYER:
            raise ValueError(f"attention_layer_name does not apply to Hugging Face models ({type(model).__name__})")
        return cls(model)

    @classmethod
    def example(cls) -> nn.Module:
        """A 2-layer CLIPModel on 32x32 inputs (4x4 patches) with a word-level tokenizer of a few
        words as `model.tokenizer`; needs transformers."""
        import transformers
        config = transformers.CLIPConfig(
            text_config=dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=8, eos_token_id=2, bos_token_id=1,
                             pad_token_id=0),
            vision_config=dict(image_size=32, patch_size=8, hidden_size=48, intermediate_size=96,
                               num_hidden_layers=2, num_attention_heads=3),
            projection_dim=24)
        model = seeded(lambda: transformers.CLIPModel(config))
        with torch.no_grad():  # random-init attention is nearly uniform; sharper makes better tests
            for layer in model.vision_model.encoder.layers:
                layer.self_attn.q_proj.weight.mul_(4.0)
                layer.self_attn.k_proj.weight.mul_(4.0)
        model.tokenizer = word_tokenizer(EXAMPLE_WORDS, max_length=8)
        return model

    @classmethod
    def example_target(cls):
        from ..targets import Prompt
        return Prompt(*EXAMPLE_PROMPTS)

    def check_input(self, input_tensor) -> None:
        if self.family.fixed_size:
            check_input_shape(input_tensor, self.channels, self.image_size, self.patch_size)
        else:
            check_input_shape(input_tensor, self.channels, None, self.patch_size)

    # --- the scores -----------------------------------------------------------------------------
    def _outputs(self, x: torch.Tensor, **kwargs):
        """(scores, attentions) of one call of the vision tower."""
        outputs = self.family.vision(self.model)(pixel_values=x, **kwargs)
        embedding = self.family.projection(self.model)(_pooled(outputs))
        return self.scored(embedding), getattr(outputs, "attentions", None)

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.family.projection(self.model)(_pooled(self.family.vision(self.model)(pixel_values=x)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.scored(self.image_embedding(x))

    def text_embedding(self, texts: list[str]) -> torch.Tensor:
        tokenizer = self.tokenizer or getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"explaining a prompt with {type(self.model).__name__} needs its tokenizer: "
                             "set explainer.adapter.tokenizer (e.g. the processor's tokenizer)")
        padding = "max_length" if self.family.pad_to_max_length else True
        tokens = tokenizer(list(texts), padding=padding, truncation=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        inputs = {key: tokens[key].to(device) for key in ("input_ids", "attention_mask") if key in tokens}
        if self.family.pad_to_max_length:
            inputs.pop("attention_mask", None)  # SigLIP's text tower reads its padding as trained
        return _pooled(self.model.get_text_features(**inputs))

    def prompt_scale(self) -> tuple:
        scale = self.model.logit_scale.detach().exp()
        bias = getattr(self.model, "logit_bias", None)
        return scale, None if bias is None else bias.detach()

    def recorder(self, gradients: bool, reduce=None) -> HuggingFaceAttentionRecorder:
        pool = self.family.vision(self.model).head.attention if self.family.pooling == "map" else None
        return HuggingFaceAttentionRecorder(self.model, gradients=gradients, reduce=reduce, call=self._outputs,
                                            pool=pool)

    def default_gradcam_layer(self) -> str:
        vision = self.family.vision(self.model)
        inner = default_target_layer(vision, self.family.gradcam_layer)
        prefix = next(name for name, module in self.model.named_modules() if module is vision)
        return f"{prefix}.{inner}" if prefix else inner

    def layout(self, image_hw, num_tokens) -> TokenLayout:
        size = self.image_size if self.family.fixed_size else tuple(image_hw)
        grid = (size[0] // self.patch_size[0], size[1] // self.patch_size[1])
        if num_tokens != self.family.num_prefix + grid[0] * grid[1]:
            raise ValueError(f"cannot arrange {num_tokens} tokens of {type(self.model).__name__} into a "
                             f"{grid[0]}x{grid[1]} patch grid")
        return TokenLayout(self.family.num_prefix, self.family.pooling, grid)

    def block_count(self) -> int:
        return len(self.family.layers(self.model))

    def blocks(self) -> list[nn.Module]:
        return list(self.family.layers(self.model))

    def pooled_by_attention(self) -> bool:
        return self.family.pooling == "map"

    def scores_of_tokens(self, tokens, pooling):
        """The pooled, projected embedding of one layer's tokens, scored. "mean": every token
        replaced by the mean of all of them (LeGrad's published pooling), then the model's own
        readout (class token or attention pool); "model": the tokens as they are."""
        if pooling == "mean":
            tokens = tokens.mean(dim=1, keepdim=True).expand_as(tokens)
        normed = self.family.final(self.model)(tokens)
        if self.family.pooling == "map":
            pooled = self.family.vision(self.model).head(normed)
        else:
            pooled = normed[:, 0]
        return self.scored(self.family.projection(self.model)(pooled))

    # --- the parts of every layer (AGCAM, TokenTM, DAAM): separate q/k/v projections, as HF ViT's
    def _projections(self) -> list[Projections]:
        found = [projections(layer) for layer in self.blocks()]
        if any(p is None for p in found):
            raise self.unknown("query, key and value projections")
        return found

    def attention_modules(self):
        self._projections()
        return [getattr(layer, "self_attn", None) or layer.attention for layer in self.blocks()]

    query_key_taps, value_taps, mixed_taps = (projection_taps(name) for name in ("query_key", "value", "mixed"))

    def residual_taps(self):
        self._projections()
        return [Tap(getattr(layer, self.family.second_norm), "input") for layer in self.blocks()]

    def feature_tap(self):
        if self.family.feature is None:
            raise self.unknown("pooled features (a module whose input or output they are)")
        return self.family.feature(self.model)


# The example's tokenizer: a few words, enough to tell prompts apart
EXAMPLE_WORDS = ("a", "photo", "of", "dog", "cat", "car", "tree", "house", "red", "blue")
EXAMPLE_PROMPTS = ("a photo of a dog", "a photo of a cat", "a red car", "a tree", "a blue house")


def word_tokenizer(words, max_length: int):
    """A transformers fast tokenizer over whitespace-separated words, [PAD]=0, [BOS]=1, [EOS]=2,
    [UNK]=3, adding [BOS] and [EOS]: a stand-in for a real tokenizer in tests and examples."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[UNK]": 3, **{w: i + 4 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                        special_tokens=[("[BOS]", 1), ("[EOS]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                                   unk_token="[UNK]", model_max_length=max_length)
