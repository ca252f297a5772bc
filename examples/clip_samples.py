"""The CLIP demo's twelve two-object samples (examples/clip-images) with each object's caption and
mask (examples/clip-masks, written by make_demo_clip.py), and the one rule by which a prompt's map
is said to land on its object. Shared by the tests, so that every explanation method is scored on
the same data in the same way.

    from examples.clip_samples import load_samples, lands_on
    for sample in load_samples():
        for k, (caption, mask) in enumerate(sample.objects):
            heat = ...  # (gh, gw) map of `caption` for sample.path
            lands_on(heat, sample.objects, k)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent


@dataclass
class Sample:
    path: Path                               # the image (RGB PNG)
    objects: list[tuple[str, np.ndarray]]    # (caption, bool mask of the image's size), two of them

    @property
    def captions(self) -> list[str]:
        return [caption for caption, _ in self.objects]


def load_samples(examples: Path = EXAMPLES) -> list[Sample]:
    """The samples in file-name order, objects in the order of objects.json."""
    masks = examples / "clip-masks"
    index = json.loads((masks / "objects.json").read_text())
    return [Sample(examples / "clip-images" / name,
                   [(o["caption"], np.asarray(Image.open(masks / o["mask"])) > 127) for o in objects])
            for name, objects in sorted(index.items())]


def lands_on(heat: np.ndarray, objects: list[tuple[str, np.ndarray]], k: int) -> bool:
    """The map's top patch holds more pixels of object k than of any other object of the image
    (so at least one): the prompt landed on its own object, not on the other one.

    heat is the (gh, gw) patch map; the patch (i, j) covers the image's pixel rows
    i*H/gh .. (i+1)*H/gh and columns j*W/gw .. (j+1)*W/gw (the processor resizes the whole image,
    no crop, for these square samples).
    """
    heat = np.asarray(heat, dtype=np.float64)
    gh, gw = heat.shape
    i, j = np.unravel_index(heat.argmax(), heat.shape)
    height, width = objects[k][1].shape
    rows = slice(i * height // gh, (i + 1) * height // gh)
    cols = slice(j * width // gw, (j + 1) * width // gw)
    counts = [int(mask[rows, cols].sum()) for _, mask in objects]
    return counts[k] > max(c for n, c in enumerate(counts) if n != k)
