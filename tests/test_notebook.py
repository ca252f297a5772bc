"""The notebook helpers: vit_explain.show_mask_on_image, Explanation.overlays / figure / show /
_repr_png_, and the executed example on the shipped demo model."""
import io
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vit_explain
from vit_explain import VITAttentionRollout, show_mask_on_image

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.fixture(scope="module")
def explained(deit_tiny_qkv4):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return x, VITAttentionRollout(deit_tiny_qkv4, head_fusion="max").explain(x)


def test_the_helper_is_public_and_lazy():
    assert "show_mask_on_image" in vit_explain.__all__ and "Explanation" in vit_explain.__all__
    assert vit_explain.show_mask_on_image is show_mask_on_image


def test_overlays_are_rgb_at_each_image_own_resolution(explained):
    _, result = explained
    images = [np.zeros((300, 400, 3), np.uint8), Image.new("RGB", (120, 90), (10, 200, 10))]
    overlays = result.overlays(images)
    assert [o.shape for o in overlays] == [(300, 400, 3), (90, 120, 3)] and all(o.dtype == np.uint8 for o in overlays)
    np.testing.assert_array_equal(overlays[0], show_mask_on_image(images[0], result.masks[0].numpy()))
    boxed = result.overlays(images, boxes=[(0, 0, 200, 300), None])
    assert (boxed[0][:, 200:] == 0).all() and not (boxed[0][:, :200] == 0).all()  # only the box is painted
    with pytest.raises(ValueError, match="one image per mask"):
        result.overlays(images[:1])


def test_the_model_input_itself_can_be_drawn_on(explained):
    x, result = explained
    overlays = result.overlays(x)  # (B, 3, H, W), normalised: stretched for display
    assert [o.shape for o in overlays] == [(224, 224, 3)] * 2


def test_a_figure_shows_and_displays_in_jupyter(explained):
    x, result = explained
    figure = result.figure(x, labels={i: f"name{i}" for i in range(1000)})
    assert figure.ndim == 3 and figure.shape[1] >= 2 * 224
    shown = result.show(x)
    assert isinstance(shown, Image.Image) and shown.size == (figure.shape[1], figure.shape[0])
    png = result._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size[0] >= 2 * 224


def test_the_example_runs_offline_on_the_demo(tmp_path):
    example = runpy.run_path(str(EXAMPLES / "notebook_helpers.py"))
    written = example["main"](tmp_path)
    sizes = [Image.open(path).size for path in written]
    assert sizes[1] == Image.open(EXAMPLES / "images" / "red_01.png").size  # the overlay: the image's own size
    assert sizes[0][0] > 4 * 150 and sizes[2][0] > 4 * 150  # four images; four blocks


def test_a_large_batch_displays_its_first_images(deit_tiny_qkv4):
    x = torch.randn(14, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    result = VITAttentionRollout(deit_tiny_qkv4).explain(x)
    few, all_of_them = result.figure(limit=12), result.figure()
    assert few.shape[0] < all_of_them.shape[0]
    assert Image.open(io.BytesIO(result._repr_png_())).size == (few.shape[1], few.shape[0])
