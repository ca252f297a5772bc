"""Cost of explaining relative to plain inference, deit_tiny on CPU.

Interleaves the explainer and its baseline in one process and reports median ratios:
  rollout       / fused forward under no_grad                      (target <= 1.15 at B=8)
  grad rollout  / fused forward + backward of the target logit to
                  the input only, parameters frozen                 (target <= 1.25 at B=8)

    python benchmarks/bench_core.py [--repeats 15] [--threads 2]
"""
import argparse
import os
import statistics
import time

import timm
import torch

from vit_explain import VITAttentionGradRollout, VITAttentionRollout


def forward_only(model, x):
    with torch.no_grad():
        model(x)


def forward_backward_to_input(model, x, target):
    frozen = [p.requires_grad_(False) for p in model.parameters()]
    x = x.detach().requires_grad_(True)
    logits = model(x)
    torch.autograd.grad(logits[:, target].sum(), x)
    for p in frozen:
        p.requires_grad_(True)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model, batch, repeats):
    x = torch.randn(batch, 3, 224, 224)
    rollout = VITAttentionRollout(model, head_fusion="max", discard_ratio=0.9)
    grad_rollout = VITAttentionGradRollout(model, discard_ratio=0.9)
    pairs = {
        "rollout / forward": (lambda: rollout(x), lambda: forward_only(model, x)),
        "grad rollout / forward+backward": (lambda: grad_rollout(x, 243),
                                            lambda: forward_backward_to_input(model, x, 243)),
    }
    for explain, base in pairs.values():  # warm-up
        explain(), base()
    ratios = {name: [] for name in pairs}
    times = {name: [] for name in pairs}
    for _ in range(repeats):
        for name, (explain, base) in pairs.items():
            t_base, t_explain = timed(base), timed(explain)
            ratios[name].append(t_explain / t_base)
            times[name].append((t_explain, t_base))
    for name in pairs:
        explain_ms = statistics.median(t[0] for t in times[name]) * 1e3
        base_ms = statistics.median(t[1] for t in times[name]) * 1e3
        print(f"B={batch:<2} {name:32s} ratio {statistics.median(ratios[name]):.3f} "
              f"(explain {explain_ms:.1f} ms, baseline {base_ms:.1f} ms)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {args.threads}, "
          f"loadavg {open('/proc/loadavg').read().split()[:3] if os.path.exists('/proc/loadavg') else '?'}")
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    for batch in (1, 8):
        measure(model, batch, args.repeats)


if __name__ == "__main__":
    main()
