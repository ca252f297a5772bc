"""Attention flow (Abnar & Zuidema, 2020), exact, on scipy's integer max-flow solver.

The graph (design.md): per block l = 1..L, W_l = mean over heads of the attention and
Q_l = (W_l + I) / 2 with rows renormalised (rollout's mixing matrix without discard). Node (l, i)
is token i after block l, (0, j) is input token j; the edge (l, i) -> (l-1, j) has capacity
Q_l[i, j]. The relevance of input token j is the max flow from the readout to (0, j); the row over
all N input tokens is then normalised to sum 1.

Readout (the source). Class-token models: the source is (L, cls). Average-pooled models: a
super-source with an edge of capacity 1/num_patches to every (L, patch i). Both are one
`readout` vector of source capacities over the last layer's tokens (`readout_rows` of grid.py);
a one-hot readout uses the node itself as the source.

One graph per sample, only the sink moves. Layer 0 is collapsed into a single sink node T: for
input token j, the N edges (1, i) -> T get the capacities Q_1[i, j] by overwriting their slots in
the CSR data array, so the graph is built once per sample. This is exact: every (0, j') with
j' != j has no way out, so it carries no flow to (0, j). Nodes the source cannot reach (all of
layer L but the source for class-token models) and edges whose integer capacity is 0 are left out.

Integer capacities and their error. scipy.sparse.csgraph.maximum_flow accepts only integer
capacities and works in int32 (capacities, per-edge flows, and a 2**31 - 1 "infinite" sentinel in
its Dinic search). Every capacity is therefore rint(S * c) with S = DEFAULT_SCALE = 2**30: no
edge exceeds S (Q <= 1, readout <= 1), and a flow is at most the source's capacity,
sum_i rint(S * readout_i) <= S + N / 2 < 2**31 - 1, so nothing overflows, with a factor of ~2 to
spare. Dinic's running time does not depend on the capacities' size (measured: S = 1e7 and 2**30
run equally fast), so the largest safe S costs nothing. Q entries are nowhere near 0.5 / S
(the smallest is ~4e-5 for deit_tiny with qkv x4: (W + I) / 2 keeps entries away from 0), so in
practice no edge is dropped.

Error bound: each capacity moves by at most 0.5 / S, so every cut's capacity moves by at most
|cut| * 0.5 / S, and the max flow (the smallest cut) moves by at most
max(|C|, |C'|) * 0.5 / S, where C and C' are minimum cuts of the exact and of the rounded
problem and |C| counts their edges; never more than #edges * 0.5 / S (deit_tiny: 388k edges,
1.8e-4, a gross overestimate: its minimum cuts have 197 edges, the source's or the sink's, so
9e-8). Measured
against networkx's preflow-push on float capacities (3 blocks, 17 tokens, min cuts of 17-33
edges, bound 1.5e-8): raw flows differ by <= 4e-9, the normalised rows by <= 1.5e-10.
tests/test_flow.py checks the cut bound at S = 50 and 1000, where the error is visible.

Speed: scipy's Dinic is the fastest solver tried; a good part of each call goes into the two
transposes maximum_flow makes to add reverse edges (scipy's API cannot skip them).
Edmonds-Karp and networkx's preflow-push are orders of magnitude slower. A max-flow solver is
inherently per sample, so the batch is a Python loop (a 2-process pool over the sinks did not
pay on a shared 2-core machine). Measured timings: the README's benchmark table and
benchmarks/bench_flow.py.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

DEFAULT_SCALE = 2 ** 30
INT32_MAX = 2 ** 31 - 1


def flow_capacities(attentions: Sequence[torch.Tensor], sample: int) -> np.ndarray:
    """Q = (mean_h A + I) / 2, rows renormalised, for one sample: (L, N, N) float64 in forward order.

    attentions: post-softmax (B, H, N, N) per block. Computed in numpy, where the solver works:
    torch's thread pool made these small ops take seconds on a CPU shared with other processes.
    """
    fused = np.stack([_float64(a[sample]).mean(axis=0) for a in attentions])
    mixed = (fused + np.eye(fused.shape[-1])) / 2
    return mixed / mixed.sum(axis=-1, keepdims=True)


TIE_BREAKS = ("rollout", "none")


def check_tie_break(tie_break: str) -> None:
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {', '.join(TIE_BREAKS)}; got {tie_break!r}")


def attention_flow(attentions: Sequence[torch.Tensor], readout: torch.Tensor,
                   scale: float = DEFAULT_SCALE, method: str = "dinic", tie_break: str = "none") -> torch.Tensor:
    """Attention flow relevance of every input token, normalised to sum 1: (B, N) float64.

    attentions: post-softmax (B, H, N, N) per block, in forward order.
    readout:    (B, N) or (B, 1, N) source capacities over the last layer's tokens: one-hot at the
                class token, or 1/num_patches on every patch for average-pooled models.
    scale:      integer scale S of the capacities (see the module docstring for the error bound).
    method:     scipy's "dinic" (default) or "edmonds_karp" (~150x slower on these graphs).
    tie_break:  "none": the max flows as they are; "rollout": tokens whose flows tie (see
                `break_ties`) ordered by their path-product relevance in the same graph.
    """
    check_tie_break(tie_break)
    batch, _, n, _ = attentions[0].shape
    weights = _float64(readout).reshape(readout.shape[0], -1)
    if weights.shape != (batch, n):
        raise ValueError(f"readout must hold one weight per token, (B={batch}, N={n}); got {tuple(readout.shape)}")
    rows = np.zeros((batch, n))
    for b in range(batch):                                 # one max-flow problem set per sample
        capacities = flow_capacities(attentions, b)
        flows = max_flow_values(capacities, weights[b], scale, method)
        if tie_break == "rollout":
            flows = break_ties(flows, path_products(capacities, weights[b]), tolerance=TIE_TOLERANCE)
        total = flows.sum()
        rows[b] = flows / total if total > 0 else flows
    return torch.from_numpy(rows).to(attentions[0].device)


# Flows closer than this (in units of the source's capacity, 1) are one value: far above the
# integer capacities' rounding error (1e-7 at most, module docstring), far below any visible step.
TIE_TOLERANCE = 1e-6


def path_products(capacities: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N,) the readout pushed through every block's Q as a product, weights @ Q_L @ ... @ Q_1:
    the sum over all paths of the product of their capacities (attention rollout of the same
    graph, mean heads, no discard)."""
    row = np.asarray(weights, dtype=np.float64)
    for block in capacities[::-1]:
        row = row @ block
    return row


