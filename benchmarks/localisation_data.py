"""Synthetic two-object images for the class-specific localisation benchmark.

Every image holds two objects of two different classes on grey clutter; the class of an object is
its colour, its shape and place are random. A model trained to say which classes are present
(multi-label) must look at both objects, and a class-specific explanation of one class must point
at that class's object and not at the other. Two object sets with nothing in common (colours and
shapes) make two variants of the benchmark.
"""
from __future__ import annotations

import cv2
import numpy as np

OBJECT_SETS = {
    "A": {"colours": {"red": (220, 40, 40), "green": (40, 190, 50), "blue": (40, 70, 225),
                      "yellow": (230, 205, 30)},
          "shapes": ("disk", "square", "triangle")},
    "B": {"colours": {"orange": (240, 140, 20), "purple": (130, 40, 170), "cyan": (30, 200, 210),
                      "magenta": (225, 40, 170)},
          "shapes": ("ring", "cross", "ellipse")},
}


def clutter(rng: np.random.Generator, side: int) -> np.ndarray:
    """Grey, uninformative background: smooth noise, grain and random grey strokes."""
    coarse = rng.uniform(60, 200, (side // 8 + 1, side // 8 + 1)).astype(np.float32)
    image = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 12, (side, side))
    for _ in range(rng.integers(3, 8)):
        p1, p2 = rng.integers(0, side, 2), rng.integers(0, side, 2)
        cv2.line(image, tuple(int(v) for v in p1), tuple(int(v) for v in p2), float(rng.uniform(40, 220)),
                 int(rng.integers(1, max(2, side // 32))))
    return np.repeat(np.clip(image, 0, 255)[:, :, None], 3, axis=2).astype(np.uint8)


def shape_mask(rng: np.random.Generator, side: int, shape: str, centre, size: int) -> np.ndarray:
    mask = np.zeros((side, side), np.uint8)
    cx, cy = centre
    if shape == "disk":
        cv2.circle(mask, (cx, cy), size, 255, -1)
    elif shape == "square":
        cv2.rectangle(mask, (cx - size, cy - size), (cx + size, cy + size), 255, -1)
    elif shape == "triangle":
        cv2.fillPoly(mask, [np.array([[cx, cy - size], [cx - size, cy + size], [cx + size, cy + size]], np.int32)], 255)
    elif shape == "ring":
        cv2.circle(mask, (cx, cy), size, 255, max(2, size // 2))
    elif shape == "cross":
        arm = max(2, size // 3)
        cv2.rectangle(mask, (cx - size, cy - arm), (cx + size, cy + arm), 255, -1)
        cv2.rectangle(mask, (cx - arm, cy - size), (cx + arm, cy + size), 255, -1)
    else:  # ellipse
        cv2.ellipse(mask, (cx, cy), (size, max(2, size // 2)), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    return mask


def two_named_objects(rng: np.random.Generator, side: int, object_set: str):
    """(image RGB uint8, [(class index, shape name, object mask)] for the two objects)."""
    spec = OBJECT_SETS[object_set]
    colours = list(spec["colours"].values())
    classes = rng.choice(len(colours), 2, replace=False)
    image = clutter(rng, side)
    objects, taken = [], np.zeros((side, side), np.uint8)
    for label in classes:
        while True:
            size = int(rng.uniform(0.10, 0.17) * side)
            centre = tuple(int(v) for v in rng.integers(size + 1, side - size - 1, 2))
            shape = spec["shapes"][rng.integers(len(spec["shapes"]))]
            mask = shape_mask(rng, side, shape, centre, size)
            if not (cv2.dilate(mask, np.ones((5, 5), np.uint8)) & taken).any():
                break
        taken |= mask
        image[mask > 0] = np.clip(np.array(colours[label]) + rng.integers(-20, 21, 3), 0, 255)
        objects.append((int(label), shape, mask > 0))
    return image, objects


def two_objects(rng: np.random.Generator, side: int, object_set: str):
    """(image RGB uint8, [(class index, object mask)] for the two objects)."""
    image, objects = two_named_objects(rng, side, object_set)
    return image, [(label, mask) for label, _, mask in objects]


def data_set(seed: int, count: int, side: int, object_set: str):
    rng = np.random.default_rng(seed)
    return [two_objects(rng, side, object_set) for _ in range(count)]
