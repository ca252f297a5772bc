"""DAAM against its literal definition (the block written out, one sample at a time), against an
independent implementation (daam-timm-vit 0.2.1 from PyPI, test extra), the label-free mode, on
Hugging Face against its timm twin, and one forward and backward."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from tests.helpers import counting_runs, peaky
from tests.literal_vit import literal_forward, timm_twin_of_hf
from vit_explain import VITDAAM
from vit_explain.methods.adapters import CaitAdapter, HuggingFaceViTAdapter, SwinAdapter

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(23))


def literal_block_maps(model, x, category=None, score=None):
    """Per block, L[n] = relu(sum over heads h and channels d of relu(dy/dT[cls])[h, d] * A[h, cls, n]
    * V[h, n, d]), the class token's column dropped: (blocks, 14, 14)."""
    seen, _ = literal_forward(model, x, category, score=score)
    maps = []
    for b in seen:
        a, v = b["probs"].detach()[0], b["values"][0]                     # (H, N, N), (H, N, d)
        heads, _, width = v.shape
        c = b["mixed"].grad[0, 0].clamp(min=0).view(heads, width)          # relu(C) at the class token
        spatial = a[:, 0, :, None] * v                                     # S: (H, N, d)
        maps.append((spatial * c[:, None, :]).sum(dim=(0, 2)).clamp(min=0)[1:].view(14, 14))
    return torch.stack(maps)


def test_equals_its_literal_definition(deit_tiny_qkv4):
    categories = [243, 1]
    explainer = VITDAAM(deit_tiny_qkv4)
    maps = explainer.layer_maps(X, categories).maps
    masks = explainer.explain(X, categories).masks
    for i, category in enumerate(categories):
        expected = literal_block_maps(deit_tiny_qkv4, X[i:i + 1], category)
        peak = expected.abs().max()
        torch.testing.assert_close(maps[i] / peak, expected / peak, atol=1e-5, rtol=0)
        final = expected.sum(dim=0)
        torch.testing.assert_close(masks[i], (final - final.min()) / (final.max() - final.min()), atol=1e-5, rtol=0)
        assert (expected.flatten(1).amax(dim=1) > 0).sum() > 6  # most blocks have a map worth comparing


def test_equals_daam_timm_vit(deit_tiny_qkv4):
    daam = pytest.importorskip("daam")
    if not hasattr(daam, "DAAMResult"):
        pytest.skip("the installed `daam` is not daam-timm-vit")
    categories = [243, 1]
    ours = VITDAAM(deit_tiny_qkv4).layer_maps(X, categories).maps
    with daam.DAAM(copy.deepcopy(deit_tiny_qkv4)) as theirs:
        result = theirs(X, target=torch.tensor(categories), mode="class")
    peak = result.block_maps.abs().amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(ours / peak, result.block_maps / peak, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.cumsum(dim=1) / peak, result.maps / peak, atol=1e-5, rtol=0)


def test_label_free_on_a_backbone_without_a_classifier():
    torch.manual_seed(0)
    backbone = peaky(timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=0).eval())

    def score(features):  # y = sum_d w_d f_d, w the min-max of f_hat ** 2 (a constant)
        square = F.normalize(features.detach(), dim=-1) ** 2
        weights = (square - square.min()) / (square.max() - square.min())
        return (features * weights).sum()

    explainer = VITDAAM(backbone, label_free=True)
    maps = explainer.layer_maps(X).maps
    for i in range(len(X)):
        expected = literal_block_maps(backbone, X[i:i + 1], score=score)
        peak = expected.abs().max()
        torch.testing.assert_close(maps[i] / peak, expected / peak, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="category_index must be None"):
        explainer.explain(X, 3)
    # references: the weights come from the features given, not from the image's own
    with torch.no_grad():
        reference = backbone(X[1:])
    other = VITDAAM(backbone, label_free=True, references=reference).layer_maps(X[:1]).maps
    assert (other - maps[:1]).abs().max() > 1e-6


def test_label_free_reads_the_classifiers_input_on_a_classifier(deit_tiny_qkv4):
    explainer = VITDAAM(deit_tiny_qkv4, label_free=True)
    explanation = explainer.explain(X)
    assert explanation.targets.tolist() == explanation.logits.argmax(-1).tolist()
    assert (explanation.masks - VITDAAM(deit_tiny_qkv4).explain(X).masks).abs().max() > 1e-3


def test_the_options_are_checked(deit_tiny_qkv4):
    for kwargs in ({"label_free": 1}, {"label_free": "yes"}, {"references": torch.ones(192)},
                   {"label_free": True, "references": torch.ones(0)},
                   {"label_free": True, "references": torch.full((192,), float("nan"))},
                   {"label_free": True, "references": [1.0, 2.0]}):
        with pytest.raises(ValueError):
            VITDAAM(deit_tiny_qkv4, **kwargs)


def test_a_hugging_face_vit_gives_its_timm_twins_maps():
    try:
        hf = HuggingFaceViTAdapter.example()
    except ImportError as error:
        pytest.skip(str(error))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ours = VITDAAM(hf).layer_maps(x, [0, 4, 2]).maps
    twins = VITDAAM(timm_twin_of_hf(hf)).layer_maps(x, [0, 4, 2]).maps
    torch.testing.assert_close(ours, twins, atol=1e-5 * float(twins.abs().max()), rtol=0)
    label_free = VITDAAM(hf, label_free=True).layer_maps(x).maps
    twins = VITDAAM(timm_twin_of_hf(hf), label_free=True).layer_maps(x).maps
    torch.testing.assert_close(label_free, twins, atol=1e-5 * float(twins.abs().max()), rtol=0)


def test_one_forward_and_one_backward(deit_tiny_qkv4, monkeypatch):
    with counting_runs(deit_tiny_qkv4, monkeypatch) as calls:
        VITDAAM(deit_tiny_qkv4).explain(X, 3)
    assert calls["forward"] == 1 and len(calls["grads"]) == 1


@pytest.mark.parametrize("family", [CaitAdapter, SwinAdapter])
def test_families_without_standard_vit_blocks_are_refused_at_construction(family):
    model = family.example()
    with pytest.raises(ValueError, match=f"{type(model).__name__}"):
        VITDAAM(model)
