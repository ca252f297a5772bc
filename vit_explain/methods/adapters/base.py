"""The adapter contract: everything an explainer may ask about one family of models.

An adapter is the only owner of model knowledge. The explainers ask it:

* `check_input(x)`: ValueError, naming the expected and the given shape, for an input the
  model cannot take;
* `logits(x)`: the model's scores for the input (the one way to call the model);
* `recorder(gradients, reduce=None)`: a `RecordingSession` with `.forward(x) -> logits`,
  `.attentions` (one (B, H, N, N) tensor per block, in forward order, all over the same N
  tokens, each passed through `reduce` when given) and `.attention_gradients(logits, targets)`
  (dL/dA per block, keyed by block);
* `activation_recorder(layer)` and `default_gradcam_layer()`: Grad-CAM's recording and layer;
* `layout(image_hw, num_tokens)`: the `TokenLayout` (prefix tokens, pooling, patch grid);
* `block_count()`, `blocks_the_readout_skips()`, `check_attention()`;
* `blocks()` and `scores_of_tokens(tokens, pooling)`: the transformer blocks in forward order,
  and the class scores read from one block's output tokens (LeGrad); a ValueError saying why
  for families where a block's tokens cannot be read as scores;
* the parts of every block that AGCAM, TokenTM and DAAM read, as `Tap`s (one per block, in
  forward order): `attention_modules()` (the module whose input AGCAM cuts),
  `query_key_taps()`, `value_taps()`, `mixed_taps()` (the heads' outputs, the output
  projection's input), `residual_taps()` (the tokens after the attention's residual add) and
  `feature_tap()` (the pooled features the classifier reads); a ValueError naming the model for
  families where vit-explain does not know them;
* `targets`: what the model's scores can be (see `vit_explain.methods.targets`): "class" (its
  logits), "prompt" (similarity to text prompts: a text tower) and "reference" (similarity to
  reference images: an embedding output); `image_embedding(x)`, `text_embedding(texts)` and
  `prompt_scale()` for the last two. While a prompt or reference is explained, `scorer` maps
  the image embedding to its scores, and `logits` and `scores_of_tokens` apply it (`scored`);
* `example()`: a small random-init model of the family (no download), on which the contract
  tests (tests/test_contracts.py) run every method of the method table.

The rule every adapter keeps: the model is handed back exactly as it came (training flags,
requires_grad, fused-attention flags, hooks, also when a call raises). The recorders in
`vit_explain.recording` do that; an adapter never patches `forward` or flips a flag itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import contextlib

import torch
from torch import nn

from ...recording import ActivationRecorder, RecordingSession, Tap, default_target_layer


@dataclass(frozen=True)
class TokenLayout:
    num_prefix: int            # class / distillation / register tokens before the patches
    pooling: str               # "token": the classifier reads token 0; "avg": the mean of the patches;
                               # "map": an attention pool reads the tokens with the weights in readout
    grid: tuple[int, int]      # (gh, gw) patch grid
    # (B, 1, N) the attention pool's weights over the tokens (heads averaged), recorded with the
    # blocks' attention: the last step of rollout for "map" pooling; None for the other poolings
    readout: torch.Tensor | None = field(default=None, compare=False)


def pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def check_input_shape(input_tensor, channels: int, img_size: tuple[int, int] | None,
                      patch: tuple[int, int] = (1, 1), note: str = "") -> None:
    """ValueError unless input_tensor is a float (B, channels, H, W) tensor of size img_size
    (any size of at least one patch when img_size is None). note is appended to the message."""
    if img_size:
        expected = f"(B, {channels}, {img_size[0]}, {img_size[1]})"
    else:
        expected = f"(B, {channels}, H, W) with H >= {patch[0]} and W >= {patch[1]}"
    if not torch.is_tensor(input_tensor):
        raise ValueError(f"expected an input tensor of shape {expected}, got {type(input_tensor).__name__}{note}")
    shape = tuple(input_tensor.shape)
    ok = input_tensor.ndim == 4 and shape[1] == channels and shape[0] > 0
    if ok and img_size:
        ok = shape[2:] == tuple(img_size)
    elif ok:
        ok = shape[2] >= patch[0] and shape[3] >= patch[1]
    if not ok:
        raise ValueError(f"expected an input tensor of shape {expected}, got {shape}{note}")
    if not input_tensor.is_floating_point():
        raise ValueError(f"expected a floating-point input tensor, got dtype {input_tensor.dtype}")


class Adapter:
    """Base class; see the module docstring. Subclasses define `matches`, `example` and the
    abstract methods."""

    # Whether the blocks' token-to-token attention can be recorded: the attention methods
    # (rollout, Chefer, raw attention, flow) need it; Grad-CAM does not.
    token_attention = True
    targets: tuple[str, ...] = ("class",)

    def __init__(self, model: nn.Module):
        self.model = model
        self.scorer = None  # embedding (B, D) -> scores (B, K) while a prompt or reference is explained

    @contextlib.contextmanager
    def scoring(self, scorer):
        """The model's scores are scorer(image embedding) inside the block."""
        saved, self.scorer = self.scorer, scorer
        try:
            yield
        finally:
            self.scorer = saved

    def scored(self, output: torch.Tensor) -> torch.Tensor:
        """The model's output (logits, or its embedding) as the explained scores."""
        return output if self.scorer is None else self.scorer(output)

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) the image embedding (models with "reference" or "prompt" in targets)."""
        return self.model(x)

    def text_embedding(self, texts: list[str]) -> torch.Tensor:
        """(P, D) the text embedding of each prompt, in the image embedding's space."""
        raise ValueError(f"{type(self.model).__name__} has no text tower")

    def prompt_scale(self) -> tuple:
        """(scale, bias) the model applies to cosine similarities to make its logits (bias may be None)."""
        return None, None

    @classmethod
    def matches(cls, model: nn.Module, attention_layer_name: str) -> bool:
        """Whether this adapter explains the model (adapters are tried in `ADAPTERS` order)."""
        raise NotImplementedError

    @classmethod
    def for_model(cls, model: nn.Module, attention_layer_name: str) -> "Adapter":
        return cls(model)

    @classmethod
    def example(cls) -> nn.Module:
        """A small random-init model of this family in eval mode, the same on every call."""
        raise NotImplementedError

    @classmethod
    def example_target(cls):
        """What the contract tests explain on `example()`: None (its classes), or a Prompt or
        Reference with 5 prompts or references for a model without classes."""
        return None

    def check_input(self, input_tensor) -> None:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.scored(self.model(x))

    def recorder(self, gradients: bool, reduce=None) -> RecordingSession:
        raise NotImplementedError

    def activation_recorder(self, layer: str) -> ActivationRecorder:
        return ActivationRecorder(self.model, layer, call=self.logits)

    def default_gradcam_layer(self) -> str:
        return default_target_layer(self.model)

    def layout(self, image_hw: tuple[int, int], num_tokens: int) -> TokenLayout:
        raise NotImplementedError

    def block_count(self) -> int:
        raise NotImplementedError

    def check_attention(self) -> None:
        """ValueError when the model's attention cannot be recorded (called when an attention
        explainer is built, so that it fails there and not at the first call)."""

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks in forward order, each over every token (class token included),
        one attention each; ValueError for families without such blocks."""
        raise ValueError(f"LeGrad needs transformer blocks over every token whose outputs the head can read; "
                         f"vit-explain does not know them for {type(self.model).__name__}")

    def scores_of_tokens(self, tokens: torch.Tensor, pooling: str) -> torch.Tensor:
        """(B, classes): one block's output tokens (B, N, C) pooled, through the final norm and the
        head. pooling "mean": the mean of all tokens (LeGrad's published choice), normalised;
        "model": the model's own pooling of the normalised tokens."""
        raise ValueError(f"LeGrad needs the model's final norm and head; vit-explain does not know them "
                         f"for {type(self.model).__name__}")

    def pooled_by_attention(self) -> bool:
        """Whether an attention pool (a learned query over every token, SigLIP's "map") reads the
        last tokens: LeGrad then reads each block through that pool and differentiates the pool's
        attention (`scores_of_tokens` with pooling "model" must call the model's own pool)."""
        return False

    # The parts of every block, one entry per block of blocks(), for AGCAM, TokenTM and DAAM.
    def attention_modules(self) -> list[nn.Module]:
        """The module of each block that takes the (normalised) tokens and returns the attention's
        output: AGCAM cuts its input from the graph."""
        raise self.unknown("attention modules")

    def query_key_taps(self) -> tuple[list[Tap], list[Tap]]:
        """Per block, the queries already multiplied by the attention's scale and the keys, (B, H, N, d)
        each: their product is the attention's pre-softmax scores."""
        raise self.unknown("queries and keys")

    def value_taps(self) -> list[Tap]:
        """Per block, the attention's values, (B, H, N, d)."""
        raise self.unknown("values")

    def mixed_taps(self) -> list[Tap]:
        """Per block, the heads' outputs A @ V side by side, (B, N, H * d): the output projection's input."""
        raise self.unknown("attention outputs")

    def residual_taps(self) -> list[Tap]:
        """Per block, the tokens after the attention's residual add and before the MLP's, (B, N, C)."""
        raise self.unknown("post-attention residual tokens")

    def feature_tap(self) -> Tap:
        """The pooled features the classifier reads, (B, D)."""
        raise self.unknown("pooled features")

    def unknown(self, what: str) -> ValueError:
        return ValueError(f"vit-explain does not know the {what} of the attention blocks of "
                          f"{type(self.model).__name__}")

    def blocks_the_readout_skips(self) -> range:
        """Blocks in which the token the classifier reads takes no part (its row is the identity)."""
        return range(0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"


def seeded(build, seed: int = 0) -> nn.Module:
    """build() under a fixed seed, without disturbing the caller's random state; eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def sharpen_attention(blocks, factor: float = 4.0) -> None:
    """Scale every block's qkv weights: random-init attention is nearly uniform, and examples
    whose maps differ from patch to patch make better tests."""
    with torch.no_grad():
        for block in blocks:
            block.attn.qkv.weight.mul_(factor)
