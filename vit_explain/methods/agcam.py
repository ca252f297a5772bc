"""AGCAM: Attention-Guided CAM (Leem & Seo, AAAI 2024)."""
from __future__ import annotations

from ..math.agcam import agcam_relevance
from .base import readout_for
from .tapped import TappedExplainer


class VITAGCAM(TappedExplainer):
    """AGCAM: sum over blocks and heads of sigmoid(S) * ReLU(dy/dA), the class token's row over
    the patches, where S = q k^T * scale is the block's pre-softmax attention scores, A = softmax(S)
    and y the explained class's logit. As in the authors' code, the input of every block's
    attention is cut from the graph (a detached copy), so the gradient reaches each block's A only
    through the residual stream (dE^(k+1)/dE^k = I through the attention): the attentions of
    later blocks do not pass it on. Average-pooled models read the mean over the patch rows.
    The map is scaled to its maximum (both factors are non-negative). One forward and one backward.

    Defined for timm's standard ViT blocks (ViT, DeiT, registers, average pooling), Hugging Face
    ViTs, torchvision ViTs and the foundation families (HF CLIP / SigLIP / DINOv2, OpenCLIP);
    other families are refused with a ValueError at construction.
    `__call__(input_tensor, category_index=None)` as for VITAttentionGradRollout.
    """

    def block_taps(self):
        queries, keys = self.adapter.query_key_taps()
        return {"queries": queries, "keys": keys}

    def cut_modules(self):
        return self.adapter.attention_modules()

    def relevance_of(self, rec):
        readout = readout_for(rec.attentions, rec.layout)
        return agcam_relevance(rec.taps["queries"], rec.taps["keys"], rec.gradients, readout)[:, 0]
