"""Finding and decoding input images: anything PIL can read becomes an 8-bit RGB PIL image.

Nothing here knows about models. Every failure a user can cause surfaces as `ImageError`, whose
message is one line that names the file, so a batch run can report it per file and go on.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import threading
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# absolute, not relative: tests load this file as a module of its own (no torch import)
from vit_explain.io.messages import shown

__all__ = ["MAX_PIXELS", "ImageError", "find_images", "find_inputs", "image_size", "is_image", "load_image"]

# Larger images are decoded reduced (keeping their aspect): a bounded amount of memory per image,
# far more pixels than any overlay needs.
MAX_PIXELS = 25_000_000

# Above this we refuse outright: even a reduced decode of such a file takes too long to be useful.
ABSURD_PIXELS = 10_000_000_000

# The memory budget of one image, checked from the header before anything is decoded: decoding
# it and turning it into 8-bit RGB may take at most this much (see decode_bytes). JPEGs count
# at the reduced scale their decoder delivers. A decoding worker holds one image at a time.
MAX_DECODE_BYTES = 1 << 30
# Wider (or taller) than this is refused: the model's resize of the short side would blow the
# long side up to millions of pixels, for an image no model can read anyway.
MAX_ASPECT = 100

# bytes per pixel of PIL's decoded modes (others count as 4)
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "I;16": 2, "I;16L": 2, "I;16B": 2,
               "I;16N": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4,
               "CMYK": 4, "I": 4, "F": 4}

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPS_AXES = {5, 6, 7, 8}


class ImageError(ValueError):
    """One-line, user-facing reason an input cannot be used (str(e) is printed as is)."""


# --- PIL's decompression-bomb check -------------------------------------------------------------
# PIL refuses images above ~179 Mpx. We bound memory ourselves (reduced decode, ABSURD_PIXELS), so
# the check is switched off while *we* open files, and restored afterwards. It is a module global,
# so a counter under a lock keeps overlapping calls from different threads from restoring too early.
_bomb_lock = threading.Lock()
_bomb_users = 0
_bomb_saved = None


@contextlib.contextmanager
def _no_bomb_check():
    global _bomb_users, _bomb_saved
    with _bomb_lock:
        if _bomb_users == 0:
            _bomb_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _bomb_users += 1
    try:
        yield
    finally:
        with _bomb_lock:
            _bomb_users -= 1
            if _bomb_users == 0:
                Image.MAX_IMAGE_PIXELS = _bomb_saved


def _short(exc: BaseException) -> str:
    """The first line of an exception, capped, for a one-line message."""
    text = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
    return text if len(text) <= 100 else text[:97] + "..."


def _check_file(path: Path) -> None:
    """Fail early, with a plain message, on what is not a non-empty file."""
    if not path.exists():
        raise ImageError(f"no such file or folder: {shown(path)}")
    if path.is_dir():
        raise ImageError(f"{shown(path)} is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageError(f"{shown(path)} is empty (0 bytes)")


# --- finding -------------------------------------------------------------------------------------

def is_image(path: str | os.PathLike) -> bool:
    """True if PIL recognises the file by its content. Reads the header only, never decodes."""
    try:
        with _no_bomb_check(), Image.open(path):
            return True
    except Exception:  # anything PIL cannot identify (or cannot even open) is not an image
        return False


def find_images(path: str | os.PathLike) -> list[Path]:
    """A file -> [file]; a folder -> every image file below it, recursively, sorted.

    Images are recognised by content, not extension. Hidden files and folders are skipped. A file
    whose header looks right but whose data is broken is still returned: load_image reports it.
    """
    return find_inputs(path)[0]


def find_inputs(path: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """find_images, plus the files in a folder that are named like images (.jpg, .png, ...)
    but are not: a user expects to hear about those rather than have them skipped silently."""
    root = Path(path)
    if not root.exists():
        raise ImageError(f"no such file or folder: {shown(root)}")
    if not root.is_dir():
        _check_file(root)
        if not is_image(root):
            raise ImageError(f"{shown(root)} is not an image PIL can read")
        return [root], []

    files = []
    # followlinks=False: a symlinked folder cycle cannot make us walk forever.
    for folder, dirs, names in os.walk(root, onerror=_raise_walk_error):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # prune hidden folders in place
        files.extend(Path(folder) / n for n in names if not n.startswith("."))
    files = [f for f in files if f.is_file()]  # drops broken links, sockets, fifos
    if not files:
        raise ImageError(f"folder {shown(root)} is empty")
    recognised = {f: is_image(f) for f in files}
    images = sorted(f for f, ok in recognised.items() if ok)
    if not images:
        raise ImageError(f"no images found in folder {shown(root)} ({len(files)} files looked at)")
    extensions = Image.registered_extensions()
    misnamed = sorted(f for f, ok in recognised.items() if not ok and f.suffix.lower() in extensions)
    return images, misnamed


def _raise_walk_error(err: OSError) -> None:
    raise ImageError(f"cannot read folder {shown(err.filename)}: {err.strerror or _short(err)}")


# --- decoding ------------------------------------------------------------------------------------

def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as load_image would show it at full size (EXIF orientation applied).

    Reads the header only.
    """
    path = Path(path)
    _check_file(path)
    try:
        with _no_bomb_check(), Image.open(path) as im:
            width, height = im.size
            # The base-class getexif reads EXIF already parsed from the header; PNG's override
            # would decode the whole image to look for a late eXIf chunk.
            orientation = Image.Image.getexif(im).get(ExifTags.Base.Orientation, 1)
            if im.format == "TIFF":
                orientation = 1  # PIL's TIFF reader already reports (and loads) the turned size
    except UnidentifiedImageError:
        raise ImageError(f"{shown(path)} is not an image PIL can read") from None
    except Exception as e:  # PIL raises many types on a corrupt header
        raise ImageError(f"{shown(path)} is truncated or corrupt: {_short(e)}") from None
    return (height, width) if orientation in _SWAPS_AXES else (width, height)


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, data: bytes | None = None) -> Image.Image:
    """Decode an image fully into 8-bit RGB, EXIF orientation applied, at most `max_pixels` pixels.

    Larger images are reduced (aspect kept); JPEGs are decoded at 1/2, 1/4 or 1/8 scale directly
    by the decoder, so memory stays bounded by the result rather than by the file. Transparency is
    composited onto white. Raises ImageError (never a PIL exception) naming the file and the reason.
    With `data`, the file's bytes as someone else read them (a distributed engine), `path` only
    names the image in messages: the same decoding, the same result.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    if data is None:
        path = Path(path)
        _check_file(path)
    elif not data:
        raise ImageError(f"{shown(path)} is empty (0 bytes)")
    try:
        with _no_bomb_check(), Image.open(path if data is None else io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > ABSURD_PIXELS:
                raise ImageError(f"{shown(path)} is too large to load ({width} x {height} pixels)")
            if max(width, height) > MAX_ASPECT * min(width, height):
                raise ImageError(f"{shown(path)} is {width} x {height} pixels: an aspect ratio beyond "
                                 f"{MAX_ASPECT}:1, which no vision model reads; crop it first")
            if width * height > max_pixels:
                scale = next((s for s in (1, 2, 4, 8)
                              if math.ceil(width / s) * math.ceil(height / s) <= max_pixels), 8)
                # JPEG only (a no-op elsewhere): the decoder scales by 1/`scale`, since draft picks
                # the largest scale whose result is at least this big.
                im.draft("RGB", (max(1, width // scale), max(1, height // scale)))
            check_budget(path, im.mode, *im.size)  # the size the decoder will deliver
            im.load()  # frame 0 of an animation; decode errors surface here
            _exif_transpose(im)  # while the file is open: TIFF reads its EXIF from it
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(f"{shown(path)} cannot be read (permission denied)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{shown(path)} is not an image PIL can read") from None
    except MemoryError:
        raise ImageError(f"{shown(path)} is too large to decode in the memory available") from None
    except Exception as e:  # PIL plugins raise OSError, SyntaxError, ValueError, EOFError, ...
        raise ImageError(f"{shown(path)} is truncated or corrupt: {_short(e)}") from None

    try:
        rgb = _to_rgb(im)
    except (ValueError, OSError) as e:  # e.g. LAB or multi-channel float TIFFs
        raise ImageError(f"{shown(path)} has pixels ({im.mode}) that cannot be shown as RGB: {_short(e)}") from None

    if rgb.width * rgb.height > max_pixels:  # not a JPEG, or even 1/8 scale was too big
        size = _fit(rgb.width, rgb.height, max_pixels)
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)  # reduce() first: fast
    return rgb


def decode_bytes(mode: str, width: int, height: int) -> int:
    """Peak bytes to decode an image and turn it into 8-bit RGB: the decoded pixels, one converted
    copy (RGBA for transparency, 8-bit gray for high bit depths; at most 4 bytes a pixel) and the
    RGB result (3). Conversions work in row chunks, so their temporaries stay small."""
    return width * height * (_MODE_BYTES.get(mode, 4) + 4 + 3)


def check_budget(path: Path, mode: str, width: int, height: int) -> None:
    needed = decode_bytes(mode, width, height)
    if needed > MAX_DECODE_BYTES:
        raise ImageError(f"{shown(path)} is too large to decode: {width} x {height} pixels ({mode}) need about "
                         f"{needed / 2**30:.1f} GiB, over the {MAX_DECODE_BYTES / 2**30:.0f} GiB budget of an "
                         "image; make it smaller or save it as a JPEG (decoded reduced)")


def _exif_transpose(im: Image.Image) -> None:
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:
        # Malformed EXIF is common in the wild and the pixels are fine: show them unrotated.
        pass


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, keeping what the pixels mean."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # PIL's own convert clips these to 0..255, which turns most 16-bit images white.
        im = Image.fromarray(_to_uint8(np.asarray(im), im.mode), mode="L")
    if im.has_transparency_data:
        # Dropping alpha would show the (often black) colour under transparent pixels: use white.
        rgba = im.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return im if im.mode == "RGB" else im.convert("RGB")  # CMYK (Adobe too), YCbCr, P, L, 1, ...


CHUNK_PIXELS = 1 << 20  # conversions run over row chunks of about this many pixels


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Scale high-bit-depth gray to 0..255 by its bit depth (or, with no fixed depth, its range).

    Row chunk by row chunk, so the float temporaries stay a few MB whatever the image's size."""
    if a.size == 0:
        return a.astype(np.uint8)
    finite = mode != "F" or bool(np.isfinite(a).all())
    # non-finite floats count as 0, as if nan_to_num(a, 0, 0, 0) had run first
    low, high = (float(a.min()), float(a.max())) if finite else _finite_range(a, also=0.0)
    offset = 0.0
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "I" and low >= 0 and high <= 65535:
        top = 255.0 if high <= 255 else 65535.0  # 8-bit or 16-bit data stored as 32-bit ints
    elif mode == "F" and finite and low >= 0 and high <= 1:
        top = 1.0  # float images in [0, 1] are the common convention
    else:  # signed/32-bit/float data has no fixed range: stretch what is there
        offset, top = low, (high - low) or 1.0
    out = np.empty(a.shape, dtype=np.uint8)
    rows = max(1, CHUNK_PIXELS // max(1, a.shape[1] if a.ndim > 1 else a.size))
    for start in range(0, a.shape[0], rows):
        chunk = a[start:start + rows].astype(np.float64)
        if not finite:
            chunk = np.nan_to_num(chunk, nan=0.0, posinf=0.0, neginf=0.0)
        out[start:start + rows] = np.clip(np.rint((chunk - offset) * (255.0 / top)), 0, 255)
    return out


def _finite_range(a: np.ndarray, also: float) -> tuple[float, float]:
    """min and max of the finite values and `also`, chunk by chunk."""
    low, high = also, also
    flat = a.reshape(-1)
    for start in range(0, flat.size, CHUNK_PIXELS):
        chunk = flat[start:start + CHUNK_PIXELS]
        chunk = chunk[np.isfinite(chunk)]
        if chunk.size:
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    return low, high


def _fit(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect and at most max_pixels pixels (at least 1 x 1)."""
    s = math.sqrt(max_pixels / (width * height))
    w = max(1, min(width, int(width * s)))
    h = max(1, min(height, int(height * s), max_pixels // w))
    return min(w, max_pixels // h), h
