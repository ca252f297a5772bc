"""TokenTM against its literal definition (full N x N matrices in float64, one sample at a time,
the block written out), on Hugging Face against its timm twin, and one forward and backward. No
independent implementation is pip-installable (the authors published none)."""
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import counting_runs
from tests.literal_vit import literal_forward, timm_twin_of_hf
from vit_explain import VITTokenTM
from vit_explain.methods.adapters import CaitAdapter, HuggingFaceViTAdapter, SwinAdapter

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(22))


def literal_tokentm(model, x, category):
    """C_0 = diag(L(e)); per block W = diag(L(after) / (L(before) + 1e-8) * softmax_i(cos(before_i,
    after_i))), U_attn = I + (mean_h A @ W_attn) * mean_h relu(dy/dA), U_mlp = I + W_mlp,
    C = U_mlp @ U_attn @ C; the class token's row over the patches, divided by its maximum."""
    seen, _ = literal_forward(model, x, category)
    length = lambda t: t.norm(dim=-1)  # noqa: E731

    def weights(before, after):
        necc = torch.softmax(F.cosine_similarity(before, after, dim=-1), dim=-1)
        return torch.diag(length(after) / (length(before) + 1e-8) * necc).double()

    n = seen[0]["z0"].shape[1]
    eye = torch.eye(n, dtype=torch.float64)
    contribution = torch.diag(length(seen[0]["z0"][0])).double()
    for b in seen:
        a = b["probs"].detach()[0].mean(dim=0).double()
        g = b["probs"].grad[0].clamp(min=0).mean(dim=0).double()
        u_attn = eye + (a @ weights(b["z0"][0], b["z1"][0])) * g
        u_mlp = eye + weights(b["z1"][0], b["z2"][0])
        contribution = u_mlp @ u_attn @ contribution
    cam = contribution[0, 1:]
    return (cam / cam.max()).view(14, 14).float()


def test_equals_its_literal_definition(deit_tiny_qkv4):
    categories = [243, 1]
    masks = VITTokenTM(deit_tiny_qkv4).explain(X, categories).masks
    for i, category in enumerate(categories):
        expected = literal_tokentm(deit_tiny_qkv4, X[i:i + 1], category)
        torch.testing.assert_close(masks[i], expected, atol=1e-5, rtol=0)
        assert expected.std() > 0.05  # a map worth comparing


def test_a_hugging_face_vit_gives_its_timm_twins_map():
    try:
        hf = HuggingFaceViTAdapter.example()
    except ImportError as error:
        pytest.skip(str(error))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(VITTokenTM(hf).explain(x, [0, 4, 2]).masks,
                               VITTokenTM(timm_twin_of_hf(hf)).explain(x, [0, 4, 2]).masks, atol=1e-5, rtol=0)


def test_one_forward_and_one_backward(deit_tiny_qkv4, monkeypatch):
    with counting_runs(deit_tiny_qkv4, monkeypatch) as calls:
        VITTokenTM(deit_tiny_qkv4).explain(X, 3)
    assert calls["forward"] == 1 and len(calls["grads"]) == 1


@pytest.mark.parametrize("family", [CaitAdapter, SwinAdapter])
def test_families_without_standard_vit_blocks_are_refused_at_construction(family):
    model = family.example()
    with pytest.raises(ValueError, match=f"{type(model).__name__}"):
        VITTokenTM(model)
