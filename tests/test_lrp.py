"""CP-LRP / AttnLRP (VITCPLRP): conservation, and agreement with a literal per-layer LRP written
out below in relevance form (no autograd: every layer's relevance is distributed by its rule's
formula), on a small timm ViT with biases, affine LayerNorms, a class token and position
embeddings, in float64."""
import math

import numpy as np
import pytest
import timm
import torch

from tests.helpers import assert_state_equal, model_state
from vit_explain.math.lrp import activation_identity, gamma_rule, layer_norm_identity, linear_op, patch_sums
from vit_explain.methods.lrp import VITCPLRP
from vit_explain.recording.rules import RuleRecorder

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
TARGETS = [0, 3, 1]


def tiny_vit(seed=0, **kwargs):
    torch.manual_seed(seed)
    args = dict(pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3, num_classes=5)
    model = timm.create_model("vit_tiny_patch16_224", **{**args, **kwargs}).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(4)  # peaky attention, as training gives
    return model


def randomised(model, seed=1):
    """Every bias, LayerNorm parameter, class token and position embedding made non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name in ("cls_token", "pos_embed"):
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))
            elif p.ndim == 1:  # LayerNorm weights
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=generator))
    return model


def bias_free(model):
    """Every bias and the LayerNorm shifts zero, no class token or position embedding (the model is
    built with class_token=False, pos_embed='none'): nothing absorbs relevance."""
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model


# ---- the literal LRP, relevance form -------------------------------------------------------------

def lrp_linear(x, weight, bias, relevance, gamma=0.0):
    """x (T, I), weight (O, I), bias (O,) or None, relevance (T, O) -> (T, I).
    z_tij = x_ti w_ji; R_ti = sum_j (z_tij + gamma z_tij^s) / (z_tj + gamma sum_i z_tij^s) R_tj with
    s the sign of the output z_tj (z_tj includes the bias)."""
    z = x[:, None, :] * weight[None]                       # (T, O, I) contributions
    out = z.sum(-1) + (0 if bias is None else bias)
    if gamma:
        boosted = torch.where(out[..., None] > 0, z.clamp(min=0), z.clamp(max=0))
        z = z + gamma * boosted
        out = out + gamma * boosted.sum(-1)
    share = torch.where(out != 0, relevance / torch.where(out != 0, out, torch.ones_like(out)), torch.zeros_like(out))
    return (z * share[..., None]).sum(1)


def layer_norm_matrix(x, weight, eps):
    """LayerNorm with the standard deviation held constant is y_t = x_t M_t + b: M_t (I, O) per token."""
    count = x.shape[-1]
    sd = torch.sqrt(x.var(-1, unbiased=False) + eps)                   # (T,)
    centre = torch.eye(count, dtype=x.dtype) - 1.0 / count              # (I, O)
    return centre[None] * weight[None, None, :] / sd[:, None, None]


def lrp_layer_norm(x, norm, relevance):
    """Identity rule: LRP-0 on the map x -> (x - mean) / sd * w + b (sd constant), token by token."""
    matrices = layer_norm_matrix(x, norm.weight, norm.eps)
    return torch.stack([lrp_linear(x[t:t + 1], matrices[t].T, norm.bias, relevance[t:t + 1])[0]
                        for t in range(x.shape[0])])


def lrp_sum(parts, relevance):
    """z = sum of parts (elementwise): each part's share of the relevance, in proportion."""
    total = sum(parts)
    share = torch.where(total != 0, relevance / torch.where(total != 0, total, torch.ones_like(total)),
                        torch.zeros_like(total))
    return [p * share for p in parts]


