"""The math room: pure functions on tensors. No models, hooks or images here."""
from .fusion import (HEAD_FUSIONS, check_discard_ratio, check_head_fusion, discard_lowest, fuse_heads,
                     presoftmax_gradient)
from .grid import readout_rows, scale_to_max, tokens_to_grid
from .rollout import (attention_rollout, compat_attention_rollout, compat_gradient_rollout,
                      gradient_rollout, gradient_weighted_attention, push_rows,
                      raw_attention)

__all__ = [
    "HEAD_FUSIONS", "check_discard_ratio", "check_head_fusion", "attention_rollout", "compat_attention_rollout", "compat_gradient_rollout",
    "discard_lowest", "fuse_heads", "gradient_rollout", "gradient_weighted_attention", "raw_attention", "presoftmax_gradient",
    "push_rows", "readout_rows", "scale_to_max", "tokens_to_grid",
]
