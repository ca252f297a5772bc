"""A batch of B gives the same masks as B single calls."""
import numpy as np
import pytest
import timm
import torch

from vit_explain import VITAttentionGradRollout, VITAttentionRollout

BATCH = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(5))


def singles(explainer, x, categories=None):
    return np.stack([explainer(x[i:i + 1], None if categories is None else categories[i]) for i in range(len(x))])


@pytest.mark.parametrize("compat", [None, "vit-explain"])
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_batch_equals_singles(deit_tiny_qkv4, fusion, compat):
    explainer = VITAttentionRollout(deit_tiny_qkv4, head_fusion=fusion, discard_ratio=0.9, compat=compat)
    batch = explainer(BATCH)
    assert batch.shape == (4, 14, 14)
    np.testing.assert_allclose(batch, singles(explainer, BATCH), atol=1e-5)


@pytest.mark.parametrize("compat", [None, "vit-explain"])
def test_grad_rollout_batch_with_a_category_per_sample(deit_tiny_qkv4, compat):
    explainer = VITAttentionGradRollout(deit_tiny_qkv4, discard_ratio=0.9, head_fusion="max", compat=compat)
    categories = [243, 282, 1, 999]
    batch = explainer(BATCH, categories)
    np.testing.assert_allclose(batch, singles(explainer, BATCH, categories), atol=1e-5)
    assert abs(batch[0] - explainer(BATCH, 282)[0]).max() > 1e-3  # the category matters


def test_grad_rollout_batch_of_predicted_classes(deit_tiny_qkv4):
    explainer = VITAttentionGradRollout(deit_tiny_qkv4, discard_ratio=0.5)
    explanation = explainer.explain(BATCH)
    predicted = explanation.logits.argmax(-1)
    assert explanation.targets.tolist() == predicted.tolist()
    np.testing.assert_allclose(explanation.masks.numpy(), singles(explainer, BATCH, predicted.tolist()), atol=1e-5)


@pytest.mark.parametrize("name,kwargs,hw", [
    ("deit_tiny_distilled_patch16_224", {}, (224, 224)),
    ("vit_tiny_patch16_224", {"dynamic_img_size": True}, (224, 160)),
])
def test_other_layouts_batch_equals_singles(name, kwargs, hw):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    x = torch.randn(4, 3, *hw)
    for explainer in [VITAttentionRollout(model, head_fusion="max"), VITAttentionGradRollout(model)]:
        np.testing.assert_allclose(explainer(x, [0, 1, 2, 3]), singles(explainer, x, [0, 1, 2, 3]), atol=1e-5)