def literal_lrp(model, image, target, gamma=0.0, patch_gamma=0.0, attention="cp"):
    """(H, W) pixel relevance of one image (3, H, W) for the target logit of a timm ViT (class token,
    token pooling), the forward and the relevance written out layer by layer."""
    p = model.patch_embed.proj.stride[0]
    channels, height, width = image.shape
    gh, gw = height // p, width // p
    patches = image.reshape(channels, gh, p, gw, p).permute(1, 3, 0, 2, 4).reshape(gh * gw, -1)
    conv = model.patch_embed.proj
    embedded = patches @ conv.weight.reshape(conv.out_channels, -1).T + conv.bias
    pos = model.pos_embed[0]
    tokens = torch.cat([model.cls_token[0], embedded]) + pos
    saved = []
    x = tokens
    for block in model.blocks:
        attn = block.attn
        heads, d = attn.num_heads, attn.head_dim
        h = torch.nn.functional.layer_norm(x, (x.shape[-1],), block.norm1.weight, block.norm1.bias, block.norm1.eps)
        qkv = h @ attn.qkv.weight.T + attn.qkv.bias
        q, k, v = (qkv[:, i * heads * d:(i + 1) * heads * d].reshape(-1, heads, d).transpose(0, 1) for i in range(3))
        scores = (q * attn.scale) @ k.transpose(-1, -2)                 # (H, N, N)
        a = scores.softmax(-1)
        mixed = (a @ v).transpose(0, 1).reshape(-1, heads * d)
        projected = mixed @ attn.proj.weight.T + attn.proj.bias
        x1 = x + projected
        h2 = torch.nn.functional.layer_norm(x1, (x1.shape[-1],), block.norm2.weight, block.norm2.bias, block.norm2.eps)
        f1 = h2 @ block.mlp.fc1.weight.T + block.mlp.fc1.bias
        g = torch.nn.functional.gelu(f1)
        f2 = g @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
        x2 = x1 + f2
        saved.append(dict(x=x, h=h, q=q, k=k, v=v, scores=scores, a=a, mixed=mixed, projected=projected, x1=x1,
                          h2=h2, f1=f1, g=g, f2=f2))
        x = x2
    final = torch.nn.functional.layer_norm(x, (x.shape[-1],), model.norm.weight, model.norm.bias, model.norm.eps)
    pooled = final[:1]
    logits = pooled @ model.head.weight.T + model.head.bias

    # relevance, from the logit down
    start = torch.zeros_like(logits)
    start[0, target] = logits[0, target]
    relevance = torch.zeros_like(final)
    relevance[:1] = lrp_linear(pooled, model.head.weight, model.head.bias, start, gamma)
    relevance = lrp_layer_norm(x, model.norm, relevance)
    for block, s in reversed(list(zip(model.blocks, saved))):
        attn = block.attn
        heads, d = attn.num_heads, attn.head_dim
        r_x1, r_f2 = lrp_sum([s["x1"], s["f2"]], relevance)
        r_g = lrp_linear(s["g"], block.mlp.fc2.weight, block.mlp.fc2.bias, r_f2, gamma)
        r_f1 = r_g                                                         # GELU: identity rule
        r_h2 = lrp_linear(s["h2"], block.mlp.fc1.weight, block.mlp.fc1.bias, r_f1, gamma)
        r_x1 = r_x1 + lrp_layer_norm(s["x1"], block.norm2, r_h2)
        r_x, r_projected = lrp_sum([s["x"], s["projected"]], r_x1)
        r_mixed = lrp_linear(s["mixed"], attn.proj.weight, attn.proj.bias, r_projected, gamma)
        r_out = r_mixed.reshape(-1, heads, d).transpose(0, 1)              # (H, N, d)
        out = s["a"] @ s["v"]
        ratio = torch.where(out != 0, r_out / torch.where(out != 0, out, torch.ones_like(out)), torch.zeros_like(out))
        # contributions a_ij v_jc to out_ic
        r_v = torch.einsum("hij,hjc,hic->hjc", s["a"], s["v"], ratio)
        weight, bias = attn.qkv.weight, attn.qkv.bias
        inner = heads * d
        if attention == "cp":                                              # q, k constant: all through V
            r_qkv = {2: r_v}
        else:                                                              # AttnLRP
            r_v = r_v / 2                                                  # uniform rule on A V
            r_a = torch.einsum("hij,hjc,hic->hij", s["a"], s["v"], ratio) / 2
            # the softmax's rule: R_s = s * (R_A - A * sum_j R_A)
            r_scores = s["scores"] * (r_a - s["a"] * r_a.sum(-1, keepdim=True))
            sc = s["scores"]
            share = torch.where(sc != 0, r_scores / torch.where(sc != 0, sc, torch.ones_like(sc)), torch.zeros_like(sc))
            qs = s["q"] * attn.scale
            r_q = torch.einsum("hid,hjd,hij->hid", qs, s["k"], share) / 2  # uniform rule on q k^T
            r_k = torch.einsum("hid,hjd,hij->hjd", qs, s["k"], share) / 2
            r_qkv = {0: r_q, 1: r_k, 2: r_v}
        r_h = torch.zeros_like(s["h"])
        for part, r in r_qkv.items():
            rows = slice(part * inner, (part + 1) * inner)
            # the gamma rule's sign follows each output neuron; its share of the packed layer
            r_h = r_h + lrp_linear(s["h"], weight[rows], bias[rows], r.transpose(0, 1).reshape(-1, inner), gamma)
        r_x = r_x + lrp_layer_norm(s["x"], block.norm1, r_h)
        relevance = r_x
    r_embedded, _ = lrp_sum([torch.cat([model.cls_token[0], embedded]), pos], relevance)
    r_patches = lrp_linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias, r_embedded[1:],
                           patch_gamma)
    pixels = r_patches.reshape(gh, gw, channels, p, p).permute(2, 0, 3, 1, 4).reshape(channels, height, width)
    return pixels.sum(0), logits[0, target]


