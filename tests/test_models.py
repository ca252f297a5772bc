"""Every supported architecture: prefix tokens, pooling and grids read right."""
import pytest
import timm
import torch

from tests.helpers import literal_rollout, peaky
from vit_explain import VITAttentionGradRollout, VITAttentionRollout
from vit_explain.recording import AttentionRecorder

# (timm name, create kwargs, input (H, W), prefix tokens, pooling, grid); headless by default
# (DINOv2, EVA02) get a classifier: a class is explained only on a model that has classes
MODELS = [
    ("deit_tiny_patch16_224", {}, (224, 224), 1, "token", (14, 14)),
    ("vit_tiny_patch16_224", {}, (224, 224), 1, "token", (14, 14)),
    ("deit_tiny_distilled_patch16_224", {}, (224, 224), 2, "token", (14, 14)),
    ("vit_small_patch14_reg4_dinov2", {"img_size": 224, "num_classes": 10}, (224, 224), 5, "token", (16, 16)),
    ("vit_medium_patch16_gap_256", {}, (256, 256), 0, "avg", (16, 16)),
    ("vit_tiny_patch16_224", {"dynamic_img_size": True}, (224, 160), 1, "token", (14, 10)),
    ("beit_base_patch16_224", {}, (224, 224), 1, "avg", (14, 14)),
    ("eva02_tiny_patch14_224", {"num_classes": 10}, (224, 224), 1, "avg", (16, 16)),
]


def build(name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    # Random-init attention is nearly uniform and zero-initialised prefix tokens attend
    # uniformly (ties that discard removes whole): sharpen both, as training does.
    peaky(model)
    with torch.no_grad():
        for token in ("cls_token", "reg_token"):
            if getattr(model, token, None) is not None:
                getattr(model, token).normal_(std=0.5)
        for head in ("head", "head_dist"):  # logits of a trained model's magnitude
            if isinstance(getattr(model, head, None), torch.nn.Linear):
                getattr(model, head).weight.mul_(100)
    return model


@pytest.fixture(scope="module", params=MODELS, ids=lambda c: c[0] + ("-dynamic" if c[1].get("dynamic_img_size") else ""))
def case(request):
    name, kwargs, hw, prefix, pooling, grid = request.param
    return build(name, kwargs), torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(3)), prefix, pooling, grid


def test_rollout_reads_the_pooled_tokens_and_the_grid(case):
    model, x, prefix, pooling, grid = case
    assert model.num_prefix_tokens == prefix
    mask = VITAttentionRollout(model, head_fusion="max", discard_ratio=0.5)(x)
    assert mask.shape == grid and mask.dtype == "float32" and mask.max() == pytest.approx(1.0)

    with AttentionRecorder(model) as rec:
        rec.forward(x)
    full = literal_rollout(torch.stack([a[0] for a in rec.attentions]), "max", 0.5)
    row = full[0] if pooling == "token" else full[prefix:].mean(0)
    expected = row[prefix:].view(grid)
    torch.testing.assert_close(torch.from_numpy(mask).double(), expected / expected.max(), atol=1e-5, rtol=0)


def test_grad_rollout_matches_the_literal_math(case):
    model, x, prefix, pooling, grid = case
    mask = VITAttentionGradRollout(model, discard_ratio=0.9, head_fusion="mean")(x, 1)
    with AttentionRecorder(model, gradients=True) as rec:
        logits = rec.forward(x)
        grads = rec.attention_gradients(logits, [1])
    full = literal_rollout(torch.stack([a[0].detach() for a in rec.attentions]), "mean", 0.9,
                           grad=torch.stack([g[0] for g in grads]))
    row = full[0] if pooling == "token" else full[prefix:].mean(0)
    expected = row[prefix:].view(grid)
    assert mask.shape == grid and mask.max() == pytest.approx(1.0)
    torch.testing.assert_close(torch.from_numpy(mask).double(), expected / expected.max(), atol=1e-5, rtol=0)


def test_grad_rollout_gives_a_class_specific_map(case):
    model, x, prefix, pooling, grid = case
    if pooling == "avg":
        pytest.skip("average-pooled maps start from the uniform patch mean; their class-specific part is small")
    explainer = VITAttentionGradRollout(model, discard_ratio=0.9)
    assert abs(explainer(x, 1) - explainer(x, 2)).max() > 1e-2


def test_recording_does_not_change_the_prediction(case):
    model, x, *_ = case
    with torch.no_grad():
        fused = model(x)
    explanation = VITAttentionRollout(model).explain(x)
    torch.testing.assert_close(explanation.logits, fused, atol=1e-4, rtol=1e-4)
    assert explanation.targets.tolist() == fused.argmax(-1).tolist()


def test_model_without_attention_modules_gets_a_pointer():
    model = timm.create_model("resnet18", pretrained=False)
    with pytest.raises(ValueError, match=r"ResNet.*attention_layer_name="):
        VITAttentionRollout(model)


def test_attention_layer_name_selects_modules_by_dotted_suffix(deit_tiny):
    x = torch.randn(1, 3, 224, 224)
    default = VITAttentionRollout(deit_tiny, discard_ratio=0.5)(x)
    named = VITAttentionRollout(deit_tiny, attention_layer_name="attn.attn_drop", discard_ratio=0.5)(x)
    assert (default == named).all()
    with AttentionRecorder(deit_tiny, "blocks.3.attn.attn_drop") as rec:
        rec.forward(x)
    assert len(rec.attentions) == 1
