"""Attention flow against a literal networkx construction of the Abnar & Zuidema graph."""

import numpy as np
import pytest
import timm
import torch

from tests.helpers import assert_state_equal, model_state, peaky
from vit_explain.math.flow import attention_flow, break_ties, flow_capacities, max_flow_values
from vit_explain.methods.flow import VITAttentionFlow
from vit_explain.recording import AttentionRecorder

nx = pytest.importorskip("networkx")
from networkx.algorithms.flow import preflow_push  # noqa: E402

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def tiny_vit(depth=3, **kwargs):
    """3 blocks, 4x4 patches (+ class token unless class_token=False), qkv x4 for peaky attention."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              depth=depth, embed_dim=48, num_heads=3, **kwargs).eval()
    return peaky(model)


@pytest.fixture(scope="module")
def small():
    return tiny_vit()


def recorded(model, x):
    with AttentionRecorder(model) as rec:
        rec.forward(x)
    return [a.detach() for a in rec.attentions]


def literal_capacities(attentions, sample):
    """(L, N, N) float64: Q = (mean over heads + I) / 2, rows renormalised, written out literally."""
    caps = []
    for a in attentions:
        w = a[sample].double().mean(dim=0)
        q = (w + torch.eye(w.shape[-1], dtype=torch.float64)) / 2
        caps.append(q / q.sum(dim=-1, keepdim=True))
    return torch.stack(caps).numpy()


def literal_graph(capacities, weights, integer_scale=None):
    """The paper's graph on all (layer, token) nodes: (l, i) -> (l-1, j) with capacity Q_l[i, j].

    Returns (graph, source). With integer_scale, capacities are rint(scale * c) as Python ints.
    """
    blocks, n, _ = capacities.shape
    cap = (lambda c: int(np.rint(c * integer_scale))) if integer_scale else float
    graph = nx.DiGraph()
    for layer in range(1, blocks + 1):
        for i in range(n):
            for j in range(n):
                graph.add_edge((layer, i), (layer - 1, j), capacity=cap(capacities[layer - 1, i, j]))
    top = np.flatnonzero(weights)
    if top.size == 1:
        return graph, (blocks, int(top[0]))
    for i in top:
        graph.add_edge("source", (blocks, int(i)), capacity=cap(weights[i]))
    return graph, "source"


def networkx_flows(capacities, weights, integer_scale=None):
    graph, source = literal_graph(capacities, weights, integer_scale)
    return np.array([nx.maximum_flow_value(graph, source, (0, j), flow_func=preflow_push)
                     for j in range(capacities.shape[-1])], dtype=np.float64)


def class_readout(batch, n):
    readout = torch.zeros(batch, n)
    readout[:, 0] = 1
    return readout


def test_matches_networkx_preflow_push(small):
    attentions = recorded(small, X[:2])
    rows = attention_flow(attentions, class_readout(2, 17))
    assert rows.shape == (2, 17) and rows.dtype == torch.float64
    for b in range(2):
        capacities = literal_capacities(attentions, b)
        np.testing.assert_allclose(flow_capacities(attentions, b), capacities, atol=1e-15, rtol=0)
        flows = networkx_flows(capacities, np.eye(17)[0])
        expected = flows / flows.sum()
        np.testing.assert_allclose(rows[b].numpy(), expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(rows[b].numpy(), expected, atol=1e-7, rtol=0)  # measured ~1e-9
        assert expected.std() > 1e-3  # peaky enough for the comparison to mean something
    patches = expected[1:].reshape(4, 4)
    mask = VITAttentionFlow(small)(X[1:2])
    assert mask.shape == (4, 4) and mask.dtype == np.float32
    np.testing.assert_allclose(mask, patches / patches.max(), atol=1e-4)


def test_batch_equals_single_images(small):
    explainer = VITAttentionFlow(small)
    batch = explainer(X)
    assert batch.shape == (4, 4, 4)
    for b in range(4):
        np.testing.assert_allclose(batch[b], explainer(X[b:b + 1]), atol=1e-5)


def test_model_handed_back_unchanged(small):
    small.train()
    before = model_state(small)
    VITAttentionFlow(small)(X[:2])
    assert_state_equal(before, model_state(small))
    small.eval()


@pytest.mark.parametrize("scale", [50, 1000])
def test_integer_scaling_error_within_cut_bound(small, scale):
    """|flow(rint(S c)) / S - flow(c)| <= max(|C|, |C'|) * 0.5 / S, C and C' minimum cuts of the
    float and the rounded problem. At these small S the error is visible."""
    capacities = literal_capacities(recorded(small, X[:1]), 0)
    weights = np.eye(17)[0]
    ours = max_flow_values(capacities, weights, scale=scale)
    exact = networkx_flows(capacities, weights)
    # The collapsed, pruned scipy graph gives exactly the literal graph's integer max flow.
    integer = networkx_flows(capacities, weights, integer_scale=scale)
    np.testing.assert_array_equal(ours * scale, integer)
    float_graph, source = literal_graph(capacities, weights)
    int_graph, _ = literal_graph(capacities, weights, integer_scale=scale)
    errors = np.abs(ours - exact)
    assert errors.max() > 0
    for j in range(17):
        sizes = []
        for graph, value in ((float_graph, exact[j]), (int_graph, integer[j])):
            cut_value, (side, _) = nx.minimum_cut(graph, source, (0, j), flow_func=preflow_push)
            assert cut_value == pytest.approx(value, abs=1e-9)
            sizes.append(sum(1 for u in side for v, e in graph[u].items() if v not in side and e["capacity"] > 0))
        assert errors[j] <= max(sizes) * 0.5 / scale + 1e-12, (j, errors[j], sizes)


@pytest.mark.parametrize("class_token", [False, True])
def test_average_pooled_model(class_token):
    """Super-source with capacity 1/num_patches to every patch of the last layer."""
    model = tiny_vit(class_token=class_token, global_pool="avg")
    n, prefix = 16 + class_token, int(class_token)
    attentions = recorded(model, X[:1])
    capacities = literal_capacities(attentions, 0)
    weights = np.r_[np.zeros(prefix), np.full(16, 1 / 16)]
    flows = networkx_flows(capacities, weights)
    mask = VITAttentionFlow(model)(X[:1])
    patches = flows[prefix:].reshape(4, 4)
    np.testing.assert_allclose(mask, patches / patches.max(), atol=1e-4)
    readout = torch.from_numpy(weights)[None]
    np.testing.assert_allclose(attention_flow(attentions, readout)[0].numpy(), flows / flows.sum(), atol=1e-7)


def test_one_block_model_and_low_precision_attention():
    model = tiny_vit(depth=1)
    attentions = recorded(model, X[:1])
    flows = networkx_flows(literal_capacities(attentions, 0), np.eye(17)[0])
    for dtype, atol in ((torch.float32, 1e-7), (torch.bfloat16, 1e-2)):
        row = attention_flow([a.to(dtype) for a in attentions], class_readout(1, 17))[0]
        np.testing.assert_allclose(row.numpy(), flows / flows.sum(), atol=atol)


def test_compat_is_rejected(small):
    with pytest.raises(ValueError, match="rollout only"):
        VITAttentionFlow(small, compat="vit-explain")


def test_deit_tiny_one_image(deit_tiny_qkv4):
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    mask = VITAttentionFlow(deit_tiny_qkv4)(x)  # speed: benchmarks/bench_flow.py
    assert mask.shape == (14, 14) and np.isfinite(mask).all() and mask.max() == 1


# ---- saturation and the tie-break ------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_attentions():
    """The shipped demo model (trained) on its 12 samples, with each sample's object mask."""
    from tests.test_demo import load_demo
    return load_demo()


def test_trained_flow_saturates_at_the_source_s_capacity(demo_attentions):
    """The plateaus are the true max flow: networkx on the literal graph gives the tied patches
    exactly the class token's whole capacity (1), and the other patches less."""
    model, x, _ = demo_attentions
    capacities = literal_capacities(recorded(model, x[:1]), 0)
    weights = np.eye(capacities.shape[-1])[0]
    ours = max_flow_values(capacities, weights)
    tied = np.flatnonzero(ours[1:] >= 1 - 1e-6) + 1
    below = int(np.argmin(ours[1:])) + 1
    assert len(tied) >= 5
    graph, source = literal_graph(capacities, weights)
    for token in (tied[0], tied[-1], below):
        value = nx.maximum_flow_value(graph, source, (0, int(token)), flow_func=preflow_push)
        assert value == pytest.approx(ours[token], abs=1e-7)
    assert ours[tied[0]] == pytest.approx(1, abs=1e-7) and ours[below] < 0.99


def test_tie_break_makes_the_maximum_point_at_the_object(demo_attentions):
    from tests.test_demo import peaks_on_object
    model, x, objects = demo_attentions
    raw = VITAttentionFlow(model, tie_break="none")(x)
    broken = VITAttentionFlow(model)(x)
    assert sum(peaks_on_object(m, o) for m, o in zip(raw, objects)) <= 2  # the first tied patch: top left
    assert sum(peaks_on_object(m, o) for m, o in zip(broken, objects)) == 12
    np.testing.assert_allclose(broken, raw, atol=2e-6)  # values barely move


def test_break_ties_orders_only_inside_a_tie():
    flows = np.array([0.0, 0.3, 1.0, 0.3 + 4e-7, 1.0 - 3e-7, 0.7, 1.0])
    secondary = np.array([9.0, 1.0, 1.0, 0.5, 3.0, 5.0, 2.0])
    result = break_ties(flows, secondary, tolerance=1e-6)
    assert result[0] == 0                                   # no flow: no relevance invented
    assert np.argsort(result).tolist() == [0, 3, 1, 5, 2, 6, 4]  # groups in flow order, ties by secondary
    assert np.abs(result - flows).max() <= 1.5e-6
    with pytest.raises(ValueError, match="tie_break must be one of rollout, none"):
        VITAttentionFlow(tiny_vit(depth=1), tie_break="first")