@pytest.fixture(scope="module")
def double_model():
    return randomised(tiny_vit()).double()


@pytest.mark.parametrize("gamma, patch_gamma, attention", [(0.0, 0.0, "cp"), (0.25, 0.0, "cp"), (0.1, 0.5, "cp"),
                                                            (0.0, 0.0, "attnlrp"), (0.25, 0.1, "attnlrp")])
def test_equals_literal_lrp(double_model, gamma, patch_gamma, attention):
    explanation = VITCPLRP(double_model, gamma=gamma, patch_gamma=patch_gamma, attention=attention).explain(
        X.double(), TARGETS)
    for i, target in enumerate(TARGETS):
        with torch.no_grad():
            expected, logit = literal_lrp(double_model, X[i].double(), target, gamma, patch_gamma, attention)
        got = explanation.pixel_relevance[i]
        assert got.dtype == torch.float64 and got.shape == (32, 32)
        assert float(explanation.logits[i, target]) == pytest.approx(float(logit), abs=1e-12)
        scale = float(expected.abs().max())
        assert scale > 1e-6 and float(expected.std()) > 0.05 * scale  # a map with something in it
        # measured: within 2e-7 of the peak, the literal's own rounding (it divides by every activation)
        torch.testing.assert_close(got, expected, atol=1e-6 * scale, rtol=0)
        torch.testing.assert_close(explanation.patch_relevance[i], got.reshape(4, 8, 4, 8).sum(dim=(1, 3)))


def test_the_literal_lrp_is_not_the_plain_gradient(double_model):
    """The comparison above means something: the plain gradient x input differs from the rules'."""
    x = X[:1].double().requires_grad_(True)
    frozen = [p.requires_grad_(False) for p in double_model.parameters()]
    double_model(x)[0, TARGETS[0]].backward()
    for p in frozen:
        p.requires_grad_(True)
    plain = (x * x.grad).sum(1)[0].detach()
    with torch.no_grad():
        literal, _ = literal_lrp(double_model, X[0].double(), TARGETS[0])
    assert (plain - literal).abs().max() > 0.1 * literal.abs().max()


