"""Bad input gets a ValueError that says what was expected, and the model is left untouched."""
import pytest
import timm
import torch

from tests.helpers import assert_state_equal, model_state
from vit_explain import VITAttentionGradRollout, VITAttentionRollout


@pytest.mark.parametrize("kwargs,message", [
    ({"head_fusion": "median"}, "head_fusion must be one of mean, max, min; got 'median'"),
    ({"discard_ratio": 1.0}, r"discard_ratio must be in \[0, 1\); got 1.0"),
    ({"discard_ratio": -0.1}, r"discard_ratio must be in \[0, 1\)"),
    ({"compat": "2020"}, "compat must be None or 'vit-explain'"),
])
@pytest.mark.parametrize("explainer_class", [VITAttentionRollout, VITAttentionGradRollout])
def test_bad_parameters(deit_tiny, explainer_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        explainer_class(deit_tiny, **kwargs)


@pytest.mark.parametrize("category,message", [
    (1000, r"category_index 1000 is out of range: the model has 1000 classes \(0..999\)"),
    (-1, "category_index -1 is out of range"),
    ([1, 2, 3], "category_index has 3 entries but the batch has 2 samples"),
])
def test_bad_category_leaves_the_model_untouched(deit_tiny, category, message):
    before = model_state(deit_tiny)
    with pytest.raises(ValueError, match=message):
        VITAttentionGradRollout(deit_tiny)(torch.randn(2, 3, 224, 224), category)
    assert_state_equal(before, model_state(deit_tiny))


@pytest.mark.parametrize("tensor,given", [
    (torch.randn(3, 224, 224), r"\(3, 224, 224\)"),
    (torch.randn(1, 3, 160, 224), r"\(1, 3, 160, 224\)"),
    (torch.randn(1, 1, 224, 224), r"\(1, 1, 224, 224\)"),
    ([[1.0]], "list"),
])
def test_input_the_model_cannot_take(deit_tiny, tensor, given):
    before = model_state(deit_tiny)
    with pytest.raises(ValueError, match=r"expected an input tensor of shape \(B, 3, 224, 224\), got " + given):
        VITAttentionRollout(deit_tiny)(tensor)
    assert_state_equal(before, model_state(deit_tiny))


def test_integer_images_are_refused(deit_tiny):
    with pytest.raises(ValueError, match="floating-point"):
        VITAttentionRollout(deit_tiny)(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))


def test_dynamic_model_states_its_minimum_size():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) with H >= 16 and W >= 16, got \(1, 3, 8, 224\)"):
        VITAttentionRollout(model)(torch.randn(1, 3, 8, 224))


def test_windowed_attention_has_no_rollout():
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(1, 1, 1, 1),
                             embed_dim=24, num_heads=(1, 1, 1, 1)).eval()
    for explainer in (VITAttentionRollout(swin), VITAttentionGradRollout(swin)):
        with pytest.raises(ValueError, match="windowed attention such as Swin's has no rollout"):
            explainer(torch.randn(1, 3, 224, 224))
