"""Engines: the local engine writing only the Parquet table, and the Ray engine with 1 and 2 actors,
against plain timm inference over the same files.

* plain: the same DataLoader, decoding and preprocessing, fused forward under no_grad, nothing
  written (bench_folder.plain_inference), timed from loading the model;
* local: `vit-explain --outputs parquet` (rollout), in this process, timed from the command's start;
* ray N: `vit-explain --engine ray --actors N` on a local Ray instance started once by this script
  (its start-up is timed apart): timed from the command's start, so actor start-up (each loads torch,
  timm and the model) is in it.

Interleaved: each repeat runs every variant once; reported are the median throughput and the
median over repeats of the ratio to plain inference of the same repeat, with the load average
before and after (the machine is shared). Also measured: decoding + preprocessing per
image on one core, and the explainer's time per batch, the two numbers a cluster estimate needs.

    python benchmarks/bench_engines.py [--images 512] [--repeats 3] [--batch-size 8] [--no-ray]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

from bench_folder import make_folder, plain_inference
from common import machine

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file in the user's home


def command(args: list) -> float:
    from vit_explain.cli.main import main
    start = time.perf_counter()
    try:
        main([str(a) for a in args])
    except SystemExit as exit_info:
        assert exit_info.code == 0, exit_info.code
    return time.perf_counter() - start


def decode_ms(model_dir: Path, folder: Path, count: int = 64) -> float:
    from vit_explain.io.dataset import decode_item
    from vit_explain.io.images import find_images
    from vit_explain.io.models import load_model
    from vit_explain.io.preprocess import Preprocessor
    preprocess = Preprocessor(load_model(f"local-dir:{model_dir}"))
    paths = find_images(folder)[:count]
    start = time.perf_counter()
    for path in paths:
        decode_item(path, preprocess)
    return 1000 * (time.perf_counter() - start) / len(paths)


def batch_ms(model_dir: Path, batch_size: int, repeats: int = 10) -> float:
    from vit_explain import VITAttentionRollout
    from vit_explain.io.models import load_model
    explainer = VITAttentionRollout(load_model(f"local-dir:{model_dir}"))
    x = torch.randn(batch_size, 3, 224, 224)
    explainer.explain(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        explainer.explain(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--no-ray", action="store_true", help="only plain inference and the local engine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        timm.models.save_for_hf(timm.create_model(args.model, pretrained=False), model_dir)
        folder = make_folder(tmp / "images", args.images, 320)
        common = ["--image_path", folder, "--model", f"local-dir:{model_dir}", "--batch-size", args.batch_size,
                  "--quiet", "--overwrite", "--outputs", "parquet"]
        variants = {
            "plain": lambda: args.images / plain_inference(model_dir, folder, args.batch_size, args.workers, "cpu"),
            "local": lambda: command([*common, "--output-dir", tmp / "local", "--workers", args.workers]),
        }
        if not args.no_ray:
            import ray
            start = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            print(f"ray {ray.__version__}: local instance started in {time.perf_counter() - start:.1f} s")
            cpus = os.cpu_count() or 2
            for actors in (1, 2):
                share = min(1.0, (cpus - 1) / actors) if cpus > actors else 0.5
                variants[f"ray {actors} actor{'s' if actors > 1 else ''}"] = (
                    lambda actors=actors, share=share: command(
                        [*common, "--output-dir", tmp / f"ray{actors}", "--engine", "ray", "--actors", actors,
                         "--cpus-per-actor", share]))
        seconds = {name: [] for name in variants}
        for repeat in range(args.repeats):
            for name, timed in variants.items():
                seconds[name].append(timed())
            print(f"  repeat {repeat + 1}: " + ", ".join(f"{n} {args.images / s[-1]:.1f} img/s"
                                                        for n, s in seconds.items()))
        print(f"{args.model}, {args.images} images 320x320, batch {args.batch_size}, median of {args.repeats} "
              "(throughput; ratio to plain inference of the same repeat):")
        for name, values in seconds.items():
            median = statistics.median(values)
            ratio = statistics.median(p / s for p, s in zip(seconds["plain"], values))
            print(f"  {name:14s} {args.images / median:6.1f} img/s  ({median:6.1f} s)  x{ratio:.2f} of plain")
        print(f"decode + preprocess: {decode_ms(model_dir, folder):.1f} ms per image on one core; rollout "
              f"explain: {batch_ms(model_dir, args.batch_size):.0f} ms per batch of {args.batch_size} "
              f"({torch.get_num_threads()} threads)")
        print(machine())
        if not args.no_ray:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
