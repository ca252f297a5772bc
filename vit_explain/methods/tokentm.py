"""TokenTM (Wu et al., CVPR 2024): rollout with the token transformation effects."""
from __future__ import annotations

from ..math.tokentm import tokentm_rows
from ..recording import Tap
from .base import readout_for
from .tapped import TappedExplainer


class VITTokenTM(TappedExplainer):
    """TokenTM: the read-out rows of the contribution matrix C_L, over the patches.

    With L(x) the L2 length over the channels, eps = 1e-8, and per block l its input z0, the
    tokens after the attention's residual add z1, its output z2, its attention A and dy/dA
    (y the explained class's logit):
        NECC(a, b)_i = softmax over the tokens i of cos(a_i, b_i)
        w(a, b)_i    = L(b_i) / (L(a_i) + eps) * NECC(a, b)_i
        W_attn = diag(w(z0, z1)),  W_mlp = diag(w(z1, z2))
        U_attn = I + (mean_h A @ W_attn) * mean_h ReLU(dy/dA),  U_mlp = I + W_mlp
        C_0 = diag(L(e)), e the tokens entering the first block (patch embeddings, class token)
        C_l = U_mlp @ U_attn @ C_{l-1}
    The map is the class token's row of C_L (the mean over the patch rows for average-pooled
    models), scaled to its maximum. These are the definitions of the reimplementation the LibraGrad
    authors use (the TokenTM authors published no code). One forward and one backward.

    Defined for timm's standard ViT blocks, Hugging Face ViTs, torchvision ViTs and the
    foundation families (HF CLIP / SigLIP / DINOv2, OpenCLIP); other families
    are refused with a ValueError at construction. `__call__(input_tensor, category_index=None)`
    as for VITAttentionGradRollout.
    """

    def block_taps(self):
        residuals = self.adapter.residual_taps()  # first: it refuses the families without them
        blocks = self.adapter.blocks()
        return {"inputs": [Tap(b, "input") for b in blocks], "residuals": residuals,
                "outputs": [Tap(b, "output") for b in blocks]}

    def relevance_of(self, rec):
        taps = rec.taps
        return tokentm_rows(rec.attentions, rec.gradients, taps["inputs"], taps["residuals"], taps["outputs"],
                            readout_for(rec.attentions, rec.layout))[:, 0]
