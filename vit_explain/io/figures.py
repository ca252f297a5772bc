"""Figures for people: comparison sheets, folder sheets, per-layer strips and animations, per-head
grids, deletion / insertion curves, and the notebook helper `show_mask_on_image`.

Every function here takes and returns RGB uint8 arrays (H, W, 3); OpenCV's BGR stays in
overlay.py and the writers (`bgr()` converts for them). numpy, OpenCV and PIL only.

Conventions every figure keeps:
* it says what it shows: a title with the model, the method, the class and its probability
  (what the caller knows of them), and headers on every tile;
* unsigned maps (every method here: masks in [0, 1]) use the run's colormap; signed maps (any
  negative value) use the diverging blue-white-red map with a symmetric scale (overlay.DIVERGING);
* sheets carry a colour bar that states the normalisation ("each map scaled to [0, 1] on its
  own": maps are never compared on a shared scale, as every method scales its own).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from .overlay import DIVERGING, colorize_signed, colormap_id, overlay, overlay_signed

BACKGROUND = (255, 255, 255)
INK = (32, 32, 32)
FAINT = (110, 110, 110)
TILE_BACKGROUND = (236, 236, 236)
PAD = 8
GAP = 6
UNSIGNED_NOTE = "each map scaled to [0, 1] on its own"
# distinct line colours for the curves (RGB), one per method in order
LINE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


# ---- images in -----------------------------------------------------------------------------

def as_rgb(image) -> np.ndarray:
    """An image as RGB uint8 (H, W, 3): a PIL image, a file path, an (H, W, 3) / (H, W, 4) /
    (H, W) array or a (3, H, W) array or tensor. uint8 values are taken as they are; floats in
    [0, 1] are scaled by 255; any other range (a normalised model input) is stretched to [0, 255]."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):  # a torch tensor (no torch import here)
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels first
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(f"an image must be (H, W), (H, W, 3), (H, W, 4) or (3, H, W); got shape {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    values = np.nan_to_num(array.astype(np.float32))
    if array.dtype.kind == "f" and values.min() >= 0 and values.max() <= 1:
        return np.uint8(np.round(values * 255))
    low, high = float(values.min()), float(values.max())
    return np.uint8(np.round((values - low) / (high - low if high > low else 1) * 255))


def as_images(images, count: int) -> list[np.ndarray]:
    """count RGB images from one image (count 1), a sequence of them, or a batch (B, 3, H, W) /
    (B, H, W, 3); ValueError when the number differs."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if len(items) != count:
        raise ValueError(f"give one image per mask: {len(items)} image(s) for {count} mask(s)")
    return [as_rgb(item) for item in items]


def bgr(image_rgb: np.ndarray) -> np.ndarray:
    """For OpenCV's writers (outputs.write_png)."""
    return np.ascontiguousarray(image_rgb[:, :, ::-1])


def encode(image_rgb: np.ndarray, ending: str = ".png") -> bytes:
    """The image encoded by ending (.png, .jpg, .webp)."""
    parameters = [cv2.IMWRITE_JPEG_QUALITY, 90] if ending in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(ending, bgr(image_rgb), parameters)
    if not ok:
        raise ValueError(f"cannot encode an image as {ending}")
    return data.tobytes()


def png_bytes(image_rgb: np.ndarray) -> bytes:
    return encode(image_rgb, ".png")


# ---- maps onto images ----------------------------------------------------------------------

def is_signed(mask: np.ndarray) -> bool:
    return bool(np.nanmin(mask) < 0) if np.size(mask) else False


def show_mask_on_image(image, mask, box=None, colormap: str = "jet", alpha: float = 0.5,
                       signed: bool | None = None) -> np.ndarray:
    """The mask over the image at the image's own resolution, as RGB uint8 (H, W, 3).

    image: anything `as_rgb` takes (a PIL image, a path, an RGB array); mask: (gh, gw) (a numpy
    array or a tensor); box: (x0, y0, x1, y1), the part of the image the model saw (None: all of
    it); colormap: an OpenCV colormap name for unsigned maps, blended with opacity alpha. A
    signed map (signed=None: any negative value) is drawn on the diverging blue-white-red map,
    symmetric around 0 (`overlay.overlay_signed`). The original vit-explain's helper of this name
    took and returned BGR; this one is RGB in and out.
    """
    picture = as_rgb(image)
    values = _mask_array(mask)
    signed = is_signed(values) if signed is None else signed
    if signed:
        return overlay_signed(picture, values, box, alpha)[:, :, ::-1].copy()
    height, width = picture.shape[:2]
    box = (0, 0, width, height) if box is None else box
    return overlay(picture, values, box, colormap, alpha)[:, :, ::-1].copy()


def colorize(mask, colormap: str = "jet", signed: bool | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """The mask alone as an RGB image, resized to size (width, height) when given."""
    values = _mask_array(mask)
    if size is not None:
        values = cv2.resize(values, size, interpolation=cv2.INTER_LINEAR)
    signed = is_signed(values) if signed is None else signed
    if signed:
        return colorize_signed(values)[:, :, ::-1].copy()
    return cv2.applyColorMap(np.uint8(np.clip(values, 0, 1) * 255), colormap_id(colormap))[:, :, ::-1].copy()


def thumbnail(image_rgb: np.ndarray, mask, box=None, side: int = 160, colormap: str = "jet",
              alpha: float = 0.5, signed: bool | None = None) -> np.ndarray:
    """The overlay at most side pixels on its longer side: the image is shrunk first, then
    overlaid (cheap for large photos)."""
    small, scale = fit_image(image_rgb, side)
    height, width = image_rgb.shape[:2]
    box = (0, 0, width, height) if box is None else box
    return show_mask_on_image(small, mask, tuple(v * scale for v in box), colormap, alpha, signed)


def fit_image(image_rgb: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """(image shrunk so its longer side is at most side, the scale used)."""
    height, width = image_rgb.shape[:2]
    scale = min(1.0, side / max(height, width))
    if scale == 1.0:
        return image_rgb, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA), scale


def _mask_array(mask) -> np.ndarray:
    if hasattr(mask, "detach"):
        mask = mask.detach().float().cpu().numpy()
    values = np.asarray(mask, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"a mask must be (gh, gw); got shape {values.shape}")
    return values


# ---- text ----------------------------------------------------------------------------------

@lru_cache(maxsize=16)
def font(size: int = 13):
    """DejaVu Sans where the system has it (wide character coverage), else Pillow's own font."""
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def line_height(size: int) -> int:
    return int(round(size * 1.35))


def text_width(text: str, size: int = 13) -> int:
    return int(math.ceil(font(size).getlength(text)))


def fit_text(text: str, width: int, size: int = 13) -> str:
    """text, cut with "..." so that it fits width pixels."""
    if text_width(text, size) <= width:
        return text
    while text and text_width(text + "...", size) > width:
        text = text[:-1]
    return text + "..." if text else ""


def draw_text(canvas: Image.Image, xy, text: str, size: int = 13, fill=INK, width: int | None = None,
              align: str = "left") -> None:
    """One line at xy (top-left); cut to width; align within width ("left" or "center")."""
    draw = ImageDraw.Draw(canvas)
    if width is not None:
        text = fit_text(text, width, size)
        if align == "center":
            xy = (xy[0] + max(0, (width - text_width(text, size)) // 2), xy[1])
    draw.text(xy, text, font=font(size), fill=fill)


def text_block(lines: Sequence[tuple[str, int, tuple]], width: int) -> np.ndarray:
    """A white band with lines (text, size, colour) cut to width, one under the other."""
    height = sum(line_height(size) for _, size, _ in lines) + 2
    canvas = Image.new("RGB", (max(width, 1), max(height, 1)), BACKGROUND)
    y = 1
    for text, size, colour in lines:
        draw_text(canvas, (0, y), text, size, colour, width)
        y += line_height(size)
    return np.asarray(canvas)


def describe(*parts) -> str:
    """Non-empty parts joined with " | ": what a figure shows."""
    return " | ".join(str(p) for p in parts if p)


def class_caption(index, probability: float | None, labels=None) -> str:
    """"dog 93.1%" from a class index, its probability and the class names (a list or a dict;
    "class N" without)."""
    if labels is None:
        name = f"class {index}"
    elif isinstance(labels, dict):
        name = str(labels.get(index, labels.get(str(index), f"class {index}")))
    else:
        name = str(labels[index]) if 0 <= int(index) < len(labels) else f"class {index}"
    return name if probability is None else f"{name} {probability:.1%}"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


# ---- colour bars ---------------------------------------------------------------------------

def colorbar(width: int, colormap: str = "jet", signed: bool = False, note: str | None = None,
             height: int = 12) -> np.ndarray:
    """A horizontal colour bar with its ends labelled and a note on the normalisation."""
    width = max(int(width), 120)
    bar_width = width - 2 * PAD
    ramp = np.linspace(-1 if signed else 0, 1, bar_width, dtype=np.float32)[None, :].repeat(height, 0)
    colours = colorize(ramp, colormap, signed=signed)
    size = 11
    lines = 2 if signed else 1  # the signed bar's note goes under its three labels
    canvas = Image.new("RGB", (width, height + lines * line_height(size) + 4), BACKGROUND)
    canvas.paste(Image.fromarray(colours), (PAD, 0))
    ImageDraw.Draw(canvas).rectangle((PAD - 1, 0, PAD + bar_width, height), outline=FAINT)
    low, high = ("-s", "+s") if signed else ("0", "1")
    note = note or (f"{DIVERGING} map: white 0, red +s, blue -s; s = each map's largest magnitude" if signed else
                    f"{colormap}, {UNSIGNED_NOTE}")
    y = height + 2
    draw_text(canvas, (PAD, y), low, size, FAINT)
    draw_text(canvas, (PAD + bar_width - text_width(high, size), y), high, size, FAINT)
    if signed:
        draw_text(canvas, (PAD + bar_width // 2 - text_width("0", size) // 2, y), "0", size, FAINT)
        draw_text(canvas, (PAD, y + line_height(size)), note, size, FAINT, bar_width, align="center")
    else:
        inner = bar_width - 2 * text_width(high, size) - 24
        draw_text(canvas, (PAD + (bar_width - inner) // 2, y), note, size, FAINT, inner, align="center")
    return np.asarray(canvas)


def colorbars(width: int, colormap: str, signed_flags: Sequence[bool]) -> list[np.ndarray]:
    """The bars a figure needs: the colormap's when any map is unsigned, the diverging one when
    any is signed."""
    bars = []
    if not all(signed_flags):
        bars.append(colorbar(width, colormap, signed=False))
    if any(signed_flags):
        bars.append(colorbar(width, colormap, signed=True))
    return bars


# ---- composing ------------------------------------------------------------------------------

def stack(parts: Sequence[np.ndarray], gap: int = GAP, pad: int = PAD) -> np.ndarray:
    """Parts one under the other, left-aligned, on white, with a margin."""
    width = max(p.shape[1] for p in parts) + 2 * pad
    height = sum(p.shape[0] for p in parts) + gap * (len(parts) - 1) + 2 * pad
    canvas = np.full((height, width, 3), 255, np.uint8)
    y = pad
    for part in parts:
        canvas[y:y + part.shape[0], pad:pad + part.shape[1]] = part
        y += part.shape[0] + gap
    return canvas


def wrap_parts(text: str, width: int, size: int) -> list[str]:
    """A title of " | "-joined parts broken into lines of whole parts that fit width (a part too
    long for a line of its own is cut there): a narrow figure still names the model, the method
    and the class."""
    lines: list[str] = []
    for part in text.split(" | "):
        if lines and text_width(f"{lines[-1]} | {part}", size) <= width:
            lines[-1] = f"{lines[-1]} | {part}"
        else:
            lines.append(part)
    return lines


def title_band(title: str, width: int, subtitle: str = "") -> np.ndarray:
    lines = [(line, 15, INK) for line in wrap_parts(title, width, 15)] + ([(subtitle, 12, FAINT)] if subtitle else [])
    return text_block(lines, width)


def tile(picture: np.ndarray, width: int, height: int) -> np.ndarray:
    """picture centred on a (height, width) grey tile."""
    canvas = np.full((height, width, 3), TILE_BACKGROUND, np.uint8)
    h, w = picture.shape[:2]
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top:top + h, left:left + w] = picture
    return canvas


def headed(picture: np.ndarray, lines: Sequence[tuple[str, int, tuple]], width: int, height: int) -> np.ndarray:
    """A tile with its header lines above it."""
    return stack([text_block(lines, width), tile(picture, width, height)], gap=2, pad=0)


def row(parts: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Parts side by side, top-aligned."""
    height = max(p.shape[0] for p in parts)
    width = sum(p.shape[1] for p in parts) + gap * (len(parts) - 1)
    canvas = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for part in parts:
        canvas[:part.shape[0], x:x + part.shape[1]] = part
        x += part.shape[1] + gap
    return canvas


def grid(parts: Sequence[np.ndarray], columns: int, gap: int = GAP) -> np.ndarray:
    rows = [row(parts[i:i + columns], gap) for i in range(0, len(parts), columns)]
    return stack(rows, gap, pad=0)


# ---- one image, several methods -----------------------------------------------------------

@dataclass
class Panel:
    """One method's map of one image, for a comparison sheet."""
    method: str
    mask: np.ndarray                # (gh, gw)
    caption: str = ""               # the explained class and its probability: "dog 93.1%"
    seconds: float | None = None    # the time the method took for this image
    signed: bool | None = None      # None: signed when the mask has a negative value


def comparison_sheet(image_rgb: np.ndarray, panels: Sequence[Panel], box=None, title: str = "",
                     input_caption: str = "", colormap: str = "jet", alpha: float = 0.5,
                     tile_side: int = 256) -> np.ndarray:
    """The input, then one overlay per method, side by side: headers with the method's name, the
    explained class and probability and the time it took; a title; colour bars."""
    if not panels:
        raise ValueError("a comparison sheet needs at least one method")
    small, scale = fit_image(image_rgb, tile_side)
    height, width = image_rgb.shape[:2]
    small_box = tuple(v * scale for v in ((0, 0, width, height) if box is None else box))
    tile_w, tile_h = small.shape[1], small.shape[0]
    column = max(tile_w, 150)
    tiles = [headed(small, [("input", 13, INK), (input_caption, 11, FAINT), ("", 11, FAINT)], column, tile_h)]
    flags = []
    for panel in panels:
        signed = is_signed(_mask_array(panel.mask)) if panel.signed is None else panel.signed
        flags.append(signed)
        picture = show_mask_on_image(small, panel.mask, small_box, colormap, alpha, signed)
        tiles.append(headed(picture, [(panel.method, 13, INK), (panel.caption, 11, FAINT),
                                      (duration(panel.seconds), 11, FAINT)], column, tile_h))
    body = row(tiles)
    parts = [title_band(title or "comparison", body.shape[1]), body]
    parts += colorbars(body.shape[1], colormap, flags)
    return stack(parts)


# ---- a folder: rows = images, columns = methods ---------------------------------------------

@dataclass
class SheetRow:
    """One image of a folder sheet: its name, caption and one small overlay per method."""
    name: str
    caption: str = ""
    cells: dict[str, np.ndarray] = field(default_factory=dict)     # method -> thumbnail (RGB)
    captions: dict[str, str] = field(default_factory=dict)         # method -> "dog 93.1%"
    signed: dict[str, bool] = field(default_factory=dict)


def folder_sheet(rows: Sequence[SheetRow], methods: Sequence[str], title: str = "", subtitle: str = "",
                 colormap: str = "jet", cell: int = 128, label_width: int = 170) -> np.ndarray:
    """One page: a row per image (its name and caption at the left), a column per method (its
    name on top), each cell the image's overlay for that method with its class caption; a title
    and colour bars. A missing cell (the method failed on that image) stays grey."""
    if not rows or not methods:
        raise ValueError("a folder sheet needs at least one image and one method")
    caption_size = 10
    header = [text_block([("", 12, INK)], label_width)]
    header += [text_block([(m, 12, INK)], cell) for m in methods]
    lines = [row(header)]
    flags = []
    for item in rows:
        label = text_block([(item.name, 12, INK), (item.caption, 10, FAINT)], label_width)
        cells = [label]
        for method in methods:
            picture = item.cells.get(method)
            body = tile(picture if picture is not None else np.zeros((0, 0, 3), np.uint8), cell, cell)
            if picture is not None:
                flags.append(item.signed.get(method, False))
            under = text_block([(item.captions.get(method, "" if picture is not None else "(none)"),
                                 caption_size, FAINT)], cell)
            cells.append(stack([body, under], gap=1, pad=0))
        lines.append(row(cells))
    body = stack(lines, gap=4, pad=0)
    parts = [title_band(title or "folder sheet", body.shape[1], subtitle), body]
    parts += colorbars(body.shape[1], colormap, flags or [False])
    return stack(parts)


def folder_sheet_pages(rows: Sequence[SheetRow], methods: Sequence[str], title: str = "",
                       rows_per_page: int = 12, methods_per_page: int = 8, colormap: str = "jet",
                       cell: int = 128) -> list[np.ndarray]:
    """Pages of a folder sheet: rows_per_page images and at most methods_per_page methods each
    (more methods continue on further pages), each titled with its page and range."""
    if rows_per_page < 1 or methods_per_page < 1:
        raise ValueError("rows_per_page and methods_per_page must be at least 1")
    row_groups = [rows[i:i + rows_per_page] for i in range(0, len(rows), rows_per_page)]
    method_groups = [list(methods[i:i + methods_per_page]) for i in range(0, len(methods), methods_per_page)]
    total = len(row_groups) * len(method_groups)
    pages = []
    for r, group in enumerate(row_groups):
        for m, chosen in enumerate(method_groups):
            number = r * len(method_groups) + m + 1
            first = r * rows_per_page + 1
            subtitle = f"page {number} of {total}: images {first}-{first + len(group) - 1} of {len(rows)}"
            if len(method_groups) > 1:
                subtitle += f", methods {m * methods_per_page + 1}-{m * methods_per_page + len(chosen)} of {len(methods)}"
            pages.append(folder_sheet(group, chosen, title, subtitle, colormap, cell))
    return pages


# ---- per layer -----------------------------------------------------------------------------

def layer_strip(image_rgb: np.ndarray, layer_masks: np.ndarray, box=None, blocks: Sequence[int] | None = None,
                title: str = "", note: str = "", colormap: str = "jet", alpha: float = 0.5,
                tile_side: int = 160, columns: int | None = None) -> np.ndarray:
    """Per-block maps side by side (wrapping after `columns`, default up to 12 per row), each
    labelled with its block; a title (note: what the maps are, e.g. "rollout up to each block")
    and colour bars."""
    layer_masks = np.asarray(layer_masks, dtype=np.float32)
    if layer_masks.ndim != 3 or not len(layer_masks):
        raise ValueError(f"layer masks must be (L, gh, gw) with L >= 1; got shape {layer_masks.shape}")
    blocks = list(range(len(layer_masks))) if blocks is None else list(blocks)
    small, scale = fit_image(image_rgb, tile_side)
    height, width = image_rgb.shape[:2]
    small_box = tuple(v * scale for v in ((0, 0, width, height) if box is None else box))
    flags, tiles = [], []
    for block, mask in zip(blocks, layer_masks, strict=True):
        signed = is_signed(mask)
        flags.append(signed)
        picture = show_mask_on_image(small, mask, small_box, colormap, alpha, signed)
        tiles.append(headed(picture, [(f"block {block}", 12, INK)], max(small.shape[1], 60), small.shape[0]))
    body = grid(tiles, columns or min(len(tiles), 12))
    parts = [title_band(title or "per-block maps", body.shape[1], note), body]
    parts += colorbars(body.shape[1], colormap, flags)
    return stack(parts)


def layer_frames(image_rgb: np.ndarray, layer_masks: np.ndarray, box=None, blocks: Sequence[int] | None = None,
                 title: str = "", colormap: str = "jet", alpha: float = 0.5, side: int = 384) -> list[np.ndarray]:
    """One labelled frame per block (the overlay at most side pixels, "block i (k of L)" and the
    title above it), for an animation over the blocks."""
    layer_masks = np.asarray(layer_masks, dtype=np.float32)
    blocks = list(range(len(layer_masks))) if blocks is None else list(blocks)
    small, scale = fit_image(image_rgb, side)
    height, width = image_rgb.shape[:2]
    small_box = tuple(v * scale for v in ((0, 0, width, height) if box is None else box))
    frames = []
    for k, (block, mask) in enumerate(zip(blocks, layer_masks, strict=True)):
        picture = show_mask_on_image(small, mask, small_box, colormap, alpha)
        width = max(small.shape[1], 200)
        lines = [(line, 12, INK) for line in wrap_parts(title, width, 12)]
        lines.append((f"block {block} ({k + 1} of {len(blocks)})", 12, FAINT))
        frames.append(stack([text_block(lines, width), picture], gap=2, pad=4))
    return frames


def animation_bytes(frames: Sequence[np.ndarray], ending: str = ".gif", duration_ms: int = 600) -> bytes:
    """An endlessly looping animation of the frames (RGB), as GIF or WebP bytes (PIL)."""
    if not frames:
        raise ValueError("an animation needs at least one frame")
    kind = {".gif": "GIF", ".webp": "WEBP"}.get(ending.lower())
    if kind is None:
        raise ValueError(f"animations are .gif or .webp, not {ending!r}")
    height = max(f.shape[0] for f in frames)
    width = max(f.shape[1] for f in frames)
    images = [Image.fromarray(tile_on_white(f, width, height)) for f in frames]
    buffer = io.BytesIO()
    options = {"save_all": True, "append_images": images[1:], "duration": duration_ms, "loop": 0}
    if kind == "WEBP":
        options.update(quality=85, method=4)
    else:
        options.update(optimize=False, disposal=1)
    images[0].save(buffer, format=kind, **options)
    return buffer.getvalue()


def tile_on_white(picture: np.ndarray, width: int, height: int) -> np.ndarray:
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[:picture.shape[0], :picture.shape[1]] = picture
    return canvas


# ---- per head ------------------------------------------------------------------------------

def head_grid_figure(image_rgb: np.ndarray, head_masks: np.ndarray, box=None, title: str = "",
                     note: str = "", colormap: str = "jet", alpha: float = 0.5, tile_side: int = 192) -> np.ndarray:
    """One block's heads: an overlay per head in a near-square grid, each labelled "head j", a
    title (note: which block) and colour bars."""
    head_masks = np.asarray(head_masks, dtype=np.float32)
    if head_masks.ndim != 3 or not len(head_masks):
        raise ValueError(f"head masks must be (heads, gh, gw); got shape {head_masks.shape}")
    small, scale = fit_image(image_rgb, tile_side)
    height, width = image_rgb.shape[:2]
    small_box = tuple(v * scale for v in ((0, 0, width, height) if box is None else box))
    tiles = [headed(show_mask_on_image(small, mask, small_box, colormap, alpha), [(f"head {j}", 12, INK)],
                    max(small.shape[1], 60), small.shape[0]) for j, mask in enumerate(head_masks)]
    body = grid(tiles, int(math.ceil(math.sqrt(len(tiles)))))
    flags = [is_signed(m) for m in head_masks]
    return stack([title_band(title or "attention heads", body.shape[1], note), body]
                 + colorbars(body.shape[1], colormap, flags))


def heads_by_blocks(image_rgb: np.ndarray, maps: np.ndarray, box=None, blocks: Sequence[int] | None = None,
                    title: str = "", note: str = "", colormap: str = "jet", alpha: float = 0.5,
                    tile_side: int = 96) -> np.ndarray:
    """Every head of every block: rows = blocks ("block i" at the left), columns = heads ("head j"
    on top); maps (L, heads, gh, gw). A title and colour bars."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 4 or not maps.shape[0] or not maps.shape[1]:
        raise ValueError(f"maps must be (blocks, heads, gh, gw); got shape {maps.shape}")
    blocks = list(range(len(maps))) if blocks is None else list(blocks)
    small, scale = fit_image(image_rgb, tile_side)
    height, width = image_rgb.shape[:2]
    small_box = tuple(v * scale for v in ((0, 0, width, height) if box is None else box))
    cell_w, cell_h = max(small.shape[1], 48), small.shape[0]
    label_w = 64
    lines = [row([text_block([("", 11, INK)], label_w)]
                 + [text_block([(f"head {j}", 11, INK)], cell_w) for j in range(maps.shape[1])], gap=3)]
    for block, block_maps in zip(blocks, maps, strict=True):
        label = tile_on_white(text_block([(f"block {block}", 11, INK)], label_w), label_w, cell_h)
        cells = [tile(show_mask_on_image(small, m, small_box, colormap, alpha), cell_w, cell_h) for m in block_maps]
        lines.append(row([label] + cells, gap=3))
    body = stack(lines, gap=3, pad=0)
    flags = [is_signed(m) for block_maps in maps for m in block_maps]
    return stack([title_band(title or "attention heads x blocks", body.shape[1], note), body]
                 + colorbars(body.shape[1], colormap, flags))


# ---- a notebook's explanation ---------------------------------------------------------------

def explanation_figure(masks: np.ndarray, captions: Sequence[str], images: Sequence[np.ndarray] | None = None,
                       boxes=None, title: str | None = None, colormap: str = "jet", alpha: float = 0.5,
                       tile_side: int = 224) -> np.ndarray:
    """A row per batch: each image's overlay (or the mask alone, without images) headed by its
    caption ("image k: dog 93.1%"); a title and colour bars."""
    masks = np.asarray(masks, dtype=np.float32)
    boxes = [None] * len(masks) if boxes is None else list(boxes)
    tiles, flags = [], []
    for k, mask in enumerate(masks):
        signed = is_signed(mask)
        flags.append(signed)
        if images is None:
            gh, gw = mask.shape
            scale = tile_side / max(gh, gw)
            picture = colorize(cv2.resize(mask, (max(1, round(gw * scale)), max(1, round(gh * scale))),
                                          interpolation=cv2.INTER_NEAREST), colormap, signed)
        else:
            picture = thumbnail(images[k], mask, boxes[k], tile_side, colormap, alpha, signed)
        tiles.append(headed(picture, [(f"image {k}", 12, INK), (captions[k] if k < len(captions) else "", 11, FAINT)],
                            max(picture.shape[1], 120), picture.shape[0]))
    body = grid(tiles, min(len(tiles), 6))
    subtitle = "masks over the patch grid" if images is None else "masks over the images"
    return stack([title_band(title or "explanation", body.shape[1], subtitle), body]
                 + colorbars(body.shape[1], colormap, flags))


# ---- deletion / insertion curves ------------------------------------------------------------

def curves_figure(curves: dict, title: str = "", note: str = "", width: int = 460, height: int = 300) -> np.ndarray:
    """Deletion and insertion curves side by side: for each method (curves: method ->
    {"deletion": [...], "insertion": [...], optional "deletion_auc", "insertion_auc"}) the
    explained class's probability against the fraction of patches removed / inserted; the legend
    gives each method's AUC. Drawn at twice the size and shrunk, for smooth lines."""
    if not curves:
        raise ValueError("no curves to draw")
    names = list(curves)
    panels = []
    for kind, better in (("deletion", "lower AUC is better"), ("insertion", "higher AUC is better")):
        series = [(name, np.asarray(curves[name][kind], dtype=np.float64), curves[name].get(f"{kind}_auc"))
                  for name in names if curves[name].get(kind) is not None]
        panels.append(_plot(series, f"{kind} ({better})",
                            f"fraction of patches {'removed' if kind == 'deletion' else 'inserted'}", width, height))
    body = row(panels, gap=16)
    return stack([title_band(title or "deletion and insertion curves", body.shape[1], note), body])


def _plot(series, heading: str, xlabel: str, width: int, height: int) -> np.ndarray:
    """One panel: axes from 0 to 1 on both sides, a polyline per series, a legend below."""
    s = 2  # supersampling
    left, right, top, bottom = 46, 12, 24, 40
    legend_rows = len(series)
    full_h = height + legend_rows * line_height(11) + 6
    canvas = Image.new("RGB", (width * s, full_h * s), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = left * s, top * s, (width - right) * s, (height - bottom) * s

    def point(fx, fy):
        return x0 + fx * (x1 - x0), y1 - min(max(fy, 0.0), 1.0) * (y1 - y0)

    for tick in np.linspace(0, 1, 6):
        x, _ = point(tick, 0)
        _, y = point(0, tick)
        draw.line((x, y0, x, y1), fill=(228, 228, 228), width=s)
        draw.line((x0, y, x1, y), fill=(228, 228, 228), width=s)
        draw.text((x - 9 * s, y1 + 4 * s), f"{tick:.1f}", font=font(10 * s), fill=FAINT)
        draw.text((x0 - 26 * s, y - 6 * s), f"{tick:.1f}", font=font(10 * s), fill=FAINT)
    draw.rectangle((x0, y0, x1, y1), outline=FAINT, width=s)
    for index, (_, values, _) in enumerate(series):
        if values.size < 2:
            continue
        xs = np.linspace(0, 1, values.size)
        draw.line([point(fx, fy) for fx, fy in zip(xs, values)], fill=LINE_COLOURS[index % len(LINE_COLOURS)],
                  width=2 * s, joint="curve")
    draw.text((x0, 4 * s), heading, font=font(12 * s), fill=INK)
    draw.text(((x0 + x1) // 2 - text_width(xlabel, 10 * s) // 2, y1 + 18 * s), xlabel, font=font(10 * s), fill=FAINT)
    y = height * s
    for index, (name, _, auc) in enumerate(series):
        colour = LINE_COLOURS[index % len(LINE_COLOURS)]
        draw.line((x0, y + 7 * s, x0 + 18 * s, y + 7 * s), fill=colour, width=3 * s)
        label = name if auc is None else f"{name}  AUC {auc:.3f}"
        draw.text((x0 + 24 * s, y), label, font=font(11 * s), fill=INK)
        y += line_height(11) * s
    small = canvas.resize((width, full_h), Image.LANCZOS)
    picture = np.asarray(small)
    # the y axis's label, written upright beside the axis
    label = text_block([("probability of the explained class", 10, FAINT)], 200)
    rotated = np.ascontiguousarray(np.rot90(label))
    h = min(rotated.shape[0], picture.shape[0])
    picture = picture.copy()
    picture[top:top + h, 0:rotated.shape[1]] = np.minimum(picture[top:top + h, 0:rotated.shape[1]], rotated[:h])
    return picture
