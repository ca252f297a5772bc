"""The math room: pure functions on tensors. No models, hooks or images here."""
from .fusion import (HEAD_FUSIONS, check_discard_ratio, check_head_fusion, compat_discard, discard_lowest,
                     fuse_heads, presoftmax_gradient)
from .grid import readout_rows, scale_to_max, tokens_to_grid
from .rollout import (attention_rollout, class_row, compat_gradient_blocks, compat_gradient_rollout,
                      compat_rollout_rows, gradient_rollout, gradient_rollout_blocks, gradient_weighted_attention,
                      push_rows, push_through_blocks, raw_attention, rollout_block, rollout_prefix_rows)

__all__ = [
    "HEAD_FUSIONS", "check_discard_ratio", "check_head_fusion", "attention_rollout", "compat_gradient_rollout",
    "compat_discard", "discard_lowest", "fuse_heads", "gradient_rollout", "gradient_weighted_attention", "raw_attention", "presoftmax_gradient",
    "compat_rollout_rows", "push_rows", "push_through_blocks", "readout_rows", "rollout_block", "scale_to_max",
    "tokens_to_grid", "rollout_prefix_rows", "gradient_rollout_blocks", "compat_gradient_blocks", "class_row",
]