def break_ties(flows: np.ndarray, secondary: np.ndarray, tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """flows with ties ordered by secondary, nothing else reordered.

    Why: the max flow saturates. The readout can send at most its own capacity (1), and every
    token that can take all of it scores exactly 1, so large plateaus tie at the maximum (the
    true max flow: tests/test_flow.py checks it against networkx). Without an order inside a
    plateau, the argmax is its first token and deletion removes it in index order.

    Groups: flows sorted, a new group wherever the gap to the previous value exceeds tolerance.
    Each token becomes its group's largest flow plus (tolerance / 2) * secondary / max(secondary),
    so groups keep their order (they are more than tolerance apart) and the values move by at
    most 1.5 * tolerance."""
    flows = np.asarray(flows, dtype=np.float64)
    if flows.size == 0:
        return flows
    order = np.argsort(flows, kind="stable")
    ordered = flows[order]
    group = np.concatenate([[0], np.cumsum(np.diff(ordered) > tolerance)])
    group_max = np.zeros(group[-1] + 1)
    np.maximum.at(group_max, group, ordered)
    top = float(np.max(secondary)) if np.size(secondary) else 0.0
    nudge = np.clip(secondary / top, 0, 1) if top > 0 else np.zeros_like(flows)
    result = np.empty_like(flows)
    result[order] = group_max[group]
    # tokens without any flow stay at exactly 0: a nudge would invent relevance
    return np.where(flows > 0, result + tolerance / 2 * nudge, flows)


def _float64(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype not in (torch.float32, torch.float64):  # half, bfloat16: no numpy counterpart
        tensor = tensor.float()
    return tensor.numpy().astype(np.float64)


def integer_capacities(values: np.ndarray, scale: float) -> np.ndarray:
    """rint(scale * values) as int64, refusing anything scipy's int32 solver could overflow on."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * scale)
    if scaled.size and (scaled.min() < 0 or scaled.max() > INT32_MAX):
        raise ValueError(f"capacities scaled by {scale:g} leave [0, 2**31 - 1]; use a smaller scale")
    return scaled.astype(np.int64)


def max_flow_values(capacities: np.ndarray, weights: np.ndarray, scale: float = DEFAULT_SCALE,
                    method: str = "dinic") -> np.ndarray:
    """Un-normalised max flow to every input token for one sample, in units of 1 (float64, (N,)).

    capacities: (L, N, N) float Q matrices in forward order; weights: (N,) source capacities.
    """
    blocks, n, _ = capacities.shape
    caps = integer_capacities(capacities, scale)          # (L, N, N)
    source_caps = integer_capacities(weights, scale)       # (N,)
    if source_caps.sum() > INT32_MAX:
        raise ValueError(f"the source's capacity scaled by {scale:g} exceeds 2**31 - 1; use a smaller scale")

    # Node ids: (l, i) -> (l - 1) * n + i for l = 1..L; T (all of layer 0) = L * n; super-source after it.
    sink = blocks * n
    edges = []                                             # (tails, heads, integer capacities)
    top = np.flatnonzero(source_caps)
    if top.size == 1:
        # One-hot readout: (L, cls) itself is the source, as in the paper (its weight is moot: the
        # node's out-capacity is sum_j Q_L[cls, j] = 1 anyway).
        source = (blocks - 1) * n + int(top[0])
    else:
        source = sink + 1
        edges.append((np.full(top.size, source), (blocks - 1) * n + top, source_caps[top]))
    reached = np.zeros(n, dtype=bool)
    reached[top] = True
    for layer in range(blocks, 1, -1):                     # block `layer`: (layer, i) -> (layer - 1, j)
        block = caps[layer - 1]
        i, j = np.nonzero(block * reached[:, None])        # rows the source reaches, capacities > 0
        edges.append(((layer - 1) * n + i, (layer - 2) * n + j, block[i, j]))
        reached = np.zeros(n, dtype=bool)
        reached[j] = True
    first = np.flatnonzero(reached)                        # layer-1 nodes: one edge each to T,
    edges.append((first, np.full(first.size, sink), np.ones(first.size, np.int64)))  # set per token
    tails, heads, data = (np.concatenate(part) for part in zip(*edges))
    graph = csr_matrix((data.astype(np.int32), (tails, heads)), shape=(sink + 2, sink + 2))
    graph.sort_indices()
    slots = graph.indptr[first]                            # where the (1, i) -> T capacities sit

    flows = np.zeros(n, dtype=np.float64)
    if first.size == 0:
        return flows
    for token in range(n):
        incoming = caps[0][first, token]
        if not incoming.any():
            continue
        graph.data[slots] = incoming
        flows[token] = maximum_flow(graph, source, sink, method=method).flow_value / scale
    return flows
