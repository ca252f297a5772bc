"""The relevance sinks (io/signed_sinks.py): CP-LRP's signed pixel map as .npy and as a diverging
overlay, fed the way the run loop feeds them (an ExplainedImage carrying pixel_relevance)."""
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import timm
import torch

from vit_explain.io.overlay import DIVERGING_TABLE
from vit_explain.io.signed_sinks import SIGNED_SINKS, RelevanceOverlaySink, RelevanceSink
from vit_explain.io.sinks import SINKS, ExplainedImage
from vit_explain.methods.lrp import VITCPLRP
from vit_explain.methods.rollout import VITAttentionRollout


@pytest.fixture(scope="module")
def relevance():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              embed_dim=48, num_heads=3, num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    explanation = VITCPLRP(model).explain(x, 1)
    return explanation.pixel_relevance[0].numpy(), explanation.masks[0].numpy()


def item_for(tmp_path, pixels, mask, size=(60, 90)):
    image = np.full((*size, 3), 200, np.uint8)
    item = ExplainedImage(input=tmp_path / "a.png", base=tmp_path / "out" / "a_cp_lrp_1", image=image,
                          box=(0, 0, size[1], size[0]), mask=mask, head_masks=None, entry={})
    item.pixel_relevance = pixels  # what the run loop fills
    return item


def test_registered_and_cp_lrp_writes_them_by_default():
    from vit_explain.methods.table import METHODS
    assert all(SINKS[sink.name] is sink for sink in SIGNED_SINKS)
    assert METHODS["cp-lrp"].extra_outputs == tuple(sink.name for sink in SIGNED_SINKS)


def test_writes_the_map_and_a_diverging_overlay(tmp_path, relevance):
    pixels, mask = relevance
    options = SimpleNamespace(output_dir=tmp_path / "out", alpha=1.0)
    item = item_for(tmp_path, pixels, mask)
    for sink in (RelevanceSink(options), RelevanceOverlaySink(options)):
        sink.write(item)
        sink.close()
    assert list(item.outputs) == ["relevance", "relevance-overlay"]
    saved = np.load(item.outputs["relevance"])
    assert saved.dtype == np.float32 and saved.shape == (32, 32)
    np.testing.assert_array_equal(saved, pixels)
    assert cv2.imread(item.outputs["relevance-overlay"]).shape == (60, 90, 3)  # the image's own size
    # at the input's size and alpha 1 the overlay is the colormap itself: the largest magnitude is
    # full red or full blue, 0 white, and -v and +v mirror each other (a symmetric scale)
    square = item_for(tmp_path, pixels, mask, size=(32, 32))
    square.base = tmp_path / "out" / "square"
    RelevanceOverlaySink(options).write(square)
    overlay = cv2.imread(square.outputs["relevance-overlay"]).astype(int)
    scale = np.abs(pixels).max()
    index = np.round(np.clip(pixels / scale, -1, 1) * 127).astype(int) + 127
    np.testing.assert_array_equal(overlay, DIVERGING_TABLE[index, 0].astype(int))
    np.testing.assert_array_equal(DIVERGING_TABLE[127 - 50, 0], DIVERGING_TABLE[127 + 50, 0][::-1])
    assert index.min() == 0 or index.max() == 254


def test_a_rerun_skips_what_is_there_and_redoes_what_is_not(tmp_path, relevance):
    pixels, mask = relevance
    options = SimpleNamespace(output_dir=tmp_path / "out", alpha=0.5)
    item = item_for(tmp_path, pixels, mask)
    sinks = [RelevanceSink(options), RelevanceOverlaySink(options)]
    for sink in sinks:
        assert not sink.done(item.base, None)
        sink.write(item)
    entry = {"output_bytes": dict(item.output_bytes)}
    assert all(sink.done(item.base, entry) for sink in sinks)
    Path(item.outputs["relevance"]).write_bytes(b"truncated")
    assert not sinks[0].done(item.base, entry) and sinks[1].done(item.base, entry)


def test_an_item_without_signed_relevance_fails_with_os_error(tmp_path, relevance):
    _, mask = relevance
    item = item_for(tmp_path, None, mask)
    with pytest.raises(OSError, match="signed relevance"):
        RelevanceSink(SimpleNamespace(output_dir=tmp_path / "out")).write(item)


def test_applies_to_signed_methods_only(relevance):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                              embed_dim=48, num_heads=3, num_classes=5).eval()
    assert RelevanceSink.applies(VITCPLRP(model))
    assert not RelevanceOverlaySink.applies(VITAttentionRollout(model))
