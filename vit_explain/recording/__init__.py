"""The recording room: attention modules, hooks, fused-attention switching, targets and backward.

Every recorder is a `RecordingSession` (session.py): it hands the model back exactly as it
came, and shares one interface: `with Recorder(model, gradients=...) as rec: logits =
rec.forward(x)`, then what it recorded. `AttentionRecorder` serves timm ViT-style models;
`CaitAttentionRecorder` timm's CaiT (its blocks embedded in the [cls, patches] token space, see
`cait.py`); `HuggingFaceAttentionRecorder` transformers models (`output_attentions` with eager
attention; transformers is never imported here); `ActivationRecorder` one module's output, for
Grad-CAM; `MultiheadAttentionRecorder` every `nn.MultiheadAttention` (torchvision's ViTs, see
`multihead.py`). The attention recorders give `rec.attentions` and `rec.attention_gradients(logits,
targets)`. `BlockScoreRecorder` wraps one of them for LeGrad: per-block scores, each block cut
from the ones before it (`blocks.py`). `TapRecorder` wraps one for the methods that need more than
the attention (AGCAM, TokenTM, DAAM): tensors at named modules, and inputs cut from the graph
(`taps.py`).
"""
from .activations import ActivationRecorder
from .blocks import BlockScoreRecorder
from .cait import CaitAttentionRecorder, is_cait
from .huggingface import HuggingFaceAttentionRecorder, is_huggingface_model
from .modules import (DEFAULT_ATTENTION_LAYER, DEFAULT_TARGET_SUFFIX, LayerError, default_target_layer,
                      find_attention_modules, find_module)
from .latent_pool import LatentPoolAttentionRecorder, is_latent_pool, pool_attention
from .multihead import MultiheadAttentionRecorder, check_multihead, find_multihead_attention
from .recorder import AttentionRecorder
from .session import RecordingSession
from .taps import Tap, TapRecorder
from .targets import resolve_targets, target_score

__all__ = ["DEFAULT_ATTENTION_LAYER", "DEFAULT_TARGET_SUFFIX", "ActivationRecorder", "AttentionRecorder",
           "BlockScoreRecorder", "CaitAttentionRecorder", "HuggingFaceAttentionRecorder", "LatentPoolAttentionRecorder", "LayerError",
           "MultiheadAttentionRecorder", "RecordingSession", "Tap", "TapRecorder", "check_multihead",
           "default_target_layer", "find_attention_modules", "find_module", "find_multihead_attention", "is_cait",
           "is_huggingface_model", "is_latent_pool", "pool_attention", "resolve_targets", "target_score"]
