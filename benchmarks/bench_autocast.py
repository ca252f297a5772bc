"""Do maps made under autocast stay within 1e-2 of fp32 maps? (The condition for offering an
--autocast option.)

Every attention method is run on the same inputs in fp32 and under torch.autocast with bf16
and fp16; the script prints the largest absolute difference between the maps (each scaled to
a maximum of 1). Random weights give near-uniform attention, so the query/key weights are
scaled by 4, as in the tests, to give the maps real peaks.

    python benchmarks/bench_autocast.py [--device cuda] [--model deit_base_patch16_224] [--batch 8]
"""
import argparse

import timm
import torch

from common import check_device, machine
from vit_explain.cli.options import Options
from vit_explain.methods.table import METHODS

TOLERANCE = 1e-2
DEFAULT_METHODS = [m for m in METHODS if m not in ("flow", "grad-cam")]  # attention methods; flow is slow


def peaky_model(name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval().to(device)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(4)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    check_device(parser, args.device)
    torch.set_num_threads(args.threads)
    print(machine())
    model = peaky_model(args.model, args.device)
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(args.device)
    worst = {}
    for fusion in ("max", "mean"):
        options = Options(head_fusion=fusion)
        for name in args.methods.split(","):
            if fusion == "mean" and name not in ("rollout", "grad-rollout"):
                continue
            explainer = METHODS[name].build(model, options)
            reference = explainer.explain(x, 243).masks.float()
            for dtype in (torch.bfloat16, torch.float16):
                with torch.autocast(torch.device(args.device).type, dtype=dtype):
                    masks = explainer.explain(x, 243).masks.float()
                deviation = float((masks - reference).abs().max())
                label = f"{name} ({fusion})" if name in ("rollout", "grad-rollout") else name
                print(f"{label:22s} {str(dtype).split('.')[-1]:9s} max |autocast - fp32| {deviation:.4f}")
                worst[dtype] = max(worst.get(dtype, 0.0), deviation)
    for dtype, deviation in worst.items():
        verdict = "within" if deviation <= TOLERANCE else "NOT within"
        print(f"{args.model} on {args.device}, {str(dtype).split('.')[-1]}: worst {deviation:.4f}, "
              f"{verdict} {TOLERANCE}")


if __name__ == "__main__":
    main()
