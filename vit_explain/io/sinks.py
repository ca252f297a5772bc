"""Output sinks: each kind of output a run writes is one class here and one line in SINKS.

A run (vit_explain/cli/runner.py) asks every selected sink whether an image is already done,
hands each explained image to every sink, and closes them all at the end:

* `done(base, entry) -> bool`: this sink's output for the image is finished; `base` is the
  image's output path without an ending (e.g. out/dog_attention_rollout_0.900_max), `entry`
  the manifest entry an earlier run left for the same request and model (None if there is none);
* `write(item)`: write the output for one `ExplainedImage` and record where it went in
  `item.outputs` (the manifest, written last, lists them); OSError when it cannot, and the run
  reports that image as failed and goes on;
* `close()`: finish; outputs that cover the whole run are written here.

A table sink (`table = True`: the Parquet table, table.py) is the per-image record of its run
instead of the manifest: the run asks it whether a request is done (`done(None, request)`),
hands it failures too (`fail(entry, message)`), and lists no image in manifest.json.

A sink is built from the run's options (an object with attributes such as `colormap`, `alpha`,
`compat`, `output_dir`). `--outputs` selects sinks by their SINKS name; the manifest
(`manifest.Manifest`) is always written, after the others. File sinks never write outside the
output folder (no folder on the way may be a link) and record each file's size, so that a later
run can tell a finished output from a truncated one.
"""
from __future__ import annotations

import cv2
import numpy as np

from .figure_sinks import (ComparisonSheetSink, FolderSheetSink, HeadFigureSink, HeadsByBlocksSink,
                           LayerAnimationSink, LayerStripSink, LayerWebpSink)
from .file_sink import ExplainedImage, FileSink  # noqa: F401 - ExplainedImage is imported from here too
from .outputs import write_image, write_npy, write_png
from .overlay import compat_overlay, head_grid, overlay
from .signed_sinks import RelevanceOverlaySink, RelevanceSink
from .table import ParquetSink


class OverlaySink(FileSink):
    """The heat-map over the image at its own resolution (PNG); the original's overlay in compat mode."""
    name, ending = "overlay", ".png"

    def save(self, path, item):
        write_png(path, self.render(item))

    def render(self, item) -> np.ndarray:
        if self.options.compat:
            return compat_overlay(np.ascontiguousarray(item.image[:, :, ::-1]), item.mask)
        return overlay(item.image, item.mask, item.box, self.options.colormap, self.options.alpha)


class JpegOverlaySink(OverlaySink):
    """The overlay as a JPEG (quality 90): far faster to encode than a PNG and far smaller (the
    README has the numbers), for large runs whose overlays are for looking, not measuring."""
    name, ending = "overlay-jpg", ".jpg"

    def save(self, path, item):
        write_image(path, self.render(item), [cv2.IMWRITE_JPEG_QUALITY, 90])


class MaskSink(FileSink):
    """The patch-grid mask as float32 (.npy)."""
    name, ending = "mask", ".npy"

    def save(self, path, item):
        write_npy(path, item.mask)


class HeadGridSink(FileSink):
    """One overlay per attention head, tiled and labelled (PNG), for methods that show heads."""
    name, ending = "heads", "_heads.png"

    def save(self, path, item):
        write_png(path, head_grid(item.image, item.head_masks, item.box, self.options.colormap, self.options.alpha))


SINKS: dict[str, type[FileSink]] = {sink.name: sink for sink in (
    OverlaySink,
    MaskSink,
    HeadGridSink,
    JpegOverlaySink,
    ParquetSink,
    LayerStripSink,
    LayerAnimationSink,
    LayerWebpSink,
    HeadFigureSink,
    HeadsByBlocksSink,
    RelevanceSink,
    RelevanceOverlaySink,
)}
DEFAULT_SINKS = ("overlay", "mask")  # and each method's extra outputs (its method-table line)
# Outputs that draw several methods at once, so the run feeds them itself (runner.py): a
# comparison sheet per image, and sheets of the whole run (rows = images, columns = methods).
SHEETS = {"sheet": ComparisonSheetSink, "folder-sheet": FolderSheetSink}
OUTPUT_NAMES = (*SINKS, *SHEETS)  # what --outputs takes


def close_all(sinks) -> None:
    """Close every sink, even when one fails; then raise the first failure."""
    error = None
    for sink in sinks:
        try:
            sink.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, once every sink is closed
            error = error or exc
    if error is not None:
        raise error
