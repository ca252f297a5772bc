"""AGCAM against its literal definition (the attention written out, its input detached, one sample
at a time), on the other families against their timm twins, and its one forward and backward.
No independent implementation is pip-installable (the authors' code is a repository)."""
import pytest
import torch

from tests.helpers import counting_runs
from tests.literal_vit import literal_forward, timm_twin_of_hf
from vit_explain import VITAGCAM
from vit_explain.methods.adapters import CaitAdapter, HuggingFaceViTAdapter, SwinAdapter

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(21))


def literal_agcam(model, x, category):
    """sum over blocks and heads of sigmoid(S[cls]) * relu(dy/dA[cls]), with every attention's
    input detached, the class token's column dropped, divided by its maximum: (14, 14)."""
    seen, _ = literal_forward(model, x, category, cut_attention_input=True)
    cam = sum((torch.sigmoid(b["scores"][0, :, 0]) * b["probs"].grad[0, :, 0].clamp(min=0)).sum(dim=0)
              for b in seen)[1:]
    return (cam / cam.max()).view(14, 14)


def test_equals_its_literal_definition(deit_tiny_qkv4):
    categories = [243, 1]
    masks = VITAGCAM(deit_tiny_qkv4).explain(X, categories).masks
    for i, category in enumerate(categories):
        expected = literal_agcam(deit_tiny_qkv4, X[i:i + 1], category)
        torch.testing.assert_close(masks[i], expected, atol=1e-5, rtol=0)
        assert expected.std() > 0.05  # a map worth comparing


def test_the_cut_matters(deit_tiny_qkv4):
    # without the cut the gradient also flows through later blocks' attention: another map
    seen, _ = literal_forward(deit_tiny_qkv4, X[:1], 243, cut_attention_input=False)
    cam = sum((torch.sigmoid(b["scores"][0, :, 0]) * b["probs"].grad[0, :, 0].clamp(min=0)).sum(0) for b in seen)[1:]
    uncut = (cam / cam.max()).view(14, 14)
    assert (VITAGCAM(deit_tiny_qkv4).explain(X[:1], 243).masks[0] - uncut).abs().max() > 1e-3


def test_a_hugging_face_vit_gives_its_timm_twins_map():
    try:
        hf = HuggingFaceViTAdapter.example()
    except ImportError as error:
        pytest.skip(str(error))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(VITAGCAM(hf).explain(x, [0, 4, 2]).masks,
                               VITAGCAM(timm_twin_of_hf(hf)).explain(x, [0, 4, 2]).masks, atol=1e-5, rtol=0)


def test_one_forward_and_one_backward(deit_tiny_qkv4, monkeypatch):
    with counting_runs(deit_tiny_qkv4, monkeypatch) as calls:
        VITAGCAM(deit_tiny_qkv4).explain(X, 3)
    assert calls["forward"] == 1 and len(calls["grads"]) == 1


@pytest.mark.parametrize("family", [CaitAdapter, SwinAdapter])
def test_families_without_standard_vit_blocks_are_refused_at_construction(family):
    model = family.example()
    with pytest.raises(ValueError, match=f"{type(model).__name__}"):
        VITAGCAM(model)