# Conservation: without biases, the rules of CP-LRP (and the gamma rule) lose no relevance, so the
# input relevance sums to the explained logit. Measured (16 images, 2 seeds, logits 5e-4 to 0.25,
# gamma off and on): float64 |sum - logit| <= 2e-16, float32 <= 9e-8; the tolerances below are
# 1e-13 and 1e-6 times max(1, |logit|).
CONSERVATION_TOLERANCE = {torch.float64: 1e-13, torch.float32: 1e-6}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma, patch_gamma", [(0.0, 0.0), (0.25, 0.5)])
def test_conservation_without_biases(dtype, gamma, patch_gamma):
    model = bias_free(tiny_vit(seed=3, class_token=False, global_pool="avg", pos_embed="none", qkv_bias=False)).to(dtype)
    explanation = VITCPLRP(model, gamma=gamma, patch_gamma=patch_gamma).explain(X.to(dtype), TARGETS)
    logits = explanation.logits.gather(1, explanation.targets[:, None])[:, 0]
    tolerance = CONSERVATION_TOLERANCE[dtype] * logits.abs().clamp(min=1)
    assert (explanation.pixel_relevance.sum(dim=(1, 2)) - logits).abs().le(tolerance).all()
    assert (explanation.patch_relevance.sum(dim=(1, 2)) - logits).abs().le(tolerance).all()


def test_with_biases_relevance_is_not_conserved(double_model):
    """The biases, class token and position embeddings absorb relevance: the conservation test's
    model needs them gone (a check that the conservation test can fail)."""
    explanation = VITCPLRP(double_model).explain(X.double(), TARGETS)
    logits = explanation.logits.gather(1, explanation.targets[:, None])[:, 0]
    assert (explanation.pixel_relevance.sum(dim=(1, 2)) - logits).abs().max() > 1e-3


def test_forward_values_are_the_model_s():
    model = tiny_vit()
    explanation = VITCPLRP(model, gamma=0.25, patch_gamma=0.25).explain(X, TARGETS)
    with torch.no_grad():
        torch.testing.assert_close(explanation.logits, model(X), atol=0, rtol=0)


def test_masks_are_the_positive_patch_relevance_scaled():
    explanation = VITCPLRP(tiny_vit()).explain(X, TARGETS)
    assert explanation.signed and explanation.pixel_relevance.dtype == torch.float32
    positive = explanation.patch_relevance.clamp(min=0)
    expected = positive / positive.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(explanation.masks, expected)
    assert (explanation.patch_relevance < 0).any()  # signed indeed


def test_rules_are_gone_after_a_call_that_raises():
    model = tiny_vit()
    model.train()
    before = model_state(model)
    explainer = VITCPLRP(model)

    def failing(module, inputs, output):
        raise RuntimeError("rule failed")

    with pytest.raises(RuntimeError, match="rule failed"):
        with RuleRecorder(model, explainer.rules([]) + [(model.blocks[1].mlp.act, failing)]) as rec:
            rec.forward(X)
    assert_state_equal(before, model_state(model))
    with pytest.raises(ValueError):
        explainer.explain(X, 99)
    assert_state_equal(before, model_state(model))
    model.eval()


def test_fused_attention_gives_the_same_relevance():
    model = tiny_vit()
    fused = VITCPLRP(model).explain(X, TARGETS).pixel_relevance
    for block in model.blocks:
        block.attn.fused_attn = not block.attn.fused_attn
    try:
        other = VITCPLRP(model).explain(X, TARGETS).pixel_relevance
    finally:
        for block in model.blocks:
            block.attn.fused_attn = not block.attn.fused_attn
    torch.testing.assert_close(fused, other, atol=1e-5 * float(fused.abs().max()), rtol=0)


@pytest.mark.parametrize("kwargs", [dict(gamma=-0.1), dict(gamma=float("nan")), dict(gamma=True), dict(gamma="1"),
                                    dict(patch_gamma=math.inf), dict(attention="softmax")])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        VITCPLRP(tiny_vit(), **kwargs)


