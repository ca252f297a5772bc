"""CoLa, vit-explain's own method, against its definition written out per sample."""
import numpy as np
import timm
import torch

from tests.helpers import peaky
from vit_explain import VITCoLa

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def literal_cola(model, x, category):
    """One sample, every block run by hand with its input cut from the blocks before it."""
    tokens = model.patch_embed(x)
    tokens = model._pos_embed(tokens)
    maps = []
    for block in model.blocks:
        inp = tokens.detach().requires_grad_(True)
        attention = block.attn
        normed = block.norm1(inp)
        b, n, c = normed.shape
        q, k, v = attention.qkv(normed).reshape(b, n, 3, attention.num_heads, -1).permute(2, 0, 3, 1, 4)
        a = ((q * attention.scale) @ k.transpose(-2, -1)).softmax(-1)
        a.retain_grad()
        mixed = (a @ v).transpose(1, 2).reshape(b, n, c)
        out = inp + block.ls1(attention.proj(mixed))
        out = out + block.ls2(block.mlp(block.norm2(out)))
        pooled = out.mean(dim=1)                          # mean of all tokens, class token included
        logits = model.head(model.norm(pooled[:, None])[:, 0])
        logits.log_softmax(-1)[0, category].backward()    # the block's contrastive score
        contribution = (a.detach() * a.grad).mean(dim=1).clamp(min=0).mean(dim=1)[0, 1:]
        maps.append(contribution.view(4, 4))
        tokens = out.detach()
    mean = torch.stack(maps).mean(0)
    return ((mean - mean.min()) / (mean.max() - mean.min())).numpy()


def test_cola_equals_its_definition():
    torch.manual_seed(0)
    model = peaky(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3,
                                    embed_dim=48, num_heads=3, num_classes=5)).eval()
    for attn in (b.attn for b in model.blocks):
        attn.fused_attn = False  # the literal version computes the softmax itself
    for i, category in enumerate([0, 3, 4]):
        np.testing.assert_allclose(VITCoLa(model)(X[i:i + 1], category), literal_cola(model, X[i:i + 1], category),
                                   atol=1e-5)
