"""CaiT: talking-heads self-attention over the patches, then class attention, in one token space.

Most tests use cait_xxs24_224's architecture (24 self-attention + 2 class-attention blocks)
built at img_size=64 (4x4 patches) so they run quickly on a CPU; one runs at 224.
"""
import numpy as np
import pytest
import timm
import torch

from tests.helpers import assert_state_equal, literal_rollout, model_state, peaky
from vit_explain import VITAttentionGradRollout, VITAttentionRollout, VITGradWeightedAttention, VITRawAttention
from vit_explain.methods.adapters import CaitAdapter, TimmAdapter, adapter_for
from vit_explain.recording import CaitAttentionRecorder

SELF, CLASS, HEADS = 24, 2, 4
X = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(13))


def build_cait(img_size=64):
    torch.manual_seed(0)
    model = timm.create_model("cait_xxs24_224", pretrained=False, img_size=img_size).eval()
    # Random init attends almost uniformly and CaiT's layer scale starts at 1e-5, which
    # leaves the gradients at rounding level: sharpen both, as training does.
    peaky(model)  # the self-attention blocks' qkv; the class-attention blocks have q and k instead
    with torch.no_grad():
        for block in model.blocks_token_only:
            block.attn.q.weight.mul_(4)
            block.attn.k.weight.mul_(4)
        for block in [*model.blocks, *model.blocks_token_only]:
            block.gamma_1.fill_(0.1)
            block.gamma_2.fill_(0.1)
        model.cls_token.normal_(std=0.5)
        model.head.weight.mul_(100)
    return model


@pytest.fixture(scope="module")
def cait():
    return build_cait()


def recorded(model, x, gradients=False, categories=None):
    with CaitAttentionRecorder(model, gradients=gradients) as rec:
        logits = rec.forward(x)
        grads = rec.attention_gradients(logits, categories) if gradients else None
    return rec, logits, grads


def test_adapter_choice(cait):
    assert isinstance(adapter_for(cait), CaitAdapter)
    assert type(adapter_for(cait, "attn.attn_drop")) is TimmAdapter  # a named layer: the user's choice
    assert VITRawAttention(cait).attention_block_count() == SELF + CLASS
    with pytest.raises(ValueError, match="layer 26 is out of range: the model has 26 attention blocks"):
        VITRawAttention(cait, layer=26)
    # the class token joins after the self-attention blocks: its attention there would be an empty map
    with pytest.raises(ValueError, match=f"layer 3 of Cait is a self-attention block .* from layer {SELF} to"):
        VITRawAttention(cait, layer=3)
    assert VITRawAttention(cait, layer=SELF).layer == SELF


def test_average_pooled_cait_shows_raw_attention_of_the_patch_blocks(cait):
    pooled = build_cait()
    pooled.global_pool = "avg"  # the classifier reads the mean of the patches, there from block 0
    mask = VITRawAttention(pooled, layer=3)(X[:1])
    rec, _, _ = recorded(pooled, X[:1])
    patches = rec.self_attentions[3][0].mean(0).mean(0).view(4, 4)  # heads, then the patch rows
    np.testing.assert_allclose(mask, (patches / patches.max()).numpy(), atol=1e-6)


