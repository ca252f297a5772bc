"""Output sinks that write figures (figures.py): per-layer strips and animations, labelled head
grids, heads x blocks grids, comparison sheets per image and paged sheets for a folder.

The per-image sinks are in SINKS (sinks.py); the two sheets are in its SHEETS, fed by the run
loop (vit_explain/cli/runner.py) itself. What each needs from it:

* the per-image sinks (`LayerStripSink`, `LayerAnimationSink`, `LayerWebpSink`,
  `HeadFigureSink`, `HeadsByBlocksSink`) are ordinary sinks (done / write / close, see sinks.py)
  fed the usual `ExplainedImage`, with its figure fields filled: `probability`, `seconds`, and
  for the sinks marked `per_layer` `layer_masks` / `layer_blocks` / `layer_head_masks` (the run
  explains with `explain(x, per_layer=True)` when one of them is selected). A sink is given only
  to the methods it applies to (the method table's `optional_outputs` names them; `applies(explainer)`
  says the same from the explainer, and a test keeps the two in step);
* `ComparisonSheetSink` draws every method of one image at once: the run calls
  `write_group(stem, items)` with the image's `ExplainedImage` of each method (stem: the image's
  output path without the method suffix) after the per-method sinks and before the manifest
  lists them, and asks `done_group(stem, entries)` when deciding what to skip;
* `FolderSheetSink` is an ordinary sink, one shared by every method of the run, that keeps a
  thumbnail per image and method and writes `sheet_001.png`, ... when the run closes it (before
  the manifest, which lists the pages). It sees only the images the run explains (a re-run that
  skips every image writes no sheet).
"""
from __future__ import annotations

import bisect
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from . import figures
from .naming import fit_name
from .outputs import atomic_write, make_output_folder, write_png
from .file_sink import ExplainedImage, FileSink

# What a method's per-block maps are, for the figures' subtitles (a method not named here gets
# the generic line).
LAYER_NOTES = {
    "rollout": "attention rollout up to and including each block",
    "grad-rollout": "gradient rollout up to and including each block",
    "gradsam": "Grad-SAM summed up to and including each block",
    "legrad": "each block's own LeGrad map",
    "raw-attention": "each block's attention from the class token, mean over heads",
    "cola": "each block's own CoLa map",
}
GENERIC_LAYER_NOTE = "per-block maps"


def class_text(item: ExplainedImage) -> str:
    """What the map explains: "dog 93.1%", or for class-agnostic maps "class-agnostic; top: dog 93.1%"."""
    entry = item.entry
    explained = entry.get("explained_class")
    top = (entry.get("topk") or [None])[0]
    if explained:
        probability = item.probability
        if probability is None:  # from the top-k list when the explained class is in it
            probability = next((t.get("probability") for t in entry.get("topk") or []
                                if t.get("index") == explained.get("index")), None)
        return figures.class_caption(explained.get("index"), probability, {explained.get("index"): explained.get("label")})
    if top:
        return "class-agnostic; top: " + figures.class_caption(top.get("index"), top.get("probability"),
                                                               {top.get("index"): top.get("label")})
    if item.probability is not None:
        return f"class-agnostic; top: {item.probability:.1%}"
    return "class-agnostic"


def drawn_map(item: ExplainedImage) -> tuple[np.ndarray, bool]:
    """(the map a sheet draws for this method, whether it is signed): a signed method's pixel
    relevance on the diverging scale (what speaks against the class shows, in blue), else the mask."""
    relevance = getattr(item, "pixel_relevance", None)
    if relevance is not None:
        return np.asarray(relevance, dtype=np.float32), True
    return item.mask, figures.is_signed(np.asarray(item.mask))


def title_of(item: ExplainedImage, options, *more) -> str:
    """"dog.jpg | model deit_tiny_patch16_224 | rollout | dog 93.1%" and any further parts."""
    return figures.describe(item.input.name, f"model {getattr(options, 'model', '')}", item.entry.get("method"),
                            class_text(item), *more)


class LayerStripSink(FileSink):
    """The per-block maps of one image and method, side by side (PNG)."""
    name, ending = "layers", "_layers.png"
    per_layer = True  # needs explain(x, per_layer=True)

    @staticmethod
    def applies(explainer) -> bool:
        return bool(getattr(explainer, "has_layer_maps", False))

    def save(self, path, item):
        o = self.options
        write_png(path, figures.bgr(figures.layer_strip(
            item.image, _needed(item, "layer_masks"), item.box, item.layer_blocks, title_of(item, o),
            LAYER_NOTES.get(item.entry.get("method"), GENERIC_LAYER_NOTE), o.colormap, o.alpha)))


