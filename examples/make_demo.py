"""Make the offline demo: a synthetic image set with known object positions and a small ViT
trained on it, saved as a timm folder (config.json + weights) that `--model local-dir:` loads.

The class of an image is the colour of its one object (red, green, blue, yellow); the object's
shape, size and place are random and the background is grey clutter, so the only evidence is
where the object is, and a faithful heat-map must point at it. Training also shows clutter with
no object ("none"), so that no colour can be recognised by the absence of the others: every
colour class needs evidence from the object itself.

    python examples/make_demo.py [--out examples]      # ~3 minutes on a 2-core CPU
"""
import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from localisation_data import clutter  # noqa: E402  (the one clutter generator, shared with the benchmark)

CLASSES = ["red", "green", "blue", "yellow", "none"]
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 50), "blue": (40, 70, 225), "yellow": (230, 205, 30)}
MODEL_ARGS = {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3, "num_classes": 5}
MEAN = STD = (0.5, 0.5, 0.5)


def draw_object(rng: np.random.Generator, image: np.ndarray, colour) -> np.ndarray:
    """A disk, square or triangle of the class colour; returns its mask."""
    side = image.shape[0]
    size = int(rng.uniform(0.12, 0.22) * side)
    cx, cy = (int(v) for v in rng.integers(size, side - size, 2))
    mask = np.zeros(image.shape[:2], np.uint8)
    shape = rng.integers(3)
    if shape == 0:
        cv2.circle(mask, (cx, cy), size, 255, -1)
    elif shape == 1:
        cv2.rectangle(mask, (cx - size, cy - size), (cx + size, cy + size), 255, -1)
    else:
        points = np.array([[cx, cy - size], [cx - size, cy + size], [cx + size, cy + size]], np.int32)
        cv2.fillPoly(mask, [points], 255)
    jitter = rng.integers(-20, 21, 3)
    image[mask > 0] = np.clip(np.array(colour) + jitter, 0, 255)
    return mask


def sample(rng: np.random.Generator, side: int, with_object: bool = True):
    label = int(rng.integers(len(COLOURS) + (0 if with_object else 1)))
    image = clutter(rng, side)
    if CLASSES[label] == "none":
        return image, np.zeros(image.shape[:2], np.uint8), label
    mask = draw_object(rng, image, COLOURS[CLASSES[label]])
    return image, mask, label


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.5


def train(seed: int, count: int, steps: int) -> torch.nn.Module:
    rng = np.random.default_rng(seed)
    side = MODEL_ARGS["img_size"]
    data = [sample(rng, side, with_object=False) for _ in range(count)]
    images = to_tensor(np.stack([d[0] for d in data]))
    labels = torch.tensor([d[2] for d in data])
    split = count * 9 // 10
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **MODEL_ARGS)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(1, steps + 1):
        model.train()
        batch = torch.randint(0, split, (64,), generator=generator)
        x = images[batch]
        if step % 2:  # flips keep the evidence and teach position independence
            x = x.flip(-1)
        loss = torch.nn.functional.cross_entropy(model(x), labels[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                accuracy = (model(images[split:]).argmax(-1) == labels[split:]).float().mean().item()
            print(f"step {step} loss {loss.item():.3f} validation accuracy {accuracy:.3f} ({time.time() - start:.0f} s)")
    return model.eval()


def save_model(model: torch.nn.Module, folder: Path) -> None:
    # safetensors: loading the shipped weights never unpickles anything
    timm.models.save_for_hf(model, folder, model_config={"label_names": CLASSES}, model_args=MODEL_ARGS,
                            safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(input_size=[3, 64, 64], crop_pct=1.0, crop_mode="center",
                                    interpolation="bilinear", mean=list(MEAN), std=list(STD),
                                    num_classes=len(CLASSES), license="MIT")
    config["pretrained_cfg"].pop("tag", None)  # vit_tiny's ImageNet weights tag; these are not those weights
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_samples(out: Path, seed: int, per_class: int, side: int = 192) -> None:
    """Held-out images (larger than the model's input: the preprocessing resizes) and their masks."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    counts = {name: 0 for name in COLOURS}
    while min(counts.values()) < per_class:
        image, mask, label = sample(rng, side)
        name = CLASSES[label]
        if counts[name] == per_class:
            continue
        counts[name] += 1
        stem = f"{name}_{counts[name]:02d}"
        cv2.imwrite(str(out / "images" / f"{stem}.png"), image[:, :, ::-1])
        cv2.imwrite(str(out / "masks" / f"{stem}.png"), mask)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.time()
    model = train(args.seed, args.images, args.steps)
    save_model(model, args.out / "demo-vit")
    write_samples(args.out, args.seed + 1, per_class=3)
    print(f"done in {time.time() - start:.0f} s: {args.out / 'demo-vit'}, {args.out / 'images'}, {args.out / 'masks'}")


if __name__ == "__main__":
    main()
