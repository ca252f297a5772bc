"""Per-block maps: explain(x, per_layer=True) fills Explanation.layer_masks where a method has
them (rollout and gradient rollout up to each block, Grad-SAM summed up to each block, LeGrad's
and raw attention's own map of each block), leaves everything else as it was, and every method
of the table takes the keyword."""
import pytest
import torch

from tests.helpers import literal_rollout
from vit_explain import (VITAttentionGradRollout, VITAttentionRollout, VITGradSAM, VITLeGrad, VITRawAttention)
from vit_explain.cli.options import Options
from vit_explain.math import (compat_rollout_rows, push_through_blocks, readout_rows, rollout_block,
                              rollout_prefix_rows)
from vit_explain.math.legrad import min_max_scale
from vit_explain.methods.adapters import ADAPTERS
from vit_explain.methods.base import AttentionExplainer
from vit_explain.methods.table import METHODS

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def attentions(blocks=4, batch=2, heads=3, n=17, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, n, generator=generator).mul(3).softmax(-1) for _ in range(blocks)]


@pytest.mark.parametrize("fusion, ratio", [("mean", 0.0), ("max", 0.9), ("min", 0.5)])
def test_prefix_rows_are_the_rollout_of_every_prefix(fusion, ratio):
    blocks = [rollout_block(a, fusion, ratio) for a in attentions()]
    readout = readout_rows(2, 17, 1, "token")
    rows = rollout_prefix_rows(blocks, readout)
    assert rows.shape == (2, 4, 1, 17)
    for layer in range(4):
        torch.testing.assert_close(rows[:, layer], push_through_blocks(blocks[:layer + 1], readout), atol=1e-6, rtol=0)
        for b in range(2):  # against the full N x N product of design.md
            literal = literal_rollout(torch.stack([a[b] for a in attentions()[:layer + 1]]), fusion, ratio)
            torch.testing.assert_close(rows[b, layer, 0].double(), literal[0], atol=1e-6, rtol=0)
    compat = rollout_prefix_rows(blocks, readout, column_sums=True)
    torch.testing.assert_close(compat[:, -1, 0], compat_rollout_rows(blocks), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        rollout_prefix_rows([], readout)


@pytest.fixture(scope="module", params=ADAPTERS, ids=lambda adapter: adapter.__name__)
def family(request):
    try:
        return request.param, request.param.example()
    except ImportError as error:
        pytest.skip(f"{request.param.__name__}: {error}")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_takes_per_layer_and_says_whether_it_has_block_maps(name, family):
    adapter, model = family
    spec = METHODS[name]
    if not adapter.token_attention and issubclass(spec.load(), AttentionExplainer):
        pytest.skip(f"{adapter.__name__} has no token attention")
    try:
        explainer = spec.build(model, Options())
    except ValueError:
        pytest.skip(f"{adapter.__name__} refuses {name}")
    category = [0, 3, 1] if spec.class_specific else None
    target = adapter.example_target()  # a classless family's example explains prompts or references
    plain = explainer.explain(X, category, target=target)
    assert plain.layer_masks is None and plain.layer_blocks is None and plain.layer_head_masks is None
    result = explainer.explain(X, category, per_layer=True, target=target)
    torch.testing.assert_close(result.masks, plain.masks, atol=0, rtol=0)  # the mask does not change
    assert (result.layer_masks is not None) == explainer.has_layer_maps
    assert (result.layer_head_masks is not None) == explainer.has_layer_head_maps
    if result.layer_masks is not None:
        layers = result.layer_masks
        assert layers.shape[:1] == (3,) and layers.shape[2:] == plain.masks.shape[1:] and layers.dtype == torch.float32
        assert result.layer_blocks == sorted(result.layer_blocks) and len(result.layer_blocks) == layers.shape[1]
        assert torch.isfinite(layers).all() and layers.min() >= 0 and layers.max() <= 1 + 1e-6
        for i in range(len(X)):  # a batch gives what its images give one by one
            single = explainer.explain(X[i:i + 1], None if category is None else category[i], per_layer=True,
                                       target=target)
            torch.testing.assert_close(layers[i], single.layer_masks[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("compat", [None, "vit-explain"])
@pytest.mark.parametrize("cls", [VITAttentionRollout, VITAttentionGradRollout])
def test_the_last_block_of_the_rollouts_is_the_mask(cls, compat, deit_tiny_qkv4):
    explainer = cls(deit_tiny_qkv4, head_fusion="max", discard_ratio=0.9, compat=compat)
    x = torch.randn(1 if compat else 2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    result = explainer.explain(x, per_layer=True)
    assert result.layer_masks.shape == (len(x), 12, 14, 14) and result.layer_blocks == list(range(12))
    torch.testing.assert_close(result.layer_masks[:, -1], result.masks, atol=1e-6, rtol=0)
    assert not torch.allclose(result.layer_masks[:, 0], result.masks, atol=1e-3)  # the first block differs
    assert explainer.has_layer_maps and not explainer.has_layer_head_maps


def test_rollout_up_to_a_block_is_the_rollout_of_a_model_cut_there(deit_tiny_qkv4):
    """Block l's map equals rollout over the first l + 1 blocks' recorded attention."""
    explainer = VITAttentionRollout(deit_tiny_qkv4, head_fusion="mean", discard_ratio=0.5)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    rec = explainer.record(x, reduce=explainer.block_reduction())
    layers = explainer.explain(x, per_layer=True).layer_masks
    for layer in (0, 5):
        rows = push_through_blocks(rec.attentions[:layer + 1], readout_rows(1, 197, 1, "token"))[:, 0, 1:]
        expected = (rows / rows.amax(dim=-1, keepdim=True)).reshape(1, 14, 14)
        torch.testing.assert_close(layers[:, layer], expected, atol=1e-6, rtol=0)


def test_gradsam_summed_up_to_the_last_block_is_its_mask(deit_tiny_qkv4):
    result = VITGradSAM(deit_tiny_qkv4).explain(torch.randn(2, 3, 224, 224), per_layer=True)
    assert torch.equal(result.layer_masks[:, -1], result.masks)


def test_raw_attention_gives_every_block_and_its_heads(deit_tiny_qkv4):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    for layer in (-1, 4):
        result = VITRawAttention(deit_tiny_qkv4, layer=layer).explain(x, per_layer=True)
        assert result.layer_head_masks.shape == (2, 12, 3, 14, 14)
        torch.testing.assert_close(result.layer_masks[:, layer], result.masks, atol=1e-6, rtol=0)
        torch.testing.assert_close(result.layer_head_masks[:, layer], result.head_masks, atol=0, rtol=0)


def test_legrad_gives_each_chosen_block_its_own_map(deit_tiny_qkv4):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    explainer = VITLeGrad(deit_tiny_qkv4, layers=[3, -1])
    result = explainer.explain(x, [1, 2], per_layer=True)
    assert result.layer_blocks == [3, 11] and result.layer_masks.shape == (2, 2, 14, 14)
    maps = explainer.layer_maps(x, [1, 2]).maps
    torch.testing.assert_close(result.layer_masks, min_max_scale(maps), atol=0, rtol=0)
    torch.testing.assert_close(result.masks, min_max_scale(maps.mean(dim=1)), atol=0, rtol=0)
