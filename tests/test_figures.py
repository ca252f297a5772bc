"""Figures (vit_explain/io/figures.py) and their sinks: they decode, their parts sit where the
layout says, they carry labels and colour bars, and signed maps get a symmetric diverging scale."""
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vit_explain.io import figures
from vit_explain.io.figure_sinks import (FIGURE_SINKS, ComparisonSheetSink, FolderSheetSink, HeadsByBlocksSink,
                                         LayerStripSink, class_text)
from vit_explain.io.overlay import (DIVERGING_TABLE, colorize_signed, overlay, overlay_signed, signed_index,
                                    signed_scale)
from vit_explain.cli.options import Options
from vit_explain.io.sinks import SINKS, ExplainedImage

RNG = np.random.default_rng(0)
IMAGE = np.ascontiguousarray(RNG.integers(0, 256, (60, 90, 3), dtype=np.uint8))
MASKS = RNG.random((3, 4, 4)).astype(np.float32)


def where(figure: np.ndarray, part: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of an exact copy of part inside figure, or None."""
    scores = cv2.matchTemplate(figure.astype(np.float32), part.astype(np.float32), cv2.TM_SQDIFF)
    _, _, (x, y), _ = cv2.minMaxLoc(scores)
    h, w = part.shape[:2]
    return (x, y) if np.array_equal(figure[y:y + h, x:x + w], part) else None


def has_ink(band: np.ndarray) -> bool:
    """Dark pixels (text) in a band of a figure."""
    return bool((band.min(axis=-1) < 100).any())


# ---- colour scales ----------------------------------------------------------------------

def test_the_signed_scale_is_symmetric():
    mask = np.array([[-2.0, -1.0, 0.0], [0.5, 1.0, 2.0]], np.float32)
    assert signed_scale(mask) == 2.0 and signed_scale(np.zeros((2, 2))) == 1.0
    index = signed_index(mask)
    assert index[0, 0] == 0 and index[1, 2] == 254 and index[0, 2] == 127
    # v and -v lie the same distance either side of white; the colours mirror (red <-> blue)
    np.testing.assert_array_equal(signed_index(mask).astype(int) + signed_index(-mask), 254)
    np.testing.assert_array_equal(colorize_signed(mask), colorize_signed(-mask)[:, :, ::-1])
    bgr = DIVERGING_TABLE[:, 0]
    assert tuple(bgr[127]) == (255, 255, 255) and tuple(bgr[0]) == (255, 0, 0) and tuple(bgr[254]) == (0, 0, 255)
    # a map and twice the map look the same: the scale follows the largest magnitude
    np.testing.assert_array_equal(colorize_signed(mask), colorize_signed(2 * mask))
    # an explicit scale clips what lies beyond it
    assert signed_index(mask, scale=1.0)[1, 2] == 254 and signed_index(mask, scale=4.0)[1, 2] == 127 + 64


def test_signed_maps_are_drawn_diverging_and_unsigned_ones_as_the_overlays():
    mask = np.array([[-1.0, 0.0], [0.0, 1.0]], np.float32)
    drawn = figures.show_mask_on_image(IMAGE, mask)
    np.testing.assert_array_equal(drawn, overlay_signed(IMAGE, mask)[:, :, ::-1])
    grey = np.full((40, 40, 3), 128, np.uint8)
    left_top, right_bottom = figures.show_mask_on_image(grey, mask, alpha=1.0)[[0, -1], [0, -1]]
    assert left_top[2] > left_top[0] and right_bottom[0] > right_bottom[2]  # blue where negative, red where positive
    # unsigned: exactly what the overlay output of the command writes, in RGB
    box = (0, 0, 90, 60)
    np.testing.assert_array_equal(figures.show_mask_on_image(IMAGE, MASKS[0], box, "viridis", 0.4),
                                  overlay(IMAGE, MASKS[0], box, "viridis", 0.4)[:, :, ::-1])


def test_show_mask_on_image_takes_what_notebooks_hold(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(IMAGE).save(path)
    expected = figures.show_mask_on_image(IMAGE, MASKS[0])
    assert expected.shape == IMAGE.shape and expected.dtype == np.uint8
    for image in (Image.fromarray(IMAGE), path, str(path), IMAGE.transpose(2, 0, 1), IMAGE / 255.0):
        np.testing.assert_array_equal(figures.show_mask_on_image(image, MASKS[0]), expected)
    gray = figures.show_mask_on_image(IMAGE[:, :, 0], MASKS[0])
    assert gray.shape == IMAGE.shape
    stretched = figures.as_rgb(np.linspace(-2, 3, 60 * 90 * 3, dtype=np.float32).reshape(3, 60, 90))
    assert stretched.min() == 0 and stretched.max() == 255
    with pytest.raises(ValueError, match="mask"):
        figures.show_mask_on_image(IMAGE, MASKS)
    with pytest.raises(ValueError, match="image"):
        figures.as_rgb(np.zeros((2, 2, 2, 2)))


# ---- sheets ---------------------------------------------------------------------------------

def test_a_comparison_sheet_shows_the_input_then_each_method_with_headers_and_a_colour_bar():
    panels = [figures.Panel("rollout", MASKS[0], "top: cat 90.0%", 0.012),
              figures.Panel("chefer", MASKS[1], "cat 90.0%", 1.5),
              figures.Panel("signed", MASKS[2] - 0.5, "cat 90.0%")]
    sheet = figures.comparison_sheet(IMAGE, panels, box=(0, 0, 90, 60), title="a.png | model tiny")
    places = [where(sheet, IMAGE)] + [where(sheet, figures.show_mask_on_image(IMAGE, p.mask)) for p in panels]
    assert None not in places
    xs, ys = [p[0] for p in places], {p[1] for p in places}
    assert xs == sorted(xs) and len(set(xs)) == 4 and len(ys) == 1  # one row: input, then the methods in order
    top = ys.pop()
    assert has_ink(sheet[:top - 40]) and has_ink(sheet[top - 40:top])  # the title; the headers
    assert sheet.shape[0] - top - IMAGE.shape[0] > 60  # two colour bars below: the methods are unsigned and signed
    unsigned_only = figures.comparison_sheet(IMAGE, panels[:2])
    assert unsigned_only.shape[0] < sheet.shape[0]
    assert figures.duration(0.012) == "12 ms" and figures.duration(1.5) == "1.50 s"


def test_folder_sheets_are_paged_and_capped_in_methods():
    methods = [f"m{i}" for i in range(10)]
    cell = figures.thumbnail(IMAGE, MASKS[0], side=64)
    rows = [figures.SheetRow(f"img{i}.png", "cat 90%", {m: cell for m in methods}, {m: "cat 90%" for m in methods})
            for i in range(25)]
    del rows[3].cells["m1"]  # a method that failed on that image: a grey cell
    pages = figures.folder_sheet_pages(rows, methods, "folder", rows_per_page=12, methods_per_page=8, cell=64)
    assert len(pages) == 3 * 2  # 25 images by 12, 10 methods by 8
    first, second = pages[0], pages[1]
    assert where(first, cell) is not None and where(second, cell) is not None
    # 8 method columns on the first page, 2 on the second; 12 rows on both
    assert first.shape[1] > second.shape[1] and abs(first.shape[0] - second.shape[0]) < 5
    assert pages[-1].shape[0] < first.shape[0]  # the last page holds one image
    with pytest.raises(ValueError):
        figures.folder_sheet([], methods)


# ---- per layer, per head ---------------------------------------------------------------------

def test_a_layer_strip_shows_every_block_in_order_and_animations_decode():
    layers = RNG.random((5, 4, 4)).astype(np.float32)
    strip = figures.layer_strip(IMAGE, layers, title="model | rollout | cat 90%", note="rollout up to each block")
    xs = [where(strip, figures.show_mask_on_image(IMAGE, m)) for m in layers]
    assert None not in xs and [x for x, _ in xs] == sorted(x for x, _ in xs)
    wrapped = figures.layer_strip(IMAGE, layers, columns=2)
    assert wrapped.shape[0] > strip.shape[0] and wrapped.shape[1] < strip.shape[1]
    frames = figures.layer_frames(IMAGE, layers, title="t")
    for ending in (".gif", ".webp"):
        with Image.open(io.BytesIO(figures.animation_bytes(frames, ending, 200))) as animation:
            assert animation.n_frames == 5 and animation.is_animated
            assert animation.size == (max(f.shape[1] for f in frames), max(f.shape[0] for f in frames))
    with pytest.raises(ValueError):
        figures.animation_bytes(frames, ".png")


def test_head_grids_for_one_block_and_for_all_blocks():
    heads = RNG.random((4, 4, 4)).astype(np.float32)
    grid = figures.head_grid_figure(IMAGE, heads, title="raw attention")
    spots = [where(grid, figures.show_mask_on_image(IMAGE, m)) for m in heads]
    assert None not in spots and len({x for x, _ in spots}) == 2 and len({y for _, y in spots}) == 2  # 2 x 2
    maps = RNG.random((3, 4, 4, 4)).astype(np.float32)
    small, scale = figures.fit_image(IMAGE, 48)
    everything = figures.heads_by_blocks(IMAGE, maps, tile_side=48)
    spots = [[where(everything, figures.show_mask_on_image(small, m, (0, 0, 90 * scale, 60 * scale))) for m in block]
             for block in maps]
    assert all(s is not None for block in spots for s in block)
    assert all(len({y for _, y in block}) == 1 for block in spots)  # a row per block
    assert [block[0][1] for block in spots] == sorted(block[0][1] for block in spots)
    assert len({s[0] for s in spots[0]}) == 4  # a column per head


def test_curves_are_plotted_with_one_colour_per_method():
    curves = {"rollout": {"deletion": np.linspace(1, 0, 11), "insertion": np.linspace(0, 1, 11), "deletion_auc": 0.5},
              "random": {"deletion": np.full(11, 0.7), "insertion": np.full(11, 0.3)}}
    plot = figures.curves_figure(curves, "curves")
    assert plot.ndim == 3 and plot.shape[1] > 800
    for colour in figures.LINE_COLOURS[:2]:
        assert (np.abs(plot.astype(int) - colour).sum(axis=-1) < 30).sum() > 200
    with pytest.raises(ValueError):
        figures.curves_figure({})


def test_an_explanation_figure_heads_every_image_with_its_class():
    picture = figures.explanation_figure(MASKS[:2], ["cat 90.0%", "dog 10.0%"], [IMAGE, IMAGE])
    assert where(picture, figures.thumbnail(IMAGE, MASKS[1], side=224)) is not None
    alone = figures.explanation_figure(MASKS[:2], ["cat", "dog"])
    assert alone.shape[2] == 3 and alone.shape[0] > 224
    assert figures.class_caption(1, 0.25, ["cat", "dog"]) == "dog 25.0%"
    assert figures.class_caption(7, None, {7: "fox"}) == "fox" and figures.class_caption(3, 0.5) == "class 3 50.0%"


# ---- the figure sinks ---------------------------------------------------------------------

def item(tmp_path, method="rollout", name="a", explained=None, **more):
    entry = {"method": method, "parameters": {"layer": -1},
             "topk": [{"index": 0, "label": "cat", "probability": 0.9}, {"index": 2, "label": "fox", "probability": 0.05}],
             "explained_class": explained}
    return ExplainedImage(input=tmp_path / f"{name}.png", base=tmp_path / "out" / f"{name}_{method}", image=IMAGE,
                          box=(0, 0, 90, 60), mask=MASKS[0], head_masks=RNG.random((3, 4, 4)).astype(np.float32),
                          entry=entry, **more)


def options(tmp_path):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return Options(output_dir=out, model="tiny")


def test_captions_say_what_a_map_explains(tmp_path):
    assert class_text(item(tmp_path)) == "class-agnostic; top: cat 90.0%"
    assert class_text(item(tmp_path, explained={"index": 2, "label": "fox"})) == "fox 5.0%"
    assert class_text(item(tmp_path, explained={"index": 1, "label": "dog"}, probability=0.04)) == "dog 4.0%"


def test_the_per_image_figure_sinks_write_files_that_decode_and_are_in_sinks(tmp_path):
    assert all(SINKS[name] is sink for name, sink in FIGURE_SINKS.items())  # --outputs selects them
    o = options(tmp_path)
    layers = dict(layer_masks=RNG.random((3, 4, 4)).astype(np.float32), layer_blocks=[0, 1, 2],
                  layer_head_masks=RNG.random((3, 3, 4, 4)).astype(np.float32), seconds=0.1, probability=0.9)
    for name, sink_class in FIGURE_SINKS.items():
        sink = sink_class(o)
        explained = item(tmp_path, **layers)
        sink.write(explained)
        path = Path(explained.outputs[name])
        assert path.name == f"a_rollout{sink_class.ending}" and explained.output_bytes[name] == path.stat().st_size
        with Image.open(path) as decoded:
            assert decoded.size[0] > 100
        assert sink.done(explained.base, {"output_bytes": explained.output_bytes})
    with pytest.raises(ValueError, match="layer_masks"):  # handed a method it does not apply to
        LayerStripSink(o).write(item(tmp_path))


def test_sinks_apply_to_the_methods_with_the_maps_they_draw(deit_tiny):
    from vit_explain import VITAttentionFlow, VITAttentionRollout, VITGradCAM, VITLeGrad, VITRawAttention
    assert LayerStripSink.applies(VITAttentionRollout(deit_tiny)) and LayerStripSink.applies(VITLeGrad(deit_tiny))
    assert not LayerStripSink.applies(VITAttentionFlow(deit_tiny)) and not LayerStripSink.applies(VITGradCAM(deit_tiny))
    assert HeadsByBlocksSink.applies(VITRawAttention(deit_tiny))
    assert not HeadsByBlocksSink.applies(VITAttentionRollout(deit_tiny))


def test_a_comparison_sheet_per_image_is_recorded_in_every_method_entry(tmp_path):
    o = options(tmp_path)
    sink = ComparisonSheetSink(o)
    stem = tmp_path / "out" / "sub" / "a"
    items = [item(tmp_path, "rollout", seconds=0.01, probability=0.9),
             item(tmp_path, "legrad", explained={"index": 0, "label": "cat"}, seconds=0.2, probability=0.9)]
    assert not sink.done_group(stem, [None, None])
    sink.write_group(stem, items)
    path = tmp_path / "out" / "sub" / "a_comparison.png"
    assert all(i.outputs["sheet"] == str(path) for i in items)
    sheet = cv2.imread(str(path))[:, :, ::-1]
    assert where(sheet, IMAGE) is not None and where(sheet, figures.show_mask_on_image(IMAGE, MASKS[0])) is not None
    entries = [{"output_bytes": dict(i.output_bytes)} for i in items]
    assert sink.done_group(stem, entries)
    path.write_bytes(path.read_bytes()[:100])  # truncated: redone
    assert not sink.done_group(stem, entries)


def test_a_folder_sheet_keeps_the_first_images_by_path_and_writes_pages_at_close(tmp_path):
    o = options(tmp_path)
    sink = FolderSheetSink(o, ["rollout", "legrad"], max_images=5, rows_per_page=2, cell=48)
    for k in reversed(range(8)):  # arriving in any order
        for method in ("legrad", "rollout"):
            sink.write(item(tmp_path, method, name=f"img{k}"))
    assert sink.done(None, None)
    assert sorted(Path(k).name for k in sink.rows) == [f"img{k}.png" for k in range(5)]
    (tmp_path / "out" / "sheet_009.png").write_bytes(b"an earlier run's page")
    sink.close()
    assert [p.name for p in sorted((tmp_path / "out").glob("sheet_*.png"))] == ["sheet_001.png", "sheet_002.png",
                                                                                  "sheet_003.png"]
    page = cv2.imread(str(tmp_path / "out" / "sheet_001.png"))
    assert page is not None and page.shape[1] > 2 * 48
