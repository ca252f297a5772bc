"""Seconds per image of attention flow, deit_tiny (197 tokens, 12 blocks) on CPU, against networkx.

  1. VITAttentionFlow on deit_tiny (seeded random init, qkv weights x4 for peaky attention), one
     image per call: median seconds per image, and the share spent in the max-flow solver.
  2. Capacity scale: S = 1e7 against the default 2**30 on the same graph, interleaved.
  3. networkx preflow-push on float capacities: the whole row on a 3-block, 17-token model next
     to ours, and a few deit_tiny sinks extrapolated to all 197.

The load average is printed before and after: on a shared machine, compare ratios and medians.

    python benchmarks/bench_flow.py [--images 5] [--threads 2] [--networkx-sinks 1]
"""
import argparse
import statistics
import time

import numpy as np
import timm
import torch

from vit_explain.math.flow import DEFAULT_SCALE, flow_capacities, max_flow_values
from vit_explain.methods.flow import VITAttentionFlow
from vit_explain.recording import AttentionRecorder


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def qkv4(model):
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(4)
    return model.eval()


def recorded(model, x):
    with AttentionRecorder(model) as rec:
        rec.forward(x)
    return [a.detach() for a in rec.attentions]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def networkx_row(capacities, sinks):
    """Max flow from (L, 0) to (0, j) for j in sinks on the literal float graph; (seconds, values)."""
    import networkx as nx
    from networkx.algorithms.flow import preflow_push
    blocks, n, _ = capacities.shape
    start = time.perf_counter()
    graph = nx.DiGraph()
    for layer in range(1, blocks + 1):
        q = capacities[layer - 1]
        graph.add_edges_from(((layer, i), (layer - 1, j), {"capacity": float(q[i, j])})
                             for i in range(n) for j in range(n))
    values = [nx.maximum_flow_value(graph, (blocks, 0), (0, j), flow_func=preflow_push) for j in sinks]
    return time.perf_counter() - start, np.array(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--networkx-sinks", type=int, default=1,
                        help="deit_tiny sinks to solve with networkx (each takes seconds); 0 skips")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {loadavg()}  (threads={args.threads})")

    torch.manual_seed(0)
    model = qkv4(timm.create_model("deit_tiny_patch16_224", pretrained=False))
    x = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    explainer = VITAttentionFlow(model)
    explainer(x[:1])  # warm-up
    totals, solver = [], []
    readout = np.eye(197)[0]
    for i in range(args.images):
        total, _ = timed(lambda: explainer(x[i:i + 1]))
        caps = flow_capacities(recorded(model, x[i:i + 1]), 0)
        flow, _ = timed(lambda: max_flow_values(caps, readout))
        totals.append(total)
        solver.append(flow)
    print(f"deit_tiny attention flow: {statistics.median(totals):.2f} s/image median "
          f"(min {min(totals):.2f}, max {max(totals):.2f}, {args.images} images); "
          f"max-flow solver alone {statistics.median(solver):.2f} s = "
          f"{statistics.median(solver) / 197 * 1e3:.1f} ms per sink")

    caps = flow_capacities(recorded(model, x[:1]), 0)
    scales = {"1e7": 1e7, "2**30": DEFAULT_SCALE}
    times = {name: [] for name in scales}
    for _ in range(3):
        for name, scale in scales.items():
            times[name].append(timed(lambda: max_flow_values(caps, readout, scale=scale))[0])
    small_vs_default = statistics.median(times["1e7"]) / statistics.median(times["2**30"])
    print("capacity scale: " + ", ".join(f"S={n} {statistics.median(t):.2f} s" for n, t in times.items())
          + f" (ratio {small_vs_default:.2f})")

    torch.manual_seed(0)
    small = qkv4(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                   depth=3, embed_dim=48, num_heads=3))
    small_caps = flow_capacities(recorded(small, torch.randn(1, 3, 32, 32)), 0)
    ours_t, ours = timed(lambda: max_flow_values(small_caps, np.eye(17)[0]))
    nx_t, theirs = networkx_row(small_caps, range(17))
    print(f"small model (3 blocks, 17 tokens): ours {ours_t * 1e3:.1f} ms, networkx {nx_t * 1e3:.1f} ms, "
          f"max |difference| {np.abs(ours - theirs).max():.1e}")
    if args.networkx_sinks:
        sinks = list(range(1, args.networkx_sinks + 1))
        nx_t, values = networkx_row(caps, sinks)
        print(f"deit_tiny networkx: {nx_t:.1f} s for {len(sinks)} sink(s) incl. graph building, "
              f"~{nx_t / len(sinks) * 197 / 60:.1f} min per image extrapolated; "
              f"max |difference| to ours {np.abs(values - max_flow_values(caps, readout)[sinks]).max():.1e}")
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
