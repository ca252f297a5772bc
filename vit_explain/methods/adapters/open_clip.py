"""OpenCLIP models (`open_clip_torch`, the `clip` extra) with a ViT image tower: prompt and
reference targets.

The image tower's blocks (`visual.transformer.resblocks`) attend with `nn.MultiheadAttention`,
called with `need_weights=False`; it is recorded as torchvision's ViTs are
(`vit_explain.recording.multihead`), on the image tower only (the text tower has its own). The
image embedding is `encode_image`, the text embedding `encode_text` of the model's tokenizer
(`model.tokenizer` when `--model open_clip:` attached it, else open_clip's default BPE tokenizer,
which ships with the package). Tokens are [class, patches]; the tower reads the class token
(pool_type "tok") or the mean of the patches ("avg").
"""
from __future__ import annotations

import torch
from torch import nn

from ...recording import MultiheadAttentionRecorder, check_multihead, find_multihead_attention
from .base import Adapter, TokenLayout, check_input_shape, pair, seeded
from .torchvision import MultiheadTaps


def is_open_clip(model: nn.Module) -> bool:
    """By the classes' module, so open_clip is never imported to answer."""
    return any(cls.__module__.split(".")[0] == "open_clip" for cls in type(model).__mro__) and hasattr(model, "visual")


class OpenCLIPAdapter(MultiheadTaps, Adapter):
    """open_clip.CLIP and CustomTextCLIP with open_clip's VisionTransformer image tower."""

    targets = ("prompt", "reference")

    def __init__(self, model: nn.Module, tokenizer=None):
        super().__init__(model)
        self.visual = model.visual
        self.tokenizer = tokenizer

    @classmethod
    def matches(cls, model: nn.Module, attention_layer_name: str) -> bool:
        return is_open_clip(model)

    @classmethod
    def example(cls) -> nn.Module:
        """A 2-block OpenCLIP ViT on 32x32 inputs (4x4 patches), a 2-layer text tower over the
        default tokenizer's vocabulary (16 tokens of context); needs open_clip_torch."""
        import open_clip

        def build():
            model = open_clip.CLIP(embed_dim=24, vision_cfg=dict(image_size=32, patch_size=8, width=48, layers=2,
                                                                   head_width=16),
                                   text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2))
            with torch.no_grad():  # random-init attention is nearly uniform; sharper makes better tests
                for _, attention in find_multihead_attention(model.visual):
                    attention.in_proj_weight.mul_(4.0)
            return model
        return seeded(build)

    @classmethod
    def example_target(cls):
        from ..targets import Prompt
        return Prompt("a photo of a dog", "a photo of a cat", "a red car", "a tree", "a blue house")

    def check_input(self, input_tensor) -> None:
        check_input_shape(input_tensor, 3, pair(self.visual.image_size), pair(self.visual.patch_size),
                          note=" (OpenCLIP's image tower takes its image_size only)")

    def check_attention(self) -> None:
        if getattr(self.visual, "transformer", None) is None or getattr(self.visual, "attn_pool", None) is not None:
            raise ValueError(f"vit-explain records OpenCLIP image towers that are ViTs without an attention pool; "
                             f"{type(self.model).__name__}'s is {type(self.visual).__name__}"
                             + (" with an attention pool" if getattr(self.visual, "attn_pool", None) is not None else ""))
        for name, module in find_multihead_attention(self.visual):
            check_multihead(name, module)

    # --- the scores -----------------------------------------------------------------------------
    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.scored(self.image_embedding(x))

    def text_embedding(self, texts: list[str]) -> torch.Tensor:
        tokenizer = self.tokenizer or getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            import open_clip
            context = int(getattr(self.model, "context_length", 77))
            tokens = open_clip.tokenize(list(texts), context_length=context)
        else:
            tokens = tokenizer(list(texts))
        return self.model.encode_text(tokens.to(next(self.model.parameters()).device))

    def prompt_scale(self) -> tuple:
        bias = getattr(self.model, "logit_bias", None)
        return self.model.logit_scale.detach().exp(), None if bias is None else bias.detach()

    def recorder(self, gradients: bool, reduce=None) -> MultiheadAttentionRecorder:
        self.check_attention()
        return MultiheadAttentionRecorder(self.visual, gradients=gradients, reduce=reduce, call=self.logits)

    def default_gradcam_layer(self) -> str:
        return f"visual.transformer.resblocks.{len(self.blocks()) - 1}.ln_1"

    def layout(self, image_hw, num_tokens) -> TokenLayout:
        gh, gw = pair(self.visual.grid_size)
        if num_tokens != 1 + gh * gw:
            raise ValueError(f"cannot arrange {num_tokens} tokens of {type(self.model).__name__} (1 class token) "
                             f"into a {gh}x{gw} patch grid")
        return TokenLayout(1, "avg" if self.visual.pool_type == "avg" else "token", (gh, gw))

    def block_count(self) -> int:
        return len(self.blocks())

    def blocks(self) -> list[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def scores_of_tokens(self, tokens, pooling):
        """One block's tokens through the tower's final norm, pooling and projection, scored.
        "mean": every token replaced by the mean of all of them first (LeGrad's published pooling)."""
        if pooling == "mean":
            tokens = tokens.mean(dim=1, keepdim=True).expand_as(tokens)
        visual = self.visual
        pool = (lambda t: t[:, 1:].mean(dim=1)) if visual.pool_type == "avg" else (lambda t: t[:, 0])
        # final_ln_after_pool: the tower pools first, then normalises (its own order)
        pooled = visual.ln_post(pool(tokens)) if visual.final_ln_after_pool else pool(visual.ln_post(tokens))
        return self.scored(pooled if visual.proj is None else pooled @ visual.proj)

    # --- the parts of every block (AGCAM, TokenTM, DAAM): `MultiheadTaps`, as torchvision's
    def attention_modules(self):
        self.check_attention()
        return [block.attn for block in self.blocks()]

