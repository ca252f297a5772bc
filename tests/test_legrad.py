"""LeGrad: against torchcam 0.5.0's LeGrad (the oracle, torchvision ViTs), against its literal
definition (one backward per block, nothing cut) on the other families, and its cost."""
import copy

import pytest
import torch

from tests.helpers import assert_state_equal, model_state
from vit_explain import VITLeGrad
from vit_explain.methods.adapters import (CaitAdapter, HuggingFaceViTAdapter, SwinAdapter, TimmAdapter,
                                          TorchvisionViTAdapter)
from vit_explain.recording import AttentionRecorder, HuggingFaceAttentionRecorder

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def tv():
    return TorchvisionViTAdapter.example()


def torchcam_maps(model, x, category, layers=None, pooling="mean", normalized=False):
    """torchcam's LeGrad on a copy of the model (it hooks the model it is given): (B, gh, gw)."""
    legrad = pytest.importorskip("torchcam.methods").LeGrad
    model = copy.deepcopy(model)
    blocks = list(model.encoder.layers)
    blocks = blocks if layers is None else [blocks[i] for i in layers]
    projection = None
    if pooling == "model":
        projection = lambda tokens: model.heads(model.encoder.ln(tokens)[:, 0])  # noqa: E731
    with legrad(model, blocks, score_projection=projection) as cam:
        scores = model(x)
        classes = scores.argmax(dim=-1).tolist() if category is None else category
        return cam(classes, scores, normalized=normalized)[0].detach()


@pytest.mark.parametrize("category", [2, [0, 4, 1], None], ids=["one class", "per sample", "predicted"])
@pytest.mark.parametrize("layers, pooling", [(None, "mean"), ([1], "mean"), (None, "model")])
def test_equals_torchcam(tv, category, layers, pooling):
    explainer = VITLeGrad(tv, layers=layers, pooling=pooling)
    ours = explainer.layer_maps(X, category)
    # unscaled: the per-block maps averaged over the blocks
    torch.testing.assert_close(ours.maps.mean(dim=1), torchcam_maps(tv, X, category, layers, pooling),
                               atol=1e-5, rtol=0)
    # min-max scaled (torchcam adds 1e-8 to the span; the spans here are ~0.3, so that is ~3e-8)
    torch.testing.assert_close(explainer.explain(X, category).masks,
                               torchcam_maps(tv, X, category, layers, pooling, normalized=True), atol=1e-5, rtol=0)
    if category is None:
        assert ours.targets.tolist() == tv(X).argmax(-1).tolist()


def literal_maps(adapter, model, x, targets, pooling):
    """LeGrad as defined, with nothing cut: record every block's attention and output, then one
    autograd.grad of each block's own score with respect to its own attention."""
    outputs = []
    handles = [block.register_forward_hook(lambda m, i, o: outputs.append(o[0] if isinstance(o, tuple) else o))
               for block in adapter.blocks()]
    recorder = HuggingFaceAttentionRecorder(model, gradients=True) if isinstance(adapter, HuggingFaceViTAdapter) \
        else AttentionRecorder(model, gradients=True, call=adapter.logits)
    try:
        with recorder as rec:
            rec.forward(x)
            maps = []
            for tokens, attention in zip(outputs, rec.attentions, strict=True):
                score = adapter.scores_of_tokens(tokens, pooling).gather(1, targets.view(-1, 1)).sum()
                (grad,) = torch.autograd.grad(score, attention, retain_graph=True)
                maps.append(grad.relu().mean(dim=(1, 2))[:, 1:])
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(maps, dim=1)


@pytest.mark.parametrize("family", [TimmAdapter, HuggingFaceViTAdapter], ids=lambda a: a.__name__)
@pytest.mark.parametrize("pooling", ["mean", "model"])
def test_equals_its_literal_definition(family, pooling):
    try:
        model = family.example()
    except ImportError as error:
        pytest.skip(str(error))
    explainer = VITLeGrad(model, pooling=pooling)
    ours = explainer.layer_maps(X, [1, 2, 3])
    expected = literal_maps(explainer.adapter, model, X, ours.targets, pooling)
    torch.testing.assert_close(ours.maps.flatten(2), expected, atol=1e-6, rtol=0)
    assert expected.abs().amax() > 1e-3  # a map worth comparing


def test_timm_mean_pooling_normalises_the_mean_of_all_tokens():
    model = TimmAdapter.example()
    tokens = torch.randn(2, 17, 48)
    with torch.no_grad():
        torch.testing.assert_close(TimmAdapter(model).scores_of_tokens(tokens, "mean"),
                                   model.head(model.norm(tokens.mean(dim=1))))
        torch.testing.assert_close(TimmAdapter(model).scores_of_tokens(tokens, "model"),
                                   model.head(model.norm(tokens)[:, 0]))


def test_one_forward_and_one_backward_without_create_graph(tv, monkeypatch):
    calls = {"blocks": 0, "grads": []}
    handles = [block.register_forward_pre_hook(lambda *_: calls.__setitem__("blocks", calls["blocks"] + 1))
               for block in tv.encoder.layers]
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grads"].append(kwargs)
        return real_grad(*args, **kwargs)
    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    try:
        VITLeGrad(tv).explain(X, 1)
    finally:
        for handle in handles:
            handle.remove()
    assert calls["blocks"] == len(tv.encoder.layers)  # every block ran once: one forward
    assert len(calls["grads"]) == 1  # one backward serves every block
    assert not calls["grads"][0].get("create_graph") and not calls["grads"][0].get("retain_graph")


def test_batch_equals_singles_and_the_model_comes_back(tv):
    explainer = VITLeGrad(tv, layers=[-1, 0])
    tv.train()
    before = model_state(tv)
    try:
        batch = explainer.explain(X, [0, 3, 1])
        assert_state_equal(before, model_state(tv))
        for i, category in enumerate([0, 3, 1]):
            torch.testing.assert_close(batch.masks[i], explainer.explain(X[i:i + 1], category).masks[0],
                                       atol=1e-5, rtol=0)
        with pytest.raises(ValueError):
            explainer.explain(X, 99)
        assert_state_equal(before, model_state(tv))
    finally:
        tv.eval()


def test_the_options_are_checked(tv):
    assert VITLeGrad(tv, layers=-1).layers == [1] and VITLeGrad(tv, layers=[1, 0, -1]).layers == [0, 1]
    for layers in (2, -3, [], [0, 5], "last", 1.0):
        with pytest.raises(ValueError, match="layers"):
            VITLeGrad(tv, layers=layers)
    with pytest.raises(ValueError, match="pooling"):
        VITLeGrad(tv, pooling="max")


@pytest.mark.parametrize("family, why", [(CaitAdapter, "patches only"), (SwinAdapter, "windows")])
def test_families_without_blocks_over_every_token_are_refused_at_construction(family, why):
    model = family.example()
    with pytest.raises(ValueError, match=f"{type(model).__name__}.*{why}"):
        VITLeGrad(model)
