"""compat="vit-explain" reproduces the original 2020 code; the default fixes its bugs."""
import numpy as np
import pytest
import torch

from vit_explain import VITAttentionGradRollout, VITAttentionRollout
from vit_explain.math import compat_gradient_rollout, tokens_to_grid, scale_to_max
from vit_explain.recording import AttentionRecorder

RATIOS = [0.0, 0.9]
FUSIONS = ["mean", "max", "min"]
CATEGORIES = [243, 282]


@pytest.fixture(scope="module", params=["", "qkv4_"])
def case(request, deit_tiny, deit_tiny_qkv4, oracle):
    model = deit_tiny_qkv4 if request.param else deit_tiny
    return request.param, model, torch.tensor(oracle["input"])


def test_rebuilt_model_matches_the_recorded_one(case, oracle):
    prefix, model, x = case
    assert sum(p.double().sum().item() for p in model.parameters()) == pytest.approx(
        float(oracle[prefix + "param_sum"]), abs=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), oracle[prefix + "logits"], atol=1e-5)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_compat_rollout_equals_original(case, oracle, ratio, fusion):
    prefix, model, x = case
    mask = VITAttentionRollout(model, head_fusion=fusion, discard_ratio=ratio, compat="vit-explain")(x)
    np.testing.assert_allclose(mask, oracle[f"{prefix}attention_rollout_{ratio:.3f}_{fusion}"], atol=1e-5)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("category", CATEGORIES)
def test_compat_grad_rollout_equals_original(case, oracle, ratio, category):
    prefix, model, x = case
    # The original ignored head fusion: any choice must give its output.
    mask = VITAttentionGradRollout(model, discard_ratio=ratio, head_fusion="max", compat="vit-explain")(x, category)
    np.testing.assert_allclose(mask, oracle[f"{prefix}grad_rollout_{category}_{ratio:.3f}"], atol=1e-5)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("category", CATEGORIES)
def test_recorded_gradients_are_dl_da_in_block_order(case, oracle, ratio, category):
    """Our gradients, fed to the original math with each bug switched off, give the oracle's fixes."""
    prefix, model, x = case
    with AttentionRecorder(model, gradients=True) as rec:
        logits = rec.forward(x)
        grads = rec.attention_gradients(logits, [category])
        attentions = [a.detach() for a in rec.attentions]
    for key, scores_gradient in [("gradfix_layerorder", True), ("gradfix_postsoftmax", False)]:
        row = compat_gradient_rollout(attentions, grads, ratio, reverse_blocks=False,
                                      scores_gradient=scores_gradient)
        mask = scale_to_max(tokens_to_grid(row, 1, (14, 14)))[0].numpy()
        np.testing.assert_allclose(mask, oracle[f"{prefix}{key}_{category}_{ratio:.3f}"], atol=1e-5)


def test_default_rollout_fixes_the_normalisation(deit_tiny_qkv4, oracle):
    x = torch.tensor(oracle["input"])
    for fusion in ["max", "min"]:
        mask = VITAttentionRollout(deit_tiny_qkv4, head_fusion=fusion, discard_ratio=0.9)(x)
        assert np.abs(mask - oracle[f"qkv4_attention_rollout_0.900_{fusion}"]).max() > 1e-2


def test_default_grad_rollout_differs_from_every_buggy_variant(deit_tiny_qkv4, oracle):
    x = torch.tensor(oracle["input"])
    mask = VITAttentionGradRollout(deit_tiny_qkv4, discard_ratio=0.9)(x, 243)
    for key in ["grad_rollout", "gradfix_layerorder", "gradfix_postsoftmax"]:
        assert np.abs(mask - oracle[f"qkv4_{key}_243_0.900"]).max() > 1e-2, key
