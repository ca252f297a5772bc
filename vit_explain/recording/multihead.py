"""Record the attention of `torch.nn.MultiheadAttention` (torchvision's ViTs, and others built on it).

Callers such as torchvision's `EncoderBlock` ask for `need_weights=False`, so the attention is
never returned. While recording, a forward pre-hook asks every `nn.MultiheadAttention` for its
per-head weights instead (`need_weights=True, average_attn_weights=False`: (B, H, L, S)
post-softmax probabilities), and a forward hook hands the caller what it asked for (the weights
averaged, per head, or none).

The weights MHA returns are a view of its softmax taken after `A @ V` was computed: the output
does not depend on them, so dL/d(weights) would be zero. With gradients, the forward hook
therefore replays the attention's last steps from the returned weights, out_proj(A @ V) with V
projected from the module's value input, and hands that to the caller in place of the module's
own output: the recorded A then lies on the path from input to logits, and dL/dA is the gradient
of the score with respect to the attention. The replayed values equal the module's own to float
rounding. Without gradients nothing is replayed: the module's own output goes on.

Supported: batched inputs, batch_first True or False, packed or separate q/k/v projection
weights, attention and key-padding masks (the weights already hold them). Refused with a
ValueError: `bias_k`/`bias_v` and `add_zero_attn` (they append a key the caller's value lacks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .session import RecordingSession

# nn.MultiheadAttention.forward(query, key, value, key_padding_mask, need_weights, attn_mask,
# average_attn_weights, is_causal): positions of the two flags the recorder overrides
NEED_WEIGHTS, AVERAGE = 4, 6


def find_multihead_attention(model: nn.Module) -> list[tuple[str, nn.MultiheadAttention]]:
    """(name, module) of every nn.MultiheadAttention, in registration order (block order for
    torchvision's ViTs)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]


def check_multihead(name: str, module: nn.MultiheadAttention) -> None:
    """ValueError for an attention whose weights cannot be replayed as out_proj(A @ V)."""
    if module.bias_k is not None or module.bias_v is not None or module.add_zero_attn:
        raise ValueError(f"the attention {name!r} appends a key and value (bias_k/bias_v or add_zero_attn); "
                         "vit-explain records nn.MultiheadAttention without them")


def _value_projection(module: nn.MultiheadAttention) -> tuple[torch.Tensor, torch.Tensor | None]:
    e = module.embed_dim
    weight = module.in_proj_weight[2 * e:] if module._qkv_same_embed_dim else module.v_proj_weight
    bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * e:]
    return weight, bias


def _flag(args: list, kwargs: dict, position: int, name: str, value: bool) -> bool:
    """Set a forward flag, positional or keyword; return what the caller had asked for."""
    if len(args) > position:
        asked, args[position] = args[position], value
    else:
        asked, kwargs[name] = kwargs.get(name, True), value
    return bool(asked)


class MultiheadAttentionRecorder(RecordingSession):
    """Context manager: `with MultiheadAttentionRecorder(model, gradients=True) as rec: logits = rec.forward(x)`.

    rec.attentions holds one (B, H, L, S) post-softmax tensor per attention call, in forward
    order (or what `reduce` made of it); rec.attention_gradients(logits, targets) returns dL/dA
    for each. The model is handed back as it came: hooks, training flags, requires_grad.
    """

    def __init__(self, model: nn.Module, gradients: bool = False, reduce=None, call=None):
        super().__init__(model, gradients=gradients, reduce=reduce, call=call)
        self.modules = find_multihead_attention(model)
        if not self.modules:
            raise ValueError(f"{type(model).__name__} has no nn.MultiheadAttention module")
        for name, module in self.modules:
            check_multihead(name, module)
        self.attentions: list[torch.Tensor] = []
        self._asked: dict[nn.Module, tuple[bool, bool]] = {}  # what each caller asked for

    def install(self) -> None:
        for _, module in self.modules:
            self._handles.append(module.register_forward_pre_hook(self._ask_for_weights, with_kwargs=True))
            # first of the forward hooks: hooks the caller had put on the module see what it asked for
            self._handles.append(module.register_forward_hook(self._record, with_kwargs=True, prepend=True))

    def _ask_for_weights(self, module, args, kwargs):
        args, kwargs = list(args), dict(kwargs)
        need = _flag(args, kwargs, NEED_WEIGHTS, "need_weights", True)
        average = _flag(args, kwargs, AVERAGE, "average_attn_weights", False)
        self._asked[module] = (need, average)
        tokens = args[0] if len(args) >= 3 and args[0] is args[1] is args[2] else None
        if module.batch_first and torch.is_tensor(tokens) and tokens.ndim == 3:
            # Inside, a batch_first module projects its input transposed to (N, B, E): a strided
            # view of a batch-major tensor, whose product with frozen weights rounds differently
            # for different batch sizes (1e-6 here, 1e-5 in some maps). The same values stored
            # token-major make that view contiguous: a batch then gives its samples' weights.
            args[0] = args[1] = args[2] = tokens.transpose(0, 1).contiguous().transpose(0, 1)
        return tuple(args), kwargs

    def _record(self, module, args, kwargs, output):
        need, average = self._asked.pop(module)
        attn_output, weights = output
        if weights is None or weights.ndim != 4:
            raise ValueError(f"{type(self.model).__name__}'s nn.MultiheadAttention was called with unbatched "
                             "inputs; vit-explain records batched attention only")
        if self.gradients:
            value = args[2] if len(args) > 2 else kwargs["value"]
            attn_output = self._replay(module, weights, value)
        self.attentions.append(self.reduced(weights))
        return attn_output, (weights.mean(dim=1) if average else weights) if need else None

    @staticmethod
    def _replay(module: nn.MultiheadAttention, weights: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """out_proj(A @ V): the module's output, computed from the recorded weights."""
        if not module.batch_first:
            value = value.transpose(0, 1)                     # (S, B, E) -> (B, S, E)
        batch, source, embed = value.shape
        heads = module.num_heads
        v = F.linear(value, *_value_projection(module))
        v = v.reshape(batch, source, heads, module.head_dim).transpose(1, 2)      # (B, H, S, d)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, weights.shape[-2], module.embed_dim)
        out = module.out_proj(mixed)
        return out if module.batch_first else out.transpose(0, 1)

    def reset(self) -> None:
        self.attentions, self._asked = [], {}

    def check_recorded(self) -> None:
        if not self.attentions:
            raise RuntimeError(f"{type(self.model).__name__} never called its nn.MultiheadAttention modules "
                               f"({self.modules[0][0]}, ...) during the forward pass")

    def attention_gradients(self, logits: torch.Tensor, targets) -> list[torch.Tensor]:
        """dL/dA for every recorded attention, paired by position (block), not by arrival."""
        return self.gradients_wrt(logits, targets, self.attentions)
