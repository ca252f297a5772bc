"""Record CaiT's attention (timm `Cait`) in the common (B, H, 1 + P, 1 + P) token space.

CaiT (Touvron et al., "Going deeper with Image Transformers", 2021) has two kinds of blocks:

* `model.blocks`: self-attention (`TalkingHeadAttn`) over the P patch tokens only; the class
  token does not exist yet. Talking heads mix the heads before *and after* the softmax::

      attn = proj_l(q @ k^T)            # pre-softmax head mixing
      attn = attn.softmax(-1)           # <- the true attention, rows sum to 1
      attn = proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)   # post-softmax head mixing
      attn = attn_drop(attn)            # a mixture whose rows do NOT sum to 1

  so `attn_drop` sees a head mixture, not an attention distribution. The recorder takes the
  true softmax from the input of `proj_w` (a forward pre-hook; that input is the softmax
  permuted to (B, P, P, H), permuted back here) and dL/d(softmax) from the same tensor.
  TalkingHeadAttn has no fused path.
* `model.blocks_token_only`: class attention (`ClassAttn`): only the class token queries,
  over [class token, patches]; the patches are not updated. Its fused flag is switched off
  while recording and `attn_drop` receives the (B, H, 1, 1 + P) attention.

To let the generic rollout / gradient rollout / Chefer math run unchanged, every block is
EMBEDDED into the 1 + P token space [cls, patches] (per head, so head fusion is unaffected):

* self-attention block -> A with A[0, 0] = 1, the rest of row 0 and column 0 zero (the class
  token is untouched: it does not exist yet), and A[1:, 1:] = the recorded P x P softmax;
  its gradient is 0 in row 0 and column 0 (A[0, 0] is a constant), dL/dA elsewhere;
* class-attention block -> A with row 0 = the recorded class-token attention over
  [cls, patches] and rows 1: = identity (patch tokens pass through unchanged); its gradient
  is dL/dA in row 0 and 0 in rows 1:.

Rollout's residual step (A + I) / 2 then keeps the class token as it is through the
self-attention blocks and the patches as they are through the class-attention blocks. A
discard ratio counts over all (1 + P)^2 entries of the embedded matrix, the structural zeros
included (2P of them in a self-attention block, P^2 - P in a class-attention block), so it
removes slightly fewer real self-attention entries than the same ratio on a ViT, and at the
usual ratios (<= 0.9) nothing of a class-attention row.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .session import RecordingSession


def is_cait(model: nn.Module) -> bool:
    """A timm CaiT-style model: talking-heads self-attention `blocks` (with `attn.proj_w`) and
    class-attention `blocks_token_only`."""
    blocks = getattr(model, "blocks", None)
    token_blocks = getattr(model, "blocks_token_only", None)
    if not isinstance(blocks, nn.Module) or not len(blocks) or not isinstance(token_blocks, nn.Module):
        return False
    return all(isinstance(getattr(getattr(b, "attn", None), "proj_w", None), nn.Module) for b in blocks) and \
        all(isinstance(getattr(getattr(b, "attn", None), "attn_drop", None), nn.Module) for b in token_blocks)


def embed_self_attention(attention: torch.Tensor, corner: float = 1.0) -> torch.Tensor:
    """(B, H, P, P) patch self-attention -> (B, H, 1 + P, 1 + P) with the class token's row and
    column zero except [0, 0] = corner (1 for attention: the class token is untouched; 0 for a
    gradient)."""
    batch, heads, p, _ = attention.shape
    out = attention.new_zeros(batch, heads, p + 1, p + 1)
    out[:, :, 1:, 1:] = attention
    out[:, :, 0, 0] = corner
    return out


def embed_class_attention(attention: torch.Tensor, diagonal: float = 1.0) -> torch.Tensor:
    """(B, H, 1, 1 + P) class-token attention -> (B, H, 1 + P, 1 + P): row 0 is the class
    token's attention, rows 1: are diagonal * identity (1 for attention: patches pass through
    unchanged; 0 for a gradient)."""
    batch, heads, _, n = attention.shape
    eye = torch.eye(n, dtype=attention.dtype, device=attention.device) * diagonal
    out = eye.expand(batch, heads, n, n).clone()
    out[:, :, 0, :] = attention[:, :, 0, :]
    return out


class CaitAttentionRecorder(RecordingSession):
    """Context manager: `with CaitAttentionRecorder(model, gradients=True) as rec: logits = rec.forward(x)`.

    rec.attentions: one (B, H, 1 + P, 1 + P) tensor per block (self-attention blocks, then
    class-attention blocks), embedded as the module docstring describes;
    rec.attention_gradients(logits, targets): dL/dA for each, embedded the same way;
    rec.self_attentions (B, H, P, P) and rec.class_attentions (B, H, 1, 1 + P): as recorded
    (rec.proj_w_inputs: the self-attention as the autograd graph holds it, (B, P, P, H)).
    The model is handed back as it came: training flags, fused flags, requires_grad, hooks.
    """

    def __init__(self, model: nn.Module, gradients: bool = False, reduce=None, call=None):
        if not is_cait(model):
            raise ValueError(f"{type(model).__name__} is not a CaiT model (talking-heads `blocks` with "
                             "`attn.proj_w` and class-attention `blocks_token_only`)")
        super().__init__(model, gradients=gradients, reduce=reduce, call=call)
        self.self_modules = [block.attn for block in model.blocks]
        self.class_modules = [block.attn for block in model.blocks_token_only]
        self._self_raw: dict[int, torch.Tensor] = {}    # (B, P, P, H): proj_w's input, in the graph
        self._class_raw: dict[int, torch.Tensor] = {}   # (B, H, 1, 1 + P): attn_drop's output
        self._embedded: list[torch.Tensor] | None = None

    def install(self) -> None:
        for module in self.class_modules:
            self.unfuse(module)
        for index, module in enumerate(self.self_modules):
            self._handles.append(module.proj_w.register_forward_pre_hook(partial(self._record_self, index)))
        for index, module in enumerate(self.class_modules):
            self._handles.append(module.attn_drop.register_forward_hook(partial(self._record_class, index)))

    def _record_self(self, index, module, args) -> None:
        self._self_raw[index] = args[0]

    def _record_class(self, index, module, args, output) -> None:
        self._class_raw[index] = output

    def reset(self) -> None:
        self._self_raw, self._class_raw, self._embedded = {}, {}, None

    def check_recorded(self) -> None:
        missing = [f"blocks.{i}.attn.proj_w" for i in range(len(self.self_modules)) if i not in self._self_raw]
        missing += [f"blocks_token_only.{i}.attn.attn_drop" for i in range(len(self.class_modules))
                    if i not in self._class_raw]
        if missing:
            raise RuntimeError(f"{type(self.model).__name__} never called {', '.join(missing[:3])}"
                               f"{', ...' if len(missing) > 3 else ''} during the forward pass; "
                               "this CaiT differs from the one vit-explain knows")
        self._check_softmax()

    def _check_softmax(self) -> None:
        """The input of proj_w must be the softmax (rows sum to 1): a guard against timm changes.
        The tolerance covers rounding over ~200 summed terms: float32 sums land within 1e-5 of 1,
        half precision within ~1e-2; a mixture of heads (what attn_drop sees) is off by far more."""
        tolerance = 1e-3 if self._self_raw[0].dtype in (torch.float32, torch.float64) else 3e-2
        for index, raw in self._self_raw.items():
            sums = raw.detach().float().sum(dim=2)       # (B, Pq, Pk, H): the softmax ran over Pk
            if not torch.allclose(sums, torch.ones_like(sums), atol=tolerance, rtol=0):
                raise RuntimeError(f"the input of blocks.{index}.attn.proj_w is not a softmax (its rows do not "
                                   "sum to 1): this timm version's TalkingHeadAttn differs from the one "
                                   "vit-explain knows")

    @property
    def proj_w_inputs(self) -> list[torch.Tensor]:
        """(B, P, P, H) the tensors each self-attention block's proj_w received: the softmax,
        permuted; these (not a permuted copy) are in the autograd graph."""
        return [self._self_raw[i] for i in range(len(self._self_raw))]

    @property
    def self_attentions(self) -> list[torch.Tensor]:
        """(B, H, P, P) true softmax of every self-attention block, in block order."""
        return [self._self_raw[i].permute(0, 3, 1, 2) for i in range(len(self._self_raw))]

    @property
    def class_attentions(self) -> list[torch.Tensor]:
        """(B, H, 1, 1 + P) class-token attention of every class-attention block, in block order."""
        return [self._class_raw[i] for i in range(len(self._class_raw))]

    @property
    def attentions(self) -> list[torch.Tensor]:
        """Every block embedded in the (1 + P)-token space, in forward order (detached), then
        reduced if the recorder was given `reduce`."""
        if self._embedded is None:
            embedded = [embed_self_attention(a.detach()) for a in self.self_attentions] + \
                       [embed_class_attention(a.detach()) for a in self.class_attentions]
            self._embedded = [self.reduced(a) for a in embedded]
        return self._embedded

    def attention_gradients(self, logits: torch.Tensor, targets) -> list[torch.Tensor]:
        """dL/dA for every block, keyed by block (not by arrival), embedded like `attentions`.

        L is the sum over the batch of each sample's target logit; samples do not interact.
        """
        grads = self.gradients_wrt(logits, targets, self.proj_w_inputs + self.class_attentions)
        count = len(self._self_raw)
        return [embed_self_attention(g.permute(0, 3, 1, 2), corner=0.0) for g in grads[:count]] + \
               [embed_class_attention(g, diagonal=0.0) for g in grads[count:]]
