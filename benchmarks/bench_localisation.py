"""Class-specific localisation: does the map of one class point at that class's object, and not
at the other object in the image?

A small ViT learns to name the two classes present in synthetic two-object images
(localisation_data.py; trained here with the target split evenly between the two classes, a few
minutes on a 2-core CPU, cached in benchmarks/.cache). Every test image is explained once for each
of its two classes, by every method of the method table. Per method:

* pointing: the map's maximum lies on the explained object (the pointing game);
* energy share: the map's mass on the explained object over its mass on both objects;
* deletion AUC: the explained class's probability as the map's patches are removed (to the
  training mean), lower is better.

    python benchmarks/bench_localisation.py [--variant A|B] [--images 60] [--methods a,b]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from common import machine
from localisation_data import OBJECT_SETS, data_set
from vit_explain.cli.options import Options
from vit_explain.methods.evaluation import deletion_insertion
from vit_explain.methods.table import METHODS

SIDE = 64
MODEL_ARGS = {"img_size": SIDE, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
VARIANTS = {"A": 11, "B": 23}  # object set -> generator seed
CACHE = Path(__file__).parent / ".cache"


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.5


def train(variant: str, count: int = 6000, steps: int = 600) -> torch.nn.Module:
    classes = len(OBJECT_SETS[variant]["colours"])
    path = CACHE / f"localisation-{variant}-{count}-{steps}.pt"
    torch.manual_seed(VARIANTS[variant])
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=classes, **MODEL_ARGS)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    data = data_set(VARIANTS[variant], count, SIDE, variant)
    images = to_tensor(np.stack([image for image, _ in data]))
    targets = torch.zeros(count, classes)
    for i, (_, objects) in enumerate(data):
        for label, _ in objects:
            targets[i, label] = 0.5  # two classes present, equally
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(VARIANTS[variant])
    start = time.time()
    for step in range(1, steps + 1):
        model.train()
        batch = torch.randint(0, count, (64,), generator=generator)
        x = images[batch].flip(-1) if step % 2 else images[batch]
        loss = F.cross_entropy(model(x), targets[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 200 == 0:
            print(f"  step {step} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    CACHE.mkdir(exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def accuracy(model, images, objects) -> float:
    """Share of images whose two highest logits are their two classes."""
    with torch.no_grad():
        top2 = model(images).topk(2, dim=-1).indices.tolist()
    return float(np.mean([set(t) == {label for label, _ in obj} for t, obj in zip(top2, objects)]))


def scores(maps: torch.Tensor, explained: np.ndarray, other: np.ndarray) -> tuple[list, list]:
    """Per map: pointing hit on the explained object, and its energy share against the other."""
    up = F.interpolate(maps[:, None].float(), size=explained.shape[-2:], mode="bilinear",
                       align_corners=False)[:, 0].clamp(min=0).numpy()
    hits, shares = [], []
    for m, e, o in zip(up, explained, other):
        hits.append(bool(e.reshape(-1)[m.argmax()]))
        on_e, on_o = float(m[e].sum()), float(m[o].sum())
        shares.append(on_e / (on_e + on_o) if on_e + on_o > 0 else 0.5)
    return hits, shares


def evaluate(model, variant: str, count: int, methods: list[str], seed_offset: int = 1000) -> dict:
    data = data_set(VARIANTS[variant] + seed_offset, count, SIDE, variant)
    images = to_tensor(np.stack([image for image, _ in data]))
    objects = [obj for _, obj in data]
    # every image twice: once for each of its classes
    x = torch.cat([images, images])
    targets = torch.tensor([obj[0][0] for obj in objects] + [obj[1][0] for obj in objects])
    explained = np.stack([obj[0][1] for obj in objects] + [obj[1][1] for obj in objects])
    other = np.stack([obj[1][1] for obj in objects] + [obj[0][1] for obj in objects])
    results = {"accuracy": accuracy(model, images, objects)}
    for name in methods:
        spec = METHODS[name]
        explainer = spec.build(model, Options(discard_ratio=0.9, head_fusion="max"))
        start = time.perf_counter()
        maps = torch.cat([explainer.explain(chunk, t.tolist()).masks
                          for chunk, t in zip(x.split(32), targets.split(32))])
        seconds = time.perf_counter() - start
        hits, shares = scores(maps, explained, other)
        deletion = deletion_insertion(model, x, maps, targets, steps=16, baseline="zero")["deletion"]
        results[name] = {"pointing": float(np.mean(hits)), "energy": float(np.mean(shares)),
                         "deletion": float(deletion.mean()), "seconds": seconds,
                         "class_specific": spec.class_specific}
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=list(VARIANTS), action="append")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(machine())
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for variant in args.variant or list(VARIANTS):
        model = train(variant)
        results = evaluate(model, variant, args.images, methods)
        print(f"\nvariant {variant}: {args.images} images x 2 classes; top-2 accuracy {results.pop('accuracy'):.3f}")
        print(f"{'method':<16}{'pointing':>10}{'energy':>9}{'deletion':>10}{'s':>8}")
        for name, r in sorted(results.items(), key=lambda kv: -kv[1]["energy"]):
            flag = "" if r["class_specific"] else "  (class-agnostic)"
            print(f"{name:<16}{r['pointing']:>10.3f}{r['energy']:>9.3f}{r['deletion']:>10.3f}{r['seconds']:>8.1f}{flag}")
    print(f"\n{machine()}")


if __name__ == "__main__":
    main()
