"""Cost of explaining relative to plain inference, deit_tiny on CPU, every method.

Interleaves each explainer with its baseline in one process and reports median ratios:
  attention methods without gradients  / fused forward under no_grad
        (rollout target <= 1.15 at B=8)
  gradient methods                     / fused forward + backward of the target logit to the
                                         input only, parameters frozen
        (grad rollout target <= 1.25 at B=8)
Attention flow takes seconds per image, so it gets 3 repeats instead of --repeats.

    python benchmarks/bench_core.py [--repeats 15] [--threads 2] [--methods rollout,grad-rollout]
"""
import argparse

import timm
import torch

from common import interleaved, machine
from vit_explain.cli.options import Options
from vit_explain.methods.table import METHODS

SLOW_REPEATS = {"flow": 3}  # seconds per image: a few repeats say enough (more in bench_flow.py)


def forward_only(model, x):
    with torch.no_grad():
        model(x)


def forward_backward_to_input(model, x, target):
    frozen = [p.requires_grad_(False) for p in model.parameters()]
    x = x.detach().requires_grad_(True)
    torch.autograd.grad(model(x)[:, target].sum(), x)
    for p in frozen:
        p.requires_grad_(True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224)
        for name in args.methods.split(","):
            explainer = METHODS[name].build(model, Options())
            base = ((lambda: forward_backward_to_input(model, x, 243)) if METHODS[name].class_specific
                    else (lambda: forward_only(model, x)))
            pair = {name: (lambda e=explainer: e.explain(x, 243), base)}
            (ratio, t_explain, t_base), = interleaved(pair, SLOW_REPEATS.get(name, args.repeats)).values()
            kind = "forward+backward" if METHODS[name].class_specific else "forward"
            print(f"B={batch:<2} {name:14s} / {kind:17s} ratio {ratio:.3f} "
                  f"(explain {t_explain * 1e3:.1f} ms, baseline {t_base * 1e3:.1f} ms)", flush=True)


if __name__ == "__main__":
    main()
