"""The recording room: attention modules, hooks, fused-attention switching, targets and backward.

`AttentionRecorder` serves timm ViT-style models; `CaitAttentionRecorder` timm's CaiT (its
blocks embedded in the [cls, patches] token space, see `cait.py`); `HuggingFaceAttentionRecorder`
transformers models (`output_attentions` with eager attention; transformers is never imported
here). All three share one interface: `with Recorder(model, gradients=...) as rec:
logits = rec.forward(x); rec.attentions; rec.attention_gradients(logits, targets)`.
"""
from .cait import CaitAttentionRecorder, embed_class_attention, embed_self_attention, is_cait
from .huggingface import HuggingFaceAttentionRecorder, is_huggingface_model
from .recorder import DEFAULT_ATTENTION_LAYER, AttentionRecorder, find_attention_modules
from .targets import resolve_targets, target_score

__all__ = ["DEFAULT_ATTENTION_LAYER", "AttentionRecorder", "CaitAttentionRecorder",
           "HuggingFaceAttentionRecorder", "embed_class_attention", "embed_self_attention",
           "find_attention_modules", "is_cait", "is_huggingface_model", "resolve_targets", "target_score"]
