"""The relevance math against a literal, per-sample transcription of design.md."""
import pytest
import torch

from tests.helpers import literal_rollout
from vit_explain.math import (attention_rollout, discard_lowest, fuse_heads, gradient_rollout,
                              readout_rows, scale_to_max, tokens_to_grid)
from vit_explain.math.select import kth_smallest


def random_attention(batch=3, layers=4, heads=3, n=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(layers, batch, heads, n, n, generator=g) * 3
    return list(logits.softmax(-1)), list(torch.randn(layers, batch, heads, n, n, generator=g))


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_rollout_equals_literal_product(fusion, ratio):
    attentions, _ = random_attention()
    readout = readout_rows(3, 17, 1, "token")
    rows = attention_rollout(attentions, readout, fusion, ratio)
    for b in range(3):
        expected = literal_rollout(torch.stack([a[b] for a in attentions]), fusion, ratio)[0]
        torch.testing.assert_close(rows[b, 0].double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_gradient_rollout_equals_literal_product(fusion):
    attentions, grads = random_attention(seed=1)
    rows = gradient_rollout(attentions, grads, readout_rows(3, 17, 1, "token"), fusion, 0.9)
    for b in range(3):
        expected = literal_rollout(torch.stack([a[b] for a in attentions]), fusion, 0.9,
                                   grad=torch.stack([g[b] for g in grads]))[0]
        torch.testing.assert_close(rows[b, 0].double(), expected, atol=1e-6, rtol=0)


def test_average_pooling_reads_the_mean_of_the_patch_rows():
    attentions, _ = random_attention()
    full = literal_rollout(torch.stack([a[0] for a in attentions]), "mean", 0.0)
    rows = attention_rollout(attentions, readout_rows(3, 17, 1, "avg"), "mean", 0.0)
    torch.testing.assert_close(rows[0, 0].double(), full[1:].mean(0), atol=1e-6, rtol=0)


def test_discard_is_per_sample_and_keeps_the_class_token():
    fused = torch.stack([torch.arange(25.0), torch.arange(25.0).flip(0)]).view(2, 5, 5)
    fused[0, 0, 0] = -1  # the smallest entry of sample 0, yet protected; sample 1's is its largest
    out = discard_lowest(fused, 0.8)
    assert out[0, 0, 0] == -1
    assert [(out[b] != 0).sum().item() for b in range(2)] == [6, 5]
    torch.testing.assert_close(out[1], discard_lowest(fused[1:], 0.8)[0])
    assert sorted(out[1].flatten().tolist())[-5:] == [20, 21, 22, 23, 24]
    # both selection paths (fewer discarded than kept, and the reverse) agree
    for ratio in (0.2, 0.8):
        kept = discard_lowest(fused, ratio)
        assert [(kept[b] != 0).sum().item() for b in range(2)] == [25 - int(25 * ratio) + 1, 25 - int(25 * ratio)]


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_extreme_discard_gives_finite_maps(fusion):
    attentions, grads = random_attention(n=10)
    readout = readout_rows(3, 10, 1, "token")
    for rows in [attention_rollout(attentions, readout, fusion, 0.99),
                 gradient_rollout(attentions, grads, readout, fusion, 0.99)]:
        maps = scale_to_max(tokens_to_grid(rows[:, 0], 1, (3, 3)))
        assert torch.isfinite(maps).all()


def test_all_zero_map_stays_zero_and_others_peak_at_one():
    maps = torch.stack([torch.zeros(2, 3), torch.arange(6.0).view(2, 3)])
    scaled = scale_to_max(maps)
    assert torch.equal(scaled[0], torch.zeros(2, 3))
    assert scaled[1].max() == 1 and scaled[1, 0, 1] == pytest.approx(0.2)


def test_tokens_to_grid_drops_prefix_and_keeps_non_square_order():
    relevance = torch.arange(2 + 6.0).view(1, 8)
    grid = tokens_to_grid(relevance, 2, (2, 3))
    assert grid.tolist() == [[[2, 3, 4], [5, 6, 7]]]
    with pytest.raises(ValueError, match="do not fill a 3x3 grid"):
        tokens_to_grid(relevance, 2, (3, 3))


@pytest.mark.parametrize("heads", [1, 2, 3, 12])
def test_fuse_heads_equals_torchs_reductions(heads):
    g = torch.Generator().manual_seed(heads)
    # heads not outermost in memory, as a permuted qkv can leave them
    attention = torch.randn(2, 9, heads, 9, generator=g).softmax(-1).transpose(1, 2)
    attention[0, 0, 0, 0] = float("nan")
    for fusion, reduce in (("max", attention.amax), ("min", attention.amin)):
        fused = fuse_heads(attention, fusion)
        assert fused.is_contiguous() and torch.equal(fused.nan_to_num(-1), reduce(1).nan_to_num(-1))
    mean = fuse_heads(attention, "mean")
    assert mean.is_contiguous() and torch.isnan(mean[0, 0, 0])
    torch.testing.assert_close(mean, attention.mean(1), atol=1e-7, rtol=0, equal_nan=True)
    if heads == 3:  # the demo's and deit_tiny's heads: the same bits as mean()
        assert torch.equal(mean.nan_to_num(-1), attention.mean(1).nan_to_num(-1))


def test_fuse_heads_rejects_unknown_fusion():
    with pytest.raises(ValueError, match="mean, max, min"):
        fuse_heads(torch.rand(1, 2, 3, 3), "median")


def selection_cases():
    """Rows a selection could get wrong: attention-like, runs of zeros, ties, sorted, rows whose
    every ninth entry is unlike the rest, float64, short rows."""
    g = torch.Generator().manual_seed(0)
    attention = (torch.randn(4, 3, 97, 97, generator=g) * 3).softmax(-1)
    clamped = (attention * torch.randn(4, 3, 97, 97, generator=g)).mean(1).clamp(min=0).flatten(1)
    misleading = torch.rand(2, 97 * 97, generator=g) * 0.5
    misleading[:, ::9] = 1.0  # exactly the entries a stride-9 sample reads
    return {
        "attention": attention.amax(1).flatten(1),
        "zeros": clamped,
        "ties": torch.randint(0, 5, (3, 9409), generator=g).float(),
        "sorted": torch.arange(2 * 9409.0).view(2, 9409),
        "misleading": misleading,
        "float64": torch.rand(2, 9409, dtype=torch.float64, generator=g),
        "short": torch.rand(3, 50, generator=g),
    }


@pytest.mark.parametrize("case", list(selection_cases()))
def test_kth_smallest_equals_a_full_sort(case):
    flat = selection_cases()[case]
    size = flat.shape[1]
    for k in (1, 2, size // 3, int(size * 0.9), size - 1, size):
        expected = flat.sort(dim=1).values[:, k - 1:k]
        assert torch.equal(kth_smallest(flat, k), expected), k


def test_kth_smallest_rejects_a_rank_outside_the_row():
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        kth_smallest(torch.rand(1, 4), 5)