class LayerAnimationSink(FileSink):
    """The per-block maps as an animation over the blocks (GIF, looping)."""
    name, ending = "layers-gif", "_layers.gif"
    per_layer = True
    duration_ms = 600

    applies = LayerStripSink.applies

    def save(self, path, item):
        o = self.options
        frames = figures.layer_frames(item.image, _needed(item, "layer_masks"), item.box, item.layer_blocks,
                                      title_of(item, o), o.colormap, o.alpha)
        atomic_write(path, figures.animation_bytes(frames, Path(self.ending).suffix, self.duration_ms))


class LayerWebpSink(LayerAnimationSink):
    """The same animation as WebP (smaller, full colour)."""
    name, ending = "layers-webp", "_layers.webp"


class HeadFigureSink(FileSink):
    """One block's heads (raw attention's `head_masks`), labelled, with a title and colour bar (PNG).
    The `heads` sink writes the same grid without them, as before."""
    name, ending = "heads-figure", "_heads_labelled.png"

    @staticmethod
    def applies(explainer) -> bool:
        # the methods that show heads (raw attention) show them for every block too
        return bool(getattr(explainer, "has_layer_head_maps", False))

    def save(self, path, item):
        o = self.options
        block = item.entry.get("parameters", {}).get("layer")
        note = "the class token's attention per head" + ("" if block is None else
                                                         f", block {'last' if block == -1 else block}")
        write_png(path, figures.bgr(figures.head_grid_figure(item.image, _needed(item, "head_masks"), item.box,
                                                             title_of(item, o), note, o.colormap, o.alpha)))


class HeadsByBlocksSink(FileSink):
    """Every head of every block (rows = blocks, columns = heads), labelled (PNG)."""
    name, ending = "heads-blocks", "_heads_blocks.png"
    per_layer = True

    @staticmethod
    def applies(explainer) -> bool:
        return bool(getattr(explainer, "has_layer_head_maps", False))

    def save(self, path, item):
        o = self.options
        write_png(path, figures.bgr(figures.heads_by_blocks(
            item.image, _needed(item, "layer_head_masks"), item.box, item.layer_blocks, title_of(item, o),
            "the class token's attention per head and block", o.colormap, o.alpha)))


def _map_and_caption(item: ExplainedImage) -> tuple:
    """A comparison sheet panel's fields after the method's name: map, caption, time, signed."""
    values, signed = drawn_map(item)
    return values, class_text(item), item.seconds, signed


def _needed(item: ExplainedImage, name: str):
    value = getattr(item, name)
    if value is None:  # a run that handed this sink a method it does not apply to: a bug
        raise ValueError(f"{item.entry.get('method')} gave no {name} for this figure")
    return value


class ComparisonSheetSink:
    """One sheet per image: the input, then one overlay per method, with the method's name, the
    explained class and probability and the time it took over each (PNG, `<stem>_comparison.png`)."""
    name, ending = "sheet", "_comparison.png"

    def __init__(self, options):
        self.options = options

    def path(self, stem: Path) -> Path:
        return stem.parent / (fit_name(f"{stem.name}_comparison") + ".png")

    def done_group(self, stem: Path, entries: Sequence[dict | None]) -> bool:
        """The sheet exists, is no link, and has the size each method's entry recorded for it."""
        path = self.path(stem)
        if not entries or any(e is None for e in entries) or not path.is_file() or path.is_symlink():
            return False
        size = path.stat().st_size
        return all(e.get("output_bytes", {}).get(self.name) == size for e in entries)

    def render(self, items: Sequence[ExplainedImage]) -> np.ndarray:
        o, first = self.options, items[0]
        panels = [figures.Panel(item.entry.get("method", "?"), *_map_and_caption(item)) for item in items]
        top = (first.entry.get("topk") or [None])[0]
        predicted = "" if not top else "predicted: " + figures.class_caption(
            top.get("index"), top.get("probability"), {top.get("index"): top.get("label")})
        title = figures.describe(first.input.name, f"model {getattr(o, 'model', '')}")
        return figures.comparison_sheet(first.image, panels, first.box, title, predicted, o.colormap, o.alpha)

    def write_group(self, stem: Path, items: Sequence[ExplainedImage]) -> None:
        """Write the sheet of one image (items: its ExplainedImage per method, in column order) and
        record it in every item's outputs. OSError when it cannot be written."""
        if not items:
            return
        path = self.path(stem)
        make_output_folder(Path(self.options.output_dir), path.parent)
        write_png(path, figures.bgr(self.render(items)))
        size = path.stat().st_size
        for item in items:
            item.outputs[self.name] = str(path)
            item.output_bytes[self.name] = size

    def close(self) -> None:
        pass


