"""Heat-map overlays (OpenCV colormaps) at the image's own resolution.

The functions here return BGR images, for OpenCV's encoders (the output sinks); the figures and
notebook helpers in figures.py return RGB. Signed maps (relevance that can be negative) use a
diverging blue-white-red colormap with a symmetric scale: 0 is white, +s red and -s blue, s the
map's largest magnitude unless given (`overlay_signed`, `colorize_signed`).
"""
from __future__ import annotations

import cv2
import numpy as np

COLORMAPS = {name[len("COLORMAP_"):].lower(): getattr(cv2, name)
             for name in dir(cv2) if name.startswith("COLORMAP_")}


def colormap_id(name: str) -> int:
    try:
        return COLORMAPS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(sorted(COLORMAPS))}") from None


def overlay(image_rgb: np.ndarray, mask: np.ndarray, box, colormap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """BGR uint8 image: the mask, stretched over box (x0, y0, x1, y1), blended onto the image.

    Works in uint8 so a large photo costs a few bytes per pixel, not float arrays.
    Pixels outside the box (cropped away by the preprocessing) are left as they are.
    """
    height, width = image_rgb.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    box_w, box_h = max(x1 - x0, 1), max(y1 - y0, 1)
    small = np.uint8(np.clip(mask, 0, 1) * 255)
    heat = cv2.resize(small, (box_w, box_h), interpolation=cv2.INTER_LINEAR)
    # the part of the box that lies inside the image
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + box_w, width), min(y0 + box_h, height)
    heat = heat[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    result = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    region = result[iy0:iy1, ix0:ix1]
    colored = cv2.applyColorMap(heat, colormap_id(colormap))
    result[iy0:iy1, ix0:ix1] = cv2.addWeighted(region, 1 - alpha, colored, alpha, 0)
    return result


DIVERGING = "bwr"  # the colormap of signed maps: blue (negative), white (0), red (positive)


def _diverging_table() -> np.ndarray:
    """(256, 1, 3) BGR lookup table, blue -> white -> red, linear in RGB. Entry 127 is white and
    entries 127 - k and 127 + k mirror each other (blue and red swapped); 255 repeats 254."""
    t = np.clip((np.arange(256) - 127) / 127, -1, 1)
    red = np.where(t < 0, 1 + t, 1.0)      # rises to 1 at 0, stays
    blue = np.where(t > 0, 1 - t, 1.0)     # stays 1, falls from 0
    green = 1 - np.abs(t)
    return np.uint8(np.round(np.stack([blue, green, red], axis=-1) * 255))[:, None, :]


DIVERGING_TABLE = _diverging_table()


def signed_scale(mask: np.ndarray) -> float:
    """The symmetric scale of a signed map: its largest magnitude (1 for an all-zero map)."""
    peak = float(np.max(np.abs(mask))) if np.size(mask) else 0.0
    return peak if np.isfinite(peak) and peak > 0 else 1.0


def signed_index(mask: np.ndarray, scale: float | None = None) -> np.ndarray:
    """uint8 indices into DIVERGING_TABLE: -scale -> 0, 0 -> 127, +scale -> 254; v and -v land
    the same distance either side of 127 (values beyond the scale are clipped)."""
    scale = signed_scale(mask) if scale is None else float(scale)
    values = np.clip(np.nan_to_num(np.asarray(mask, np.float32) / scale), -1, 1)
    return np.uint8(np.round(values * 127) + 127)


def colorize_signed(mask: np.ndarray, scale: float | None = None) -> np.ndarray:
    """BGR image of a signed map at its own size, on the symmetric diverging scale."""
    return cv2.applyColorMap(signed_index(mask, scale), DIVERGING_TABLE)


def overlay_signed(image_rgb: np.ndarray, mask: np.ndarray, box=None, alpha: float = 0.5,
                   scale: float | None = None) -> np.ndarray:
    """BGR uint8 image: a signed map, stretched over box (x0, y0, x1, y1; None: the whole image),
    on the diverging colormap with a symmetric scale (scale: the magnitude shown as full blue and
    red; default the map's largest magnitude), blended onto the image."""
    height, width = image_rgb.shape[:2]
    box = (0, 0, width, height) if box is None else box
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    box_w, box_h = max(x1 - x0, 1), max(y1 - y0, 1)
    scale = signed_scale(mask) if scale is None else scale
    values = cv2.resize(np.asarray(mask, np.float32), (box_w, box_h), interpolation=cv2.INTER_LINEAR)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + box_w, width), min(y0 + box_h, height)
    values = values[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    result = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    region = result[iy0:iy1, ix0:ix1]
    colored = colorize_signed(values, scale)
    result[iy0:iy1, ix0:ix1] = cv2.addWeighted(region, 1 - alpha, colored, alpha, 0)
    return result


def compat_overlay(image_bgr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The original vit-explain's show_mask_on_image: JET added 1:1, divided by the max."""
    mask = cv2.resize(mask, (image_bgr.shape[1], image_bgr.shape[0]))
    heatmap = np.float32(cv2.applyColorMap(np.uint8(255 * mask), cv2.COLORMAP_JET)) / 255
    cam = heatmap + np.float32(image_bgr) / 255
    return np.uint8(255 * (cam / np.max(cam)))


def head_grid(image_rgb: np.ndarray, head_masks: np.ndarray, box, colormap: str = "jet", alpha: float = 0.5,
              tile_side: int = 384, gap: int = 4) -> np.ndarray:
    """One BGR image: an overlay per head, tiled in a near-square grid and labelled by head."""
    height, width = image_rgb.shape[:2]
    scale = min(1.0, tile_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
    small_box = tuple(v * scale for v in box)
    count = len(head_masks)
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    canvas = np.full((rows * (size[1] + gap) - gap, columns * (size[0] + gap) - gap, 3), 255, np.uint8)
    for head, mask in enumerate(head_masks):
        tile = overlay(small, mask, small_box, colormap, alpha)
        cv2.putText(tile, f"head {head}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        top, left = (head // columns) * (size[1] + gap), (head % columns) * (size[0] + gap)
        canvas[top:top + size[1], left:left + size[0]] = tile
    return canvas
