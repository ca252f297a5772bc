"""Folder mode: throughput against plain timm inference, and peak memory against folder size.

1. images/s of `vit-explain --image_path FOLDER` (rollout, overlays and masks written, or what
   --outputs names) divided by
   images/s of plain inference (the same DataLoader, decoding and preprocessing, fused forward
   under no_grad, nothing written) — target >= 0.8 for rollout.
2. peak resident memory of the vit-explain process for folders of 100 and 1000 small images
   (target: flat), each run in a fresh process.

The model is deit_tiny_patch16_224 unless --model names another timm model (random weights,
saved as a local timm folder: no network). Both timings run from loading the model to the
last image. --skip-memory leaves out part 2.

    python benchmarks/bench_folder.py [--images 64] [--threads 2] [--model deit_small_patch16_224]
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from common import check_device, machine

MEMORY_PROBE = """
import resource, sys
from vit_explain.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_folder(folder: Path, count: int, side: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg")
    return folder


def plain_inference(model_dir: Path, folder: Path, batch_size: int, workers: int, device: str) -> float:
    from vit_explain.io.dataset import image_batches
    from vit_explain.io.images import find_images
    from vit_explain.io.models import load_model
    from vit_explain.io.preprocess import Preprocessor
    start = time.perf_counter()  # like the command's time, from loading the model to the last image
    model = load_model(f"local-dir:{model_dir}", device=device)
    images = find_images(folder)
    with torch.no_grad():
        for batch in image_batches(images, Preprocessor(model), batch_size, workers):
            x = torch.stack([item["tensor"] for item in batch]).to(device, non_blocking=True)
            model(x).argmax(-1).cpu()  # the predictions, as a user would read them
    return len(images) / (time.perf_counter() - start)


def explain_folder(model_dir: Path, folder: Path, out: Path, batch_size: int, workers: int, device: str,
                   outputs: str = "overlay,mask") -> float:
    from vit_explain.cli.main import main
    count = len(list(folder.iterdir()))
    start = time.perf_counter()
    try:
        main(["--image_path", str(folder), "--model", f"local-dir:{model_dir}", "--output-dir", str(out),
              "--batch-size", str(batch_size), "--workers", str(workers), "--device", device, "--outputs", outputs,
              "--quiet", "--overwrite"])
    except SystemExit as exit_info:
        assert exit_info.code == 0, exit_info.code
    return count / (time.perf_counter() - start)


def peak_memory_mb(model_dir: Path, folder: Path, out: Path) -> float:
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, "--image_path", str(folder), "--model",
                             f"local-dir:{model_dir}", "--output-dir", str(out), "--quiet", "--workers", "2"],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--outputs", default="overlay,mask",
                        help="what vit-explain writes per image (overlay-jpg,mask: JPEG overlays)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU run: --device cuda "
                        "--model deit_base_patch16_224 --batch-size 64 --workers 8 --images 1024)")
    args = parser.parse_args()
    check_device(parser, args.device)
    torch.set_num_threads(args.threads)
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        timm.models.save_for_hf(timm.create_model(args.model, pretrained=False), model_dir)
        folder = make_folder(tmp / "images", args.images, 320)
        ratios = []
        for _ in range(args.repeats):  # interleaved
            plain = plain_inference(model_dir, folder, args.batch_size, args.workers, args.device)
            explained = explain_folder(model_dir, folder, tmp / "out", args.batch_size, args.workers, args.device,
                                       args.outputs)
            ratios.append(explained / plain)
            print(f"  plain {plain:.1f} img/s, vit-explain rollout {explained:.1f} img/s, ratio {ratios[-1]:.3f}")
        print(f"{args.model} on {args.device}: folder mode / plain inference, {args.images} images 320x320, "
              f"batch {args.batch_size}, {args.workers} workers, --outputs {args.outputs}: median ratio {np.median(ratios):.3f} (target >= 0.8)")
        for count in () if args.skip_memory else (100, 1000):
            small = make_folder(tmp / f"small{count}", count, 96)
            print(f"peak memory, {count:4d} images: {peak_memory_mb(model_dir, small, tmp / f'out{count}'):.0f} MB")


if __name__ == "__main__":
    main()