class FolderSheetSink:
    """Sheets for a whole run: rows = images, columns = methods, a small overlay in each cell;
    at most `max_images` images (the first by input path), `rows_per_page` to a page and
    `methods_per_page` columns (more continue on further pages): `sheet_001.png`, ... in the output
    folder, written at close(). Keeps only thumbnails (about 50 kB per image and method)."""
    name = "folder-sheet"
    prefix = "sheet_"
    # the defaults: a page stays readable (12 rows of 128-pixel cells, 8 method columns) and a
    # run of thousands of images keeps 96 images' thumbnails in memory, not all of them
    MAX_IMAGES, ROWS_PER_PAGE, METHODS_PER_PAGE, CELL = 96, 12, 8, 128

    def __init__(self, options, methods: Sequence[str] | None = None, max_images: int | None = None,
                 rows_per_page: int | None = None, methods_per_page: int | None = None, cell: int | None = None):
        self.options = options
        self.methods = list(methods) if methods else None  # None: in the order they arrive
        self.max_images = max_images or self.MAX_IMAGES
        self.rows_per_page = rows_per_page or self.ROWS_PER_PAGE
        self.methods_per_page = methods_per_page or self.METHODS_PER_PAGE
        self.cell = cell or self.CELL
        self.rows: dict[str, figures.SheetRow] = {}
        self.order: list[str] = []  # the kept inputs, sorted
        self.seen_methods: list[str] = []
        self.pages: list[Path] = []
        self._lock = threading.Lock()  # write() runs on the writer threads

    def done(self, base: Path, entry: dict | None) -> bool:
        return True  # never makes an image be redone

    def write(self, item: ExplainedImage) -> None:
        key = str(item.input)
        method = item.entry.get("method", "?")
        with self._lock:
            if key not in self.rows:
                if len(self.order) >= self.max_images:
                    if key > self.order[-1]:
                        return  # beyond the cap: the sheet keeps the first inputs by path
                    del self.rows[self.order.pop()]
                bisect.insort(self.order, key)
                top = (item.entry.get("topk") or [None])[0]
                caption = "" if not top else "predicted: " + figures.class_caption(
                    top.get("index"), top.get("probability"), {top.get("index"): top.get("label")})
                self.rows[key] = figures.SheetRow(item.input.name, caption)
            if method not in self.seen_methods:
                self.seen_methods.append(method)
        o = self.options
        values, signed = drawn_map(item)
        picture = figures.thumbnail(item.image, values, item.box, self.cell, o.colormap, o.alpha, signed)
        with self._lock:
            found = self.rows.get(key)
            if found is not None:
                found.cells[method], found.captions[method], found.signed[method] = picture, class_text(item), signed

    def close(self) -> None:
        """Write the pages (replacing the sheets of an earlier run into the same folder)."""
        if not self.rows:
            return
        output_dir = Path(self.options.output_dir)
        methods = self.methods or self.seen_methods
        title = figures.describe(f"model {getattr(self.options, 'model', '')}",
                                 f"{len(self.rows)} images x {len(methods)} methods")
        pages = figures.folder_sheet_pages([self.rows[k] for k in self.order], methods, title,
                                           self.rows_per_page, self.methods_per_page, self.options.colormap,
                                           self.cell)
        for old in output_dir.glob(f"{self.prefix}[0-9][0-9][0-9].png"):
            if not old.is_symlink():
                old.unlink()
        for number, page in enumerate(pages, 1):
            path = output_dir / f"{self.prefix}{number:03d}.png"
            write_png(path, figures.bgr(page))
            self.pages.append(path)


FIGURE_SINKS: dict[str, type[FileSink]] = {sink.name: sink for sink in (
    LayerStripSink,
    LayerAnimationSink,
    LayerWebpSink,
    HeadFigureSink,
    HeadsByBlocksSink,
)}
