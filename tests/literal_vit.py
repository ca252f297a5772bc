"""Helpers for the tests of AGCAM, TokenTM and DAAM: a timm ViT block written out (no layer scale,
no drop path: as in the test models), and a timm twin of the Hugging Face example (so that each
family's taps are checked against timm's)."""
import copy
from functools import partial

import timm
import torch
from torch import nn

from vit_explain.methods.adapters import HuggingFaceViTAdapter


def literal_forward(model, x, category, cut_attention_input=False, score=None):
    """One sample through a copy of a timm ViT whose attention is written out here, with the
    explained logit (or score(output), a scalar) back-propagated. Per block: the block's input z0,
    the tokens after the attention's residual add z1, its output z2, the pre-softmax scores
    S = q k^T * scale, the attention A = softmax(S) (with A.grad), the values V and T = A @ V
    (with T.grad). With cut_attention_input the attention works on a detached copy of its input
    (AGCAM)."""
    model = copy.deepcopy(model).eval().requires_grad_(False)
    seen = []

    def attention(attn, tokens):
        if cut_attention_input:
            tokens = tokens.detach().requires_grad_(True)
        batch, count, width = tokens.shape
        q, k, v = attn.qkv(tokens).reshape(batch, count, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * attn.scale
        probs = scores.softmax(dim=-1)
        mixed = (probs @ v).transpose(1, 2).reshape(batch, count, width)
        probs.retain_grad()
        mixed.retain_grad()
        seen[-1].update(scores=scores.detach(), probs=probs, values=v.detach(), mixed=mixed)
        return attn.proj(mixed)

    def block_forward(block, tokens):
        seen.append({"z0": tokens.detach()})
        z1 = tokens + block.attn(block.norm1(tokens))
        z2 = z1 + block.mlp(block.norm2(z1))
        seen[-1].update(z1=z1.detach(), z2=z2.detach())
        return z2

    for block in model.blocks:
        block.attn.forward = partial(attention, block.attn)
        block.forward = partial(block_forward, block)
    logits = model(x.detach().requires_grad_(True))
    (logits[0, category] if score is None else score(logits)).backward()
    return seen, logits.detach()


def timm_twin_of_hf(hf) -> nn.Module:
    """A timm ViT carrying the Hugging Face example's weights (LayerNorm eps as the config's)."""
    config = hf.config
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=config.image_size,
                              patch_size=config.patch_size, depth=config.num_hidden_layers,
                              embed_dim=config.hidden_size, num_heads=config.num_attention_heads,
                              mlp_ratio=config.intermediate_size / config.hidden_size, num_classes=config.num_labels,
                              norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps)).eval()
    vit = hf.vit
    pairs = [(model.patch_embed.proj, vit.embeddings.patch_embeddings.projection), (model.norm, vit.layernorm),
             (model.head, hf.classifier)]
    for block, layer in zip(model.blocks, HuggingFaceViTAdapter(hf).blocks()):
        att = layer.attention
        pairs += [(block.norm1, layer.layernorm_before), (block.norm2, layer.layernorm_after),
                  (block.attn.proj, att.o_proj), (block.mlp.fc1, layer.mlp.fc1), (block.mlp.fc2, layer.mlp.fc2)]
    with torch.no_grad():
        for ours, theirs in pairs:
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        for block, layer in zip(model.blocks, HuggingFaceViTAdapter(hf).blocks()):
            att = layer.attention
            block.attn.qkv.weight.copy_(torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]))
            block.attn.qkv.bias.copy_(torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]))
        model.cls_token.copy_(vit.embeddings.cls_token)
        model.pos_embed.copy_(vit.embeddings.position_embeddings)
    return model