@pytest.mark.parametrize("kwargs, what", [(dict(global_pool="map"), "pooling"), (dict(class_token=False, global_pool=""), "pooling")])
def test_models_the_rules_do_not_cover_are_refused(kwargs, what):
    model = tiny_vit(**kwargs)
    with pytest.raises(ValueError, match=type(model).__name__):
        VITCPLRP(model)


def test_rule_functions_keep_values_and_change_gradients():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    out = torch.nn.functional.gelu(x)
    y = activation_identity(x, out)
    assert torch.equal(y, out)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(x * g, out)  # identity rule: relevance passes unchanged
    w, b = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    norm = torch.nn.functional.layer_norm(x, (6,), w, b, 1e-5)
    y = layer_norm_identity(x, norm, w, 1e-5)
    assert torch.equal(y, norm)
    (g,) = torch.autograd.grad((y * norm.detach()).sum(), x)  # g_y = y
    torch.testing.assert_close((x * g).sum(-1), ((norm - b) * norm).sum(-1).detach())  # the shift b keeps its share
    weight = torch.randn(5, 6, dtype=torch.float64)
    z = torch.nn.functional.linear(x, weight)
    y = gamma_rule(x, z, weight, 0.5, linear_op)
    assert torch.equal(y, z)
    (g,) = torch.autograd.grad((y * z.detach()).sum(), x)
    torch.testing.assert_close((x * g).sum(-1), (z * z).sum(-1).detach())  # conservative without bias


def test_patch_sums():
    pixels = torch.arange(2 * 9 * 10, dtype=torch.float32).reshape(2, 9, 10)
    sums = patch_sums(pixels, (2, 2), (4, 5))       # the last row is beyond the grid
    assert sums.shape == (2, 2, 2)
    assert float(sums[0, 0, 0]) == float(pixels[0, :4, :5].sum())
    padded = patch_sums(pixels, (3, 2), (4, 5))     # a padded grid: zeros for the padding
    assert float(padded[1, 2, 1]) == float(pixels[1, 8:, 5:].sum())


def test_relevance_overlays_are_diverging_and_symmetric():
    explanation = VITCPLRP(tiny_vit()).explain(X[:1], 0)
    image = np.full((32, 32, 3), 255, np.uint8)
    (overlay,) = explanation.relevance_overlays(image, alpha=1.0)
    relevance = explanation.pixel_relevance[0].numpy()
    top, bottom = np.unravel_index(relevance.argmax(), relevance.shape), np.unravel_index(relevance.argmin(),
                                                                                             relevance.shape)
    assert overlay[top][0] > overlay[top][2]        # positive: red
    assert overlay[bottom][2] > overlay[bottom][0]  # negative: blue
    (patch,) = explanation.relevance_overlays(image, level="patch")
    assert patch.shape == (32, 32, 3)
    with pytest.raises(ValueError):
        explanation.relevance_overlays(image, level="token")


def test_hugging_face_vit_conserves_without_biases():
    """Hugging Face ViTs: the same rules under transformers' names; with every bias, the class token
    and the position embeddings zero, the relevance sums to the logit (no path left uncovered)."""
    pytest.importorskip("transformers")
    from vit_explain.methods.adapters import HuggingFaceViTAdapter
    model = HuggingFaceViTAdapter.example().double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("cls_token") or name.endswith("position_embeddings"):
                p.zero_()
    explanation = VITCPLRP(model).explain(X.double(), TARGETS)
    logits = explanation.logits.gather(1, explanation.targets[:, None])[:, 0]
    assert (explanation.pixel_relevance.sum(dim=(1, 2)) - logits).abs().max() <= 1e-13 * max(1, float(logits.abs().max()))
    plain = VITCPLRP(HuggingFaceViTAdapter.example()).explain(X, TARGETS)  # with biases: a signed map, masks in [0, 1]
    assert plain.signed and (plain.patch_relevance < 0).any() and float(plain.masks.max()) == 1.0
