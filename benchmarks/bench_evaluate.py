"""Seconds for deletion + insertion (20 steps each) of one deit_tiny image, per method.

Target: <= 3 s per method on a 2-core CPU. The map is computed first (not timed); the timed part
is the 42 perturbed copies going through the model in batches.

    python benchmarks/bench_evaluate.py [--repeats 5] [--steps 20]
"""
import argparse
import statistics

import timm
import torch

from common import machine, timed
from vit_explain.cli.options import Options
from vit_explain.methods.table import METHODS
from vit_explain.methods.evaluation import deletion_insertion


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    for name in METHODS:
        result = METHODS[name].build(model, Options()).explain(x, None)
        seconds = statistics.median(
            timed(lambda: deletion_insertion(model, x, result.masks, result.targets, args.steps, "blur"))
            for _ in range(args.repeats))
        print(f"{name:14s} deletion + insertion, {args.steps} steps: {seconds:.2f} s (target <= 3 s)")


if __name__ == "__main__":
    main()
