"""Record the attention of an attention-pooling head (timm's `AttentionPoolLatent`, SigLIP's "map"
pooling): a learned latent query attends over every output token, and the model reads that one
pooled vector, so the pool's attention row is the last step of rollout (there is no class token).

The pool computes its attention inline (fused, or `softmax(q @ k^T) @ v` without a dropout module
to hook), so nothing inside it can be hooked. A forward hook therefore replays the pool from its
input tokens with its own submodules, keeping the attention: the replay's output, equal to the
module's own to float rounding (tests/test_foundation.py), replaces it, so the recorded weights
lie on the path to the scores and their gradient is dL/dA of the pool.
"""
from __future__ import annotations

import torch
from torch import nn

from .recorder import AttentionRecorder


def is_latent_pool(module) -> bool:
    return type(module).__name__ == "AttentionPoolLatent" and all(
        hasattr(module, name) for name in ("latent", "q", "kv", "proj", "num_heads", "head_dim", "scale"))


def pool_attention(pool: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the pool's output, its attention (B, H, latents, N)) for tokens (B, N, C)."""
    batch, count, _ = tokens.shape
    latents, heads, width = pool.latent.shape[1], pool.num_heads, pool.head_dim
    if getattr(pool, "pos_embed", None) is not None:
        tokens = tokens + pool.pos_embed.unsqueeze(0).to(tokens.dtype)
    query = pool.q(pool.latent.expand(batch, -1, -1)).reshape(batch, latents, heads, width).transpose(1, 2)
    key, value = pool.kv(tokens).reshape(batch, count, 2, heads, width).permute(2, 0, 3, 1, 4).unbind(0)
    query, key = pool.q_norm(query), pool.k_norm(key)
    attention = ((query * pool.scale) @ key.transpose(-2, -1)).softmax(dim=-1)
    mixed = (attention @ value).transpose(1, 2).reshape(batch, latents, heads * width)
    pooled = pool.proj_drop(pool.proj(mixed))
    if pool.mlp is not None:
        pooled = pooled + pool.mlp(pool.norm(pooled))
    if pool.pool == "token":
        pooled = pooled[:, 0]
    elif pool.pool == "avg":
        pooled = pooled.mean(1)
    return pooled, attention


class LatentPoolAttentionRecorder(AttentionRecorder):
    """An `AttentionRecorder` of the blocks that also records the attention pool `pool`:
    `rec.pool_attention` (B, H, latents, N) and `rec.readout` (B, 1, N), the row the model reads
    (heads averaged; the first latent for "token" pooling, their mean for "avg"), both of the
    model's own (last) call of the pool; `rec.pool_attentions` holds every call's, in order (LeGrad
    calls the pool once per block before the model does)."""

    def __init__(self, model: nn.Module, pool: nn.Module, attention_layer_name: str, gradients: bool = False,
                 reduce=None, call=None):
        super().__init__(model, attention_layer_name, gradients=gradients, reduce=reduce, call=call)
        self.pool = pool
        self.pool_attentions: list[torch.Tensor] = []

    def install(self) -> None:
        super().install()
        self._handles.append(self.pool.register_forward_hook(self._replay_pool, with_kwargs=True))

    def _replay_pool(self, module, args, kwargs, output):
        if kwargs.get("attn_mask") is not None or len(args) > 1:
            raise ValueError(f"{type(self.model).__name__}'s attention pool was called with a mask; "
                             "vit-explain records it without one")
        pooled, attention = pool_attention(module, args[0] if args else kwargs["x"])
        self.pool_attentions.append(attention)
        return pooled

    @property
    def pool_attention(self) -> torch.Tensor | None:
        return self.pool_attentions[-1] if self.pool_attentions else None

    @property
    def readout(self) -> torch.Tensor | None:
        if self.pool_attention is None:
            return None
        rows = self.pool_attention.mean(dim=1)
        return rows[:, :1] if self.pool.pool == "token" else rows.mean(dim=1, keepdim=True)

    def reset(self) -> None:
        super().reset()
        self.pool_attentions = []

    def check_recorded(self) -> None:
        super().check_recorded()
        if self.pool_attention is None:
            raise RuntimeError(f"{type(self.model).__name__} never called its attention pool")
