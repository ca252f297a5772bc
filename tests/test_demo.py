"""The shipped demo model: it loads offline, classifies its samples, and the maps point at the object."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_explain import VITAttentionGradRollout, VITAttentionRollout
from vit_explain.io.models import load_model
from vit_explain.io.preprocess import Preprocessor

EXAMPLES = Path(__file__).parent.parent / "examples"
IMAGES = sorted((EXAMPLES / "images").glob("*.png"))


def load_demo():
    """The shipped demo model, its 12 samples preprocessed (12, 3, H, W), their object masks."""
    model = load_model(f"local-dir:{EXAMPLES / 'demo-vit'}")
    preprocess = Preprocessor(model)
    x = torch.stack([preprocess(Image.open(path).convert("RGB")) for path in IMAGES])
    objects = [np.asarray(Image.open(EXAMPLES / "masks" / path.name)) > 127 for path in IMAGES]
    return model, x, objects


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def peaks_on_object(mask: np.ndarray, obj: np.ndarray) -> bool:
    """The map's top patch, in image pixels, touches the object (or lies within one patch of it)."""
    gh, gw = mask.shape
    i, j = np.unravel_index(mask.argmax(), mask.shape)
    ph, pw = obj.shape[0] // gh, obj.shape[1] // gw
    return bool(obj[max(0, (i - 1) * ph):(i + 2) * ph, max(0, (j - 1) * pw):(j + 2) * pw].any())


def test_twelve_samples_with_object_masks():
    assert len(IMAGES) == 12
    assert all((EXAMPLES / "masks" / p.name).exists() for p in IMAGES)


def test_demo_model_loads_its_weights_and_names(demo):
    model, x, _ = demo
    names = model.pretrained_cfg["label_names"]
    with torch.no_grad():
        predicted = model(x).argmax(-1).tolist()
    assert [names[i] for i in predicted] == [p.stem.split("_")[0] for p in IMAGES]


@pytest.mark.parametrize("fusion", ["max", "mean"])
def test_rollout_peaks_on_the_object(demo, fusion):
    model, x, objects = demo
    maps = VITAttentionRollout(model, head_fusion=fusion, discard_ratio=0.9)(x)
    assert [peaks_on_object(m, o) for m, o in zip(maps, objects)] == [True] * len(IMAGES)


def test_gradient_rollout_peaks_on_the_object(demo):
    model, x, objects = demo
    maps = VITAttentionGradRollout(model, head_fusion="max", discard_ratio=0.9)(x)
    assert [peaks_on_object(m, o) for m, o in zip(maps, objects)] == [True] * len(IMAGES)