def test_recorded_tensors_are_the_true_softmax_and_the_class_attention(cait):
    """Recomputed from each block's input with timm's own formulas (a transcription of cait.py)."""
    inputs, mixtures = {}, {}
    handles = [cait.blocks[5].attn.register_forward_pre_hook(lambda m, a: inputs.__setitem__("self", a[0])),
               cait.blocks[5].attn.attn_drop.register_forward_hook(lambda m, a, o: mixtures.__setitem__("self", o)),
               cait.blocks_token_only[1].attn.register_forward_pre_hook(lambda m, a: inputs.__setitem__("cls", a[0]))]
    try:
        rec, _, _ = recorded(cait, X[:2])
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        attn, x = cait.blocks[5].attn, inputs["self"]
        b, n, c = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        scores = (qkv[0] * attn.scale) @ qkv[1].transpose(-2, -1)
        softmax = attn.proj_l(scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).softmax(-1)
        cls_attn, u = cait.blocks_token_only[1].attn, inputs["cls"]
        q = cls_attn.q(u[:, 0]).reshape(b, 1, HEADS, c // HEADS).permute(0, 2, 1, 3) * cls_attn.scale
        k = cls_attn.k(u).reshape(b, n + 1, HEADS, c // HEADS).permute(0, 2, 1, 3)
        class_softmax = (q @ k.transpose(-2, -1)).softmax(-1)
    torch.testing.assert_close(rec.self_attentions[5], softmax)
    torch.testing.assert_close(rec.class_attentions[1], class_softmax)
    # what attn_drop sees in a self-attention block is a head mixture, not a distribution
    assert (mixtures["self"].sum(-1) - 1).abs().max() > 0.01

    assert len(rec.attentions) == SELF + CLASS
    assert all(a.shape == (2, HEADS, 17, 17) for a in rec.attentions)
    embedded = rec.attentions[5]
    torch.testing.assert_close(embedded[:, :, 1:, 1:], softmax)
    assert torch.all(embedded[:, :, 0, 0] == 1) and embedded[:, :, 0, 1:].abs().max() == 0
    assert embedded[:, :, 1:, 0].abs().max() == 0
    embedded = rec.attentions[SELF + 1]
    torch.testing.assert_close(embedded[:, :, 0:1, :], class_softmax)
    assert torch.equal(embedded[:, :, 1:, :], torch.eye(17)[1:].expand(2, HEADS, 16, 17))
    torch.testing.assert_close(torch.stack(rec.attentions).sum(-1), torch.ones(SELF + CLASS, 2, HEADS, 17))


def hand_rollout(self_attentions, class_attentions, sample):
    """The documented construction, literally: float64, one sample, full 17 x 17 products, mean fusion."""
    n = self_attentions[0].shape[-1] + 1
    eye = torch.eye(n, dtype=torch.float64)
    result = eye.clone()
    for a in self_attentions:                     # the class token does not exist yet: untouched
        fused = torch.zeros(n, n, dtype=torch.float64)
        fused[0, 0] = 1
        fused[1:, 1:] = a[sample].double().mean(0)
        m = (fused + eye) / 2
        result = (m / m.sum(-1, keepdim=True)) @ result
    for a in class_attentions:                    # patches pass through unchanged
        fused = eye.clone()
        fused[0] = a[sample, :, 0].double().mean(0)
        m = (fused + eye) / 2
        result = (m / m.sum(-1, keepdim=True)) @ result
    return result


def test_rollout_equals_the_documented_construction(cait):
    rec, _, _ = recorded(cait, X[:2])
    masks = VITAttentionRollout(cait, head_fusion="mean", discard_ratio=0.0)(X[:2])
    for sample in range(2):
        row = hand_rollout(rec.self_attentions, rec.class_attentions, sample)[0, 1:].view(4, 4)
        np.testing.assert_allclose(masks[sample], (row / row.max()).numpy(), atol=1e-5)
    # with a discard, the generic literal rollout over the embedded 17 x 17 matrices
    masks = VITAttentionRollout(cait, head_fusion="max", discard_ratio=0.5)(X[:2])
    for sample in range(2):
        row = literal_rollout(torch.stack([a[sample] for a in rec.attentions]), "max", 0.5)[0, 1:].view(4, 4)
        np.testing.assert_allclose(masks[sample], (row / row.max()).numpy(), atol=1e-5)


def test_gradients_are_keyed_by_block(cait):
    """dL/dA of a block, against autograd on that block's recorded tensor alone."""
    with CaitAttentionRecorder(cait, gradients=True) as rec:
        logits = rec.forward(X[:2])
        score = logits[0, 3] + logits[1, 4]
        expected = {k: torch.autograd.grad(score, rec.proj_w_inputs[k], retain_graph=True)[0].permute(0, 3, 1, 2)
                    for k in (0, SELF - 1)}
        expected_class = torch.autograd.grad(score, rec.class_attentions[0], retain_graph=True)[0]
        grads = rec.attention_gradients(logits, [3, 4])
    assert all(g.shape == (2, HEADS, 17, 17) for g in grads) and len(grads) == SELF + CLASS
    for k in (0, SELF - 1):
        torch.testing.assert_close(grads[k][:, :, 1:, 1:], expected[k])
        assert grads[k][:, :, 0].abs().max() == 0 and grads[k][:, :, :, 0].abs().max() == 0
    torch.testing.assert_close(grads[SELF][:, :, 0:1], expected_class)
    assert grads[SELF][:, :, 1:].abs().max() == 0
    assert grads[0].abs().sum() != grads[SELF - 1].abs().sum()
    assert expected_class.abs().max() > 0 and expected[0].abs().max() > 0


EXPLAINERS = {
    "rollout": lambda m: VITAttentionRollout(m, head_fusion="max", discard_ratio=0.9),
    "grad-rollout": lambda m: VITAttentionGradRollout(m, discard_ratio=0.9),
    "chefer": lambda m: VITGradWeightedAttention(m),
    "raw": lambda m: VITRawAttention(m),
}


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_explainers_batch_equals_singles_and_model_untouched(cait, name):
    """...with the singles run inside inference_mode, which gradient methods must work in."""
    explainer = EXPLAINERS[name](cait)
    categories = [1, 5, 9, 998]
    before = model_state(cait)
    batch = explainer(X, categories)
    assert batch.shape == (4, 4, 4) and batch.dtype == np.float32 and np.isfinite(batch).all()
    np.testing.assert_allclose(batch.max(axis=(1, 2)), 1.0, atol=1e-6)
    with torch.inference_mode():
        singles = np.stack([explainer(X[i:i + 1], categories[i]) for i in range(4)])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    assert_state_equal(before, model_state(cait))
    assert [b.attn.fused_attn for b in cait.blocks_token_only] == [True, True]


@pytest.mark.parametrize("name", ["grad-rollout", "chefer"])
def test_gradient_methods_are_class_specific(cait, name):
    explainer = EXPLAINERS[name](cait)
    first, second = explainer(X[:1], 1), explainer(X[:1], 500)
    assert np.abs(first - second).max() > 1e-2


def test_raw_attention_is_the_last_class_attention(cait):
    rec, _, _ = recorded(cait, X[:1])
    row = rec.class_attentions[-1][0, :, 0, 1:]          # heads x patches
    mean = row.mean(0).view(4, 4)
    np.testing.assert_allclose(VITRawAttention(cait)(X[:1]), (mean / mean.max()).numpy(), atol=1e-6)
    heads = VITRawAttention(cait).explain_heads(X[:1]).masks[0]
    torch.testing.assert_close(heads, row.view(HEADS, 4, 4) / row.amax(-1).view(HEADS, 1, 1), atol=1e-6, rtol=0)


def test_state_is_restored_when_the_forward_raises(cait):
    def explode(*args):
        raise RuntimeError("boom in forward")
    handle = cait.blocks_token_only[1].register_forward_hook(explode)
    before = model_state(cait)
    try:
        with pytest.raises(RuntimeError, match="boom in forward"):
            VITAttentionGradRollout(cait)(X[:1])
        assert_state_equal(before, model_state(cait))
    finally:
        handle.remove()


def test_cait_xxs24_at_224():
    model = build_cait(224)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    before = model_state(model)
    explanation = VITAttentionGradRollout(model, discard_ratio=0.9).explain(x, 3)
    assert explanation.masks.shape == (1, 14, 14) and torch.isfinite(explanation.masks).all()
    assert explanation.masks.max() == pytest.approx(1.0)
    assert_state_equal(before, model_state(model))
    with pytest.raises(ValueError, match=r"expected an input tensor of shape \(B, 3, 224, 224\), got \(1, 3, 64, 64\)"):
        VITAttentionRollout(model)(X[:1])
