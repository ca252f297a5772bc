"""The caller's model comes back exactly as it went in, whatever happens."""
import copy

import numpy as np
import pytest
import torch

from tests.helpers import assert_state_equal, model_state
from vit_explain import VITAttentionGradRollout, VITAttentionRollout
from vit_explain.recording import AttentionRecorder

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def user_model(deit_tiny):
    """A model in an unusual state: training mode, one frozen block, a mixed fused flag, a user hook."""
    model = copy.deepcopy(deit_tiny).train()
    model.blocks[0].requires_grad_(False)
    model.blocks[1].attn.fused_attn = False
    model.blocks[2].register_forward_hook(lambda *args: None)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    return model


@pytest.mark.parametrize("explainer_class", [VITAttentionRollout, VITAttentionGradRollout])
def test_model_state_is_restored_after_a_call(user_model, explainer_class):
    before = model_state(user_model)
    explainer_class(user_model)(X)
    assert_state_equal(before, model_state(user_model))
    assert user_model.blocks[3].attn.fused_attn is True


def test_state_is_restored_when_the_forward_raises(user_model):
    def explode(*args):
        raise RuntimeError("boom in forward")
    handle = user_model.blocks[5].register_forward_hook(explode)
    before = model_state(user_model)
    with pytest.raises(RuntimeError, match="boom in forward"):
        VITAttentionGradRollout(user_model)(X)
    assert_state_equal(before, model_state(user_model))
    handle.remove()


def test_state_is_restored_when_the_backward_raises(user_model):
    def explode_in_backward(module, inputs, output):
        if output.requires_grad:
            output.register_hook(lambda grad: (_ for _ in ()).throw(RuntimeError("boom in backward")))
    handle = user_model.blocks[11].register_forward_hook(explode_in_backward)
    before = model_state(user_model)
    with pytest.raises(RuntimeError, match="boom in backward"):
        VITAttentionGradRollout(user_model)(X)
    assert_state_equal(before, model_state(user_model))
    handle.remove()


def test_explaining_a_training_model_uses_eval_mode(user_model, deit_tiny):
    trained = VITAttentionRollout(user_model, head_fusion="max")(X)
    np.testing.assert_allclose(trained, VITAttentionRollout(deit_tiny, head_fusion="max")(X), atol=1e-6)
    assert user_model.training


def test_fused_attention_is_off_only_while_recording(deit_tiny):
    seen = []
    with AttentionRecorder(deit_tiny) as rec:
        seen = [b.attn.fused_attn for b in deit_tiny.blocks]
        rec.forward(X)
    assert seen == [False] * 12 and [b.attn.fused_attn for b in deit_tiny.blocks] == [True] * 12
    assert len(rec.attentions) == 12 and rec.attentions[0].shape == (2, 3, 197, 197)
    torch.testing.assert_close(rec.attentions[4].sum(-1), torch.ones(2, 3, 197))


def test_gradients_are_keyed_by_block(deit_tiny):
    """dL/dA of block k, checked against autograd on that block's attention alone."""
    with AttentionRecorder(deit_tiny, gradients=True) as rec:
        logits = rec.forward(X)
        expected = {k: torch.autograd.grad(logits[0, 3] + logits[1, 4], rec.attentions[k], retain_graph=True)[0]
                    for k in (0, 11)}
        grads = rec.attention_gradients(logits, [3, 4])
    for k in (0, 11):
        torch.testing.assert_close(grads[k], expected[k])
    assert grads[0].abs().sum() != grads[11].abs().sum()


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
def test_gradient_methods_work_inside_no_grad_and_inference_mode(deit_tiny, grad_mode):
    expected = VITAttentionGradRollout(deit_tiny)(X, 1)
    with grad_mode():
        np.testing.assert_allclose(VITAttentionGradRollout(deit_tiny)(X, 1), expected, atol=1e-6)


def test_low_precision_model_gives_float32_masks_close_to_full_precision(deit_tiny_qkv4):
    half = copy.deepcopy(deit_tiny_qkv4).to(torch.bfloat16)
    for explainer_class in (VITAttentionRollout, VITAttentionGradRollout):
        full = explainer_class(deit_tiny_qkv4, discard_ratio=0.0)(X, 1)
        low = explainer_class(half, discard_ratio=0.0)(X, 1)
        assert low.dtype == np.float32 and low.shape == full.shape
        assert np.corrcoef(low.ravel(), full.ravel())[0, 1] > 0.95
    assert next(half.parameters()).dtype == torch.bfloat16


def test_a_reduction_keeps_only_what_it_returns(deit_tiny):
    explainer = VITAttentionRollout(deit_tiny)
    raw = explainer.record(X)[0]
    reduced = explainer.record(X, reduce=lambda attention: attention.amax(dim=1))[0]
    assert len(reduced) == len(raw) == 12
    for full, kept in zip(raw, reduced):
        assert kept.shape == (2, 197, 197)
        torch.testing.assert_close(kept, full.amax(dim=1))
    with pytest.raises(ValueError, match="reduce applies to recording without gradients"):
        AttentionRecorder(deit_tiny, gradients=True, reduce=lambda attention: attention)
