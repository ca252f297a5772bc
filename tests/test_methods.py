"""Gradient-weighted attention (Chefer) and raw attention maps against their literal definitions."""
import numpy as np
import pytest
import torch

from tests.helpers import assert_state_equal, model_state
from vit_explain import VITGradWeightedAttention, VITRawAttention
from vit_explain.recording import AttentionRecorder

X = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(11))


def recorded(model, x, category):
    with AttentionRecorder(model, gradients=True) as rec:
        logits = rec.forward(x)
        grads = rec.attention_gradients(logits, [category] * len(x))
    return [a.detach() for a in rec.attentions], grads


def test_chefer_equals_its_definition(deit_tiny_qkv4):
    attentions, grads = recorded(deit_tiny_qkv4, X[:1], 243)
    relevance = torch.eye(197, dtype=torch.float64)
    for a, g in zip(attentions, grads):
        relevance = relevance + (a[0] * g[0]).clamp(min=0).mean(0).double() @ relevance
    expected = relevance[0, 1:].view(14, 14)
    mask = VITGradWeightedAttention(deit_tiny_qkv4)(X[:1], 243)
    np.testing.assert_allclose(mask, (expected / expected.max()).numpy(), atol=1e-5)


def test_raw_attention_is_the_class_row_of_one_block(deit_tiny_qkv4):
    with AttentionRecorder(deit_tiny_qkv4) as rec:
        rec.forward(X[:1])
    for layer in (-1, 3):
        row = rec.attentions[layer][0, :, 0, 1:]          # heads x patches
        mean = row.mean(0).view(14, 14)
        np.testing.assert_allclose(VITRawAttention(deit_tiny_qkv4, layer=layer)(X[:1]),
                                   (mean / mean.max()).numpy(), atol=1e-6)
        heads = VITRawAttention(deit_tiny_qkv4, layer=layer).explain_heads(X[:1]).masks[0]
        expected = row.view(3, 14, 14) / row.amax(-1).view(3, 1, 1)
        torch.testing.assert_close(heads, expected, atol=1e-6, rtol=0)


def test_raw_attention_layer_out_of_range(deit_tiny):
    with pytest.raises(ValueError, match=r"layer 12 is out of range: the model has 12 attention blocks"):
        VITRawAttention(deit_tiny, layer=12)


@pytest.mark.parametrize("make", [
    lambda m: (VITGradWeightedAttention(m), [243, 1, 2, 282]),
    lambda m: (VITRawAttention(m), None),
])
def test_batch_equals_singles_and_model_untouched(deit_tiny_qkv4, make):
    explainer, categories = make(deit_tiny_qkv4)
    before = model_state(deit_tiny_qkv4)
    batch = explainer(X, categories)
    singles = [explainer(X[i:i + 1], None if categories is None else categories[i]) for i in range(4)]
    np.testing.assert_allclose(batch, np.stack(singles), atol=1e-5)
    assert_state_equal(before, model_state(deit_tiny_qkv4))


def test_per_head_batch_equals_singles(deit_tiny_qkv4):
    explainer = VITRawAttention(deit_tiny_qkv4)
    batch = explainer.explain_heads(X).masks
    for i in range(4):
        torch.testing.assert_close(batch[i], explainer.explain_heads(X[i:i + 1]).masks[0], atol=1e-5, rtol=0)


def test_raw_attention_gives_per_head_maps_from_the_same_forward(deit_tiny_qkv4):
    explainer = VITRawAttention(deit_tiny_qkv4)
    calls = []
    handle = deit_tiny_qkv4.register_forward_hook(lambda *args: calls.append(1))
    try:
        explanation = explainer.explain(X)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert explanation.masks.shape == (4, 14, 14) and explanation.head_masks.shape == (4, 3, 14, 14)
    torch.testing.assert_close(explanation.head_masks, explainer.explain_heads(X).masks)
    torch.testing.assert_close(explanation.masks, explainer.explain(X).masks)
    assert VITGradWeightedAttention(deit_tiny_qkv4).explain(X[:1], 1).head_masks is None


def test_gradsam_equals_its_definition(deit_tiny_qkv4):
    from vit_explain import VITGradSAM
    attentions, grads = recorded(deit_tiny_qkv4, X[:2], 243)
    for i in range(2):
        total = sum((a[i] * g[i].clamp(min=0)).sum(0).double() for a, g in zip(attentions, grads))
        expected = total[0, 1:].view(14, 14)  # the class token's row over the patches
        mask = VITGradSAM(deit_tiny_qkv4)(X[i:i + 1], 243)
        np.testing.assert_allclose(mask, (expected / expected.max()).numpy(), atol=1e-5)
