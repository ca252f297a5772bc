"""The recording room: attention modules, hooks, fused-attention switching, targets and backward."""
from .recorder import (DEFAULT_ATTENTION_LAYER, AttentionRecorder, find_attention_modules,
                       resolve_targets, target_score)

__all__ = ["DEFAULT_ATTENTION_LAYER", "AttentionRecorder", "find_attention_modules",
           "resolve_targets", "target_score"]
