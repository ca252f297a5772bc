"""`vit-explain report OUTPUT_DIR`: one self-contained HTML page from a run's outputs.

Read from the folder: manifest.json (and the journal of a run that did not finish), the overlays,
masks and figures it lists (comparison sheets, per-block strips, head grids, signed relevance),
the inputs it names, the pages of `--sheet` (sheet_001.png, ...), and, when `vit-explain
evaluate` wrote there, evaluation.json and evaluation_curves.json. Written: OUTPUT_DIR/report.html (or --output), every
picture embedded as a data URI (JPEG thumbnails of the inputs and overlays, PNG figures), no
script and nothing fetched: a Content-Security-Policy allows data: images and inline styles only.
No torch import: the page is made in seconds.
"""
from __future__ import annotations

import base64
import html
import json
import sys
from collections import defaultdict
from pathlib import Path

import click
import numpy as np

from .._version import __version__
from ..io import figures
from ..io.images import ImageError, load_image
from ..io.manifest import Manifest
from ..io.messages import shown
from ..io.outputs import OutputError, atomic_write
from ..methods.table import METHODS
from .errors import EXIT_INPUT, EXIT_OK, EXIT_OUTPUT, CommandError
from .main import harden

REPORT_NAME = "report.html"
MAX_DECODE_PIXELS = 4_000_000     # thumbnails need no more (JPEGs are decoded reduced)
MAX_FIGURE_WIDTH = 1400           # wider figures are shrunk before embedding
MAX_ANIMATION_BYTES = 3 << 20     # animations are embedded as they are, up to this size
OVERLAY_OUTPUTS = ("overlay", "overlay-jpg")
FIGURE_OUTPUTS = {"layers": "per-block maps", "layers-webp": "per-block animation",
                  "layers-gif": "per-block animation", "heads-figure": "attention heads",
                  "heads": "attention heads", "heads-blocks": "attention heads x blocks",
                  "relevance-overlay": "signed relevance (red for the class, blue against)"}
SHEET_OUTPUT = "sheet"            # one comparison sheet per image, listed by each of its methods' entries
FOLDER_SHEETS = "sheet_[0-9][0-9][0-9].png"  # --sheet's pages
BASELINE_METHODS = ("random", "uniform")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("output_dir", type=click.Path(path_type=Path))
@click.option("--output", "output", type=click.Path(path_type=Path), default=None,
              help=f"Where the page goes. Default: OUTPUT_DIR/{REPORT_NAME}.")
@click.option("--max-images", "--max_images", "max_images", type=click.IntRange(min=1), default=200,
              help="Images shown (the first by input path); the page says how many were left out.")
@click.option("--thumbnail", type=click.IntRange(64, 2048), default=320,
              help="Longest side of the embedded inputs and overlays, in pixels.")
@click.option("--quiet", is_flag=True, help="No summary line.")
@click.option("--debug", is_flag=True, help="Show a traceback with errors.")
def report(output_dir: Path, output: Path | None, max_images: int, thumbnail: int, quiet: bool, debug: bool) -> int:
    """Write one self-contained HTML page from a run's outputs: the methods side by side for every
    image, each image's classes and parameters, and, after `vit-explain evaluate` into the same
    folder, the deletion and insertion curves and the AUC table."""
    page = Report(output_dir, max_images, thumbnail).html()
    target = output or output_dir / REPORT_NAME
    try:
        atomic_write(target, page.encode("utf-8"))
    except OSError as error:
        raise CommandError(f"cannot write {shown(target)}: {error.strerror or error}", EXIT_OUTPUT) from None
    if not quiet:
        print(f"wrote {shown(target)} ({len(page) // 1024} KiB)", file=sys.stderr)
    return EXIT_OK


harden(report)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def jpeg_uri(image_rgb: np.ndarray) -> str:
    return data_uri(figures.encode(image_rgb, ".jpg"), "image/jpeg")


def png_uri(image_rgb: np.ndarray) -> str:
    return data_uri(figures.png_bytes(image_rgb), "image/png")


def e(text) -> str:
    """Text for the page, escaped (file names and labels can hold anything)."""
    return html.escape("" if text is None else str(text), quote=True)


def percent(value) -> str:
    return "" if not isinstance(value, (int, float)) else f"{value:.1%}"


class Report:
    def __init__(self, output_dir: Path, max_images: int = 200, thumbnail: int = 320):
        if not output_dir.is_dir():
            raise CommandError(f"{shown(output_dir)} is not a folder: give the --output-dir of a run", EXIT_INPUT)
        self.folder = output_dir.resolve()
        self.max_images, self.side = max_images, thumbnail
        self.header = self.read_json(output_dir / "manifest.json") or {}
        try:
            entries = list(Manifest(output_dir, {}).entries.values())  # manifest.json and the journal
        except OutputError as error:
            raise CommandError(str(error), EXIT_INPUT) from None
        if not entries and not (output_dir / "evaluation.json").is_file():
            raise CommandError(f"{shown(output_dir)} holds no manifest.json entries and no evaluation.json: "
                               "nothing to report (run vit-explain or vit-explain evaluate into it first)", EXIT_INPUT)
        self.by_input: dict[str, list[dict]] = defaultdict(list)
        self.failed = []
        order = {name: index for index, name in enumerate(METHODS)}  # the method table's order, others after
        for entry in sorted(entries, key=lambda x: (str(x.get("input")), order.get(x.get("method"), len(order)),
                                                     str(x.get("method")),
                                                     json.dumps(x.get("parameters"), sort_keys=True))):
            (self.by_input[str(entry.get("input"))] if entry.get("status") == "explained"
             else self.failed).append(entry)

    @staticmethod
    def read_json(path: Path):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    # ---- files ---------------------------------------------------------------------------

    def inside(self, name) -> Path | None:
        """An output the manifest names, when it lies inside the folder (a manifest is data)."""
        if not isinstance(name, str) or not name:
            return None
        path = Path(name)
        path = (path if path.is_absolute() else Path.cwd() / path).resolve()
        return path if path.is_relative_to(self.folder) and path.is_file() else None

    def picture(self, path: Path | None) -> np.ndarray | None:
        if path is None:
            return None
        try:
            return np.asarray(load_image(path, MAX_DECODE_PIXELS))
        except (ImageError, OSError, ValueError):
            return None

    def thumb(self, image: np.ndarray) -> np.ndarray:
        return figures.fit_image(image, self.side)[0]

    def overlay_of(self, entry: dict, input_image: np.ndarray | None) -> tuple[np.ndarray | None, str]:
        """(thumbnail of the method's overlay, a note); from the overlay file, else drawn from the mask."""
        outputs = entry.get("outputs") or {}
        for name in OVERLAY_OUTPUTS:
            image = self.picture(self.inside(outputs.get(name)))
            if image is not None:
                return self.thumb(image), ""
        mask_path = self.inside(outputs.get("mask"))
        if mask_path is not None and input_image is not None:
            try:
                mask = np.load(mask_path, allow_pickle=False)
                if mask.ndim == 2 and np.isfinite(mask).all():
                    return (figures.show_mask_on_image(self.thumb(input_image), mask),
                            "drawn from the mask over the whole image (the preprocessing's crop is not known here)")
            except (OSError, ValueError):
                pass
        return None, "no overlay was written"

    # ---- the page ------------------------------------------------------------------------

    def html(self) -> str:
        shown_inputs = list(self.by_input)[:self.max_images]
        methods = list(dict.fromkeys(e_.get("method", "?") for entries in self.by_input.values() for e_ in entries))
        models = sorted({(e_.get("model") or {}).get("name") or "" for entries in self.by_input.values()
                         for e_ in entries} - {""})
        parts = [self.head(), "<body>", "<header><h1>vit-explain report</h1>",
                 f"<p class='meta'>folder {e(self.folder)} &middot; {len(self.by_input)} images explained"
                 f" &middot; {len(self.failed)} failed &middot; methods: {e(', '.join(methods) or 'none')}"
                 f" &middot; model: {e(', '.join(models) or self.header.get('model') or 'unknown')}"
                 f" &middot; vit-explain {e(self.header.get('vit_explain', __version__))}"
                 f"{' (report ' + e(__version__) + ')' if self.header.get('vit_explain') not in (None, __version__) else ''}"
                 "</p></header>"]
        parts.append(self.evaluation_section())
        parts.append(self.sheets_section())
        if self.by_input:
            parts.append("<section id='images'><h2>Images</h2>")
            parts.append("<p class='note'>Each row: the input, then every method's map over it (each map scaled "
                         "to [0, 1] on its own; the colour scale is the run's colormap, red high for jet). Under "
                         "each map: the class it explains and the model's probability for it; class-agnostic "
                         "methods show the predicted class.</p>")
            for number, key in enumerate(shown_inputs, 1):
                parts.append(self.image_section(number, key, self.by_input[key]))
            left = len(self.by_input) - len(shown_inputs)
            if left:
                parts.append(f"<p class='note'>{left} more images are not shown (--max-images {self.max_images}).</p>")
            parts.append("</section>")
        if self.failed:
            parts.append("<section id='failed'><h2>Failed</h2><ul>")
            parts += [f"<li>{e(entry.get('input'))}: {e(entry.get('method'))}: {e(entry.get('error'))}</li>"
                      for entry in self.failed]
            parts.append("</ul></section>")
        parts.append("</body></html>\n")
        return "\n".join(parts)

    def head(self) -> str:
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vit-explain report: {e(self.folder.name)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #202020; background: #fff; }}
h1 {{ font-size: 1.5em; margin: 0 0 .2em; }} h2 {{ font-size: 1.2em; margin: 1.2em 0 .4em; }}
h3 {{ font-size: 1.05em; margin: 1em 0 .3em; word-break: break-all; }}
.meta, .note {{ color: #666; }} .note {{ font-size: .9em; max-width: 70em; }}
.compare {{ display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }}
figure {{ margin: 0; max-width: {self.side}px; }} figure img {{ display: block; max-width: 100%; height: auto; }}
figcaption {{ font-size: .85em; color: #444; }} figcaption b {{ color: #202020; }}
.missing {{ width: {self.side // 2}px; height: {self.side // 2}px; background: #eee; color: #777;
  display: flex; align-items: center; justify-content: center; font-size: .85em; text-align: center; }}
table {{ border-collapse: collapse; margin: .4em 0; }} td, th {{ border: 1px solid #ddd; padding: 3px 8px; }}
th {{ background: #f4f4f4; text-align: left; }} td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.baseline td {{ color: #777; font-style: italic; }} .best {{ font-weight: bold; }}
details {{ margin: .3em 0; }} summary {{ cursor: pointer; color: #345; }}
.figures img {{ max-width: 100%; height: auto; display: block; margin: .3em 0; }}
article {{ border-top: 1px solid #e4e4e4; padding-top: .3em; }}
</style></head>"""

    def image_section(self, number: int, key: str, entries: list[dict]) -> str:
        input_image = self.picture(Path(key)) if key else None
        first = entries[0]
        top = (first.get("topk") or [None])[0]
        predicted = "" if not top else f"predicted: {top.get('label')} {percent(top.get('probability'))}"
        cells = [self.cell("input", predicted, None if input_image is None else self.thumb(input_image),
                           "" if input_image is not None else "the input could not be read")]
        extra = self.comparison_sheet(entries)
        for entry in entries:
            overlay, note = self.overlay_of(entry, input_image)
            cells.append(self.cell(entry.get("method", "?"), self.class_caption(entry), overlay, note,
                                   self.parameters_text(entry)))
            extra += self.figures_of(entry)
        size = first.get("image_size") or []
        parts = [f"<article id='image-{number}'><h3>{number}. {e(Path(key).name)}</h3>",
                 "<div class='compare'>", *cells, "</div>", self.metadata(key, entries, size)]
        if extra:
            parts += ["<details class='figures'><summary>more figures</summary>", *extra, "</details>"]
        parts.append("</article>")
        return "\n".join(parts)

    @staticmethod
    def cell(title: str, caption: str, image: np.ndarray | None, note: str = "", detail: str = "") -> str:
        body = (f"<img src='{jpeg_uri(image)}' width='{image.shape[1]}' height='{image.shape[0]}' alt='{e(title)}'>"
                if image is not None else f"<div class='missing'>{e(note or 'missing')}</div>")
        lines = [f"<b>{e(title)}</b>"] + [e(t) for t in (caption, detail) if t]
        if note and image is not None:
            lines.append(f"<i>{e(note)}</i>")
        return f"<figure>{body}<figcaption>{'<br>'.join(lines)}</figcaption></figure>"

    @staticmethod
    def class_caption(entry: dict) -> str:
        explained = entry.get("explained_class")
        topk = entry.get("topk") or []
        if explained:
            probability = next((t.get("probability") for t in topk if t.get("index") == explained.get("index")), None)
            return f"explains {explained.get('label')}" + (f" {percent(probability)}" if probability is not None else "")
        if topk:
            return f"class-agnostic; top {topk[0].get('label')} {percent(topk[0].get('probability'))}"
        return "class-agnostic"

    @staticmethod
    def parameters_text(entry: dict) -> str:
        parameters = entry.get("parameters") or {}
        return ", ".join(f"{k}={v}" for k, v in parameters.items() if v is not None)

    def embedded_figure(self, path: Path, label: str) -> str | None:
        image = self.picture(path)
        if image is None:
            return None
        image = figures.fit_image(image, MAX_FIGURE_WIDTH)[0]
        return f"<p>{e(label)}</p><img src='{jpeg_uri(image)}' alt='{e(label)}'>"

    def comparison_sheet(self, entries: list[dict]) -> list[str]:
        """The image's comparison sheet (every method of a run of several), once: each method's
        entry lists the same file."""
        paths = dict.fromkeys(p for p in (self.inside((entry.get("outputs") or {}).get(SHEET_OUTPUT))
                                          for entry in entries) if p is not None)
        return [figure for figure in (self.embedded_figure(path, "comparison sheet") for path in paths) if figure]

    def sheets_section(self) -> str:
        """--sheet's pages (rows = images, columns = methods), as the last run into the folder left them."""
        pages = [page for page in sorted(self.folder.glob(FOLDER_SHEETS)) if not page.is_symlink()]
        found = [figure for figure in (self.embedded_figure(page, f"sheet {page.name}") for page in pages) if figure]
        if not found:
            return ""
        return "\n".join(["<section id='sheets' class='figures'><h2>Sheets</h2>", *found, "</section>"])

    def figures_of(self, entry: dict) -> list[str]:
        """The method's other figures (per-block strips and animations, head grids), embedded."""
        found = []
        outputs = entry.get("outputs") or {}
        for name, what in FIGURE_OUTPUTS.items():
            path = self.inside(outputs.get(name))
            if path is None:
                continue
            label = f"{entry.get('method')}: {what}"
            if path.suffix.lower() in (".gif", ".webp"):
                if path.stat().st_size <= MAX_ANIMATION_BYTES and self.picture(path) is not None:
                    mime = "image/gif" if path.suffix.lower() == ".gif" else "image/webp"
                    found.append(f"<p>{e(label)}</p><img src='{data_uri(path.read_bytes(), mime)}' alt='{e(label)}'>")
                continue
            if (name == "heads" and outputs.get("heads-figure")) or (name == "layers-gif" and outputs.get("layers-webp")):
                continue  # the same picture, better: the labelled grid, the WebP animation
            figure = self.embedded_figure(path, label)
            if figure is not None:
                found.append(figure)
        return found

    def metadata(self, key: str, entries: list[dict], size) -> str:
        first = entries[0]
        model = first.get("model") or {}
        rows = [("input", key), ("image size", " x ".join(map(str, size)) if size else ""),
                ("model", model.get("name")), ("weights", model.get("weights")),
                ("checkpoint", model.get("checkpoint")), ("hub", model.get("hub")),
                ("top classes", "; ".join(f"{t.get('label')} ({t.get('index')}) {percent(t.get('probability'))}"
                                          for t in first.get("topk") or []))]
        for entry in entries:
            outputs = ", ".join(f"{k}: {Path(v).name}" for k, v in (entry.get("outputs") or {}).items() if v)
            rows.append((entry.get("method"), "; ".join(t for t in (
                self.parameters_text(entry), f"target {entry.get('target')}", self.class_caption(entry),
                f"mask grid {' x '.join(map(str, entry.get('mask_grid') or []))}", outputs) if t)))
        scores = self.scores_for(key)
        if scores:
            rows.append(("evaluation", "; ".join(
                f"{r['method']}: deletion {r['deletion_auc']:.3f}, insertion {r['insertion_auc']:.3f}" for r in scores)))
        body = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows if v not in (None, ""))
        return f"<details><summary>details</summary><table>{body}</table></details>"

    # ---- evaluation ---------------------------------------------------------------------

    def evaluation(self) -> dict | None:
        if not hasattr(self, "_evaluation"):
            document = self.read_json(self.folder / "evaluation.json")
            self._evaluation = document if isinstance(document, dict) else None
        return self._evaluation

    def scores_for(self, key: str) -> list[dict]:
        document = self.evaluation()
        if not document or not key:
            return []
        rows = []
        for row in document.get("images") or []:
            image = Path(str(row.get("image", "")))
            try:
                same = (image if image.is_absolute() else Path.cwd() / image).resolve() == Path(key)
            except (OSError, ValueError):
                same = False
            if same and isinstance(row.get("deletion_auc"), (int, float)):
                rows.append(row)
        return rows

    def evaluation_section(self) -> str:
        document = self.evaluation()
        if not document:
            return ""
        summary = [s for s in document.get("summary") or [] if isinstance(s, dict)]
        steps, baseline = document.get("steps"), document.get("baseline")
        parts = ["<section id='evaluation'><h2>Evaluation</h2>",
                 f"<p class='note'>Deletion and insertion (Petsiuk et al. 2018): the explained class's probability "
                 f"as patches are removed from (or inserted into) the image, most relevant first, in {e(steps)} steps; "
                 f"removed patches become {e(baseline)}. AUC: the area under that curve by the trapezoid rule, x from "
                 f"0 to 1, averaged over the images; deletion lower is better, insertion higher. random and uniform "
                 f"are baseline maps.</p>"]
        columns = [("deletion_auc", "deletion AUC (lower better)", min), ("insertion_auc", "insertion AUC (higher better)", max),
                   ("pointing_game", "pointing game", max), ("energy_pointing", "energy pointing", max)]
        columns = [c for c in columns if any(isinstance(s.get(c[0]), (int, float)) for s in summary)]
        best = {}
        for key, _, pick in columns:
            values = [s[key] for s in summary if s.get("method") not in BASELINE_METHODS
                      and isinstance(s.get(key), (int, float))]
            best[key] = pick(values) if values else None
        head = "".join(f"<th>{e(label)}</th>" for _, label, _ in columns)
        parts.append(f"<table id='auc'><tr><th>method</th><th>images</th>{head}</tr>")
        for s in summary:
            baseline_row = s.get("method") in BASELINE_METHODS
            cells = "".join(
                f"<td class='num{' best' if not baseline_row and s.get(key) == best[key] else ''}'>"
                f"{s[key]:.3f}</td>" if isinstance(s.get(key), (int, float)) else "<td></td>"
                for key, _, _ in columns)
            parts.append(f"<tr class='{'baseline' if baseline_row else ''}'><td>{e(s.get('method'))}</td>"
                         f"<td class='num'>{e(s.get('images'))}</td>{cells}</tr>")
        parts.append("</table>")
        curves = self.read_json(self.folder / "evaluation_curves.json")
        methods = (curves or {}).get("methods") if isinstance(curves, dict) else None
        plot = None
        if isinstance(methods, dict) and methods:
            try:
                plot = figures.curves_figure(methods, "deletion and insertion curves",
                                             f"mean over {max(m.get('images', 0) for m in methods.values())} images")
            except (ValueError, TypeError, AttributeError):
                plot = None
        if plot is None:
            plot = self.picture(self.inside(str(self.folder / "evaluation_curves.png")))
        if plot is not None:
            parts.append(f"<img id='curves' src='{png_uri(plot)}' width='{plot.shape[1]}' height='{plot.shape[0]}' "
                         "alt='deletion and insertion curves per method' style='max-width:100%;height:auto'>")
        else:
            parts.append("<p class='note'>No curves: this evaluation.json predates evaluation_curves.json; run "
                         "vit-explain evaluate again to draw them.</p>")
        parts.append("</section>")
        return "\n".join(parts)
