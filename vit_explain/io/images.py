"""Finding and decoding input images: anything PIL can read becomes an 8-bit RGB PIL image.

Nothing here knows about models. Every failure a user can cause surfaces as `ImageError`, whose
message is one line that names the file, so a batch run can report it per file and go on.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = ["MAX_PIXELS", "ImageError", "find_images", "find_inputs", "image_size", "is_image", "load_image"]

# Larger images are decoded reduced (keeping their aspect): a bounded amount of memory per image,
# far more pixels than any overlay needs.
MAX_PIXELS = 25_000_000

# Above this we refuse outright: even a reduced decode of such a file takes too long to be useful.
ABSURD_PIXELS = 10_000_000_000

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
        raise ImageError(f"no such file or folder: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes)")


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
        raise ImageError(f"no such file or folder: {root}")
    if not root.is_dir():
        _check_file(root)
        if not is_image(root):
            raise ImageError(f"{root} is not an image PIL can read")
        return [root], []

    files = []
    # followlinks=False: a symlinked folder cycle cannot make us walk forever.
    for folder, dirs, names in os.walk(root, onerror=_raise_walk_error):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # prune hidden folders in place
        files.extend(Path(folder) / n for n in names if not n.startswith("."))
    files = [f for f in files if f.is_file()]  # drops broken links, sockets, fifos
    if not files:
        raise ImageError(f"folder {root} is empty")
    recognised = {f: is_image(f) for f in files}
    images = sorted(f for f, ok in recognised.items() if ok)
    if not images:
        raise ImageError(f"no images found in folder {root} ({len(files)} files looked at)")
    extensions = Image.registered_extensions()
    misnamed = sorted(f for f, ok in recognised.items() if not ok and f.suffix.lower() in extensions)
    return images, misnamed


def _raise_walk_error(err: OSError) -> None:
    raise ImageError(f"cannot read folder {err.filename}: {err.strerror or _short(err)}")


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
        raise ImageError(f"{path} is not an image PIL can read") from None
    except Exception as e:  # PIL raises many types on a corrupt header
        raise ImageError(f"{path} is truncated or corrupt: {_short(e)}") from None
    return (height, width) if orientation in _SWAPS_AXES else (width, height)


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image fully into 8-bit RGB, EXIF orientation applied, at most `max_pixels` pixels.

    Larger images are reduced (aspect kept); JPEGs are decoded at 1/2, 1/4 or 1/8 scale directly
    by the decoder, so memory stays bounded by the result rather than by the file. Transparency is
    composited onto white. Raises ImageError (never a PIL exception) naming the file and the reason.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    path = Path(path)
    _check_file(path)
    try:
        with _no_bomb_check(), Image.open(path) as im:
            width, height = im.size
            if width * height > ABSURD_PIXELS:
                raise ImageError(f"{path} is too large to load ({width} x {height} pixels)")
            if width * height > max_pixels:
                scale = next((s for s in (1, 2, 4, 8)
                              if math.ceil(width / s) * math.ceil(height / s) <= max_pixels), 8)
                # JPEG only (a no-op elsewhere): the decoder scales by 1/`scale`, since draft picks
                # the largest scale whose result is at least this big.
                im.draft("RGB", (max(1, width // scale), max(1, height // scale)))
            im.load()  # frame 0 of an animation; decode errors surface here
            _exif_transpose(im)  # while the file is open: TIFF reads its EXIF from it
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(f"{path} cannot be read (permission denied)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image PIL can read") from None
    except MemoryError:
        raise ImageError(f"{path} is too large to decode in the memory available") from None
    except Exception as e:  # PIL plugins raise OSError, SyntaxError, ValueError, EOFError, ...
        raise ImageError(f"{path} is truncated or corrupt: {_short(e)}") from None

    try:
        rgb = _to_rgb(im)
    except (ValueError, OSError) as e:  # e.g. LAB or multi-channel float TIFFs
        raise ImageError(f"{path} has pixels ({im.mode}) that cannot be shown as RGB: {_short(e)}") from None

    if rgb.width * rgb.height > max_pixels:  # not a JPEG, or even 1/8 scale was too big
        size = _fit(rgb.width, rgb.height, max_pixels)
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)  # reduce() first: fast
    return rgb


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


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Scale high-bit-depth gray to 0..255 by its bit depth (or, with no fixed depth, its range)."""
    a = a.astype(np.float64)
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "I" and a.min() >= 0 and a.max() <= 65535:
        top = 255.0 if a.max() <= 255 else 65535.0  # 8-bit or 16-bit data stored as 32-bit ints
    elif mode == "F" and np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1:
        top = 1.0  # float images in [0, 1] are the common convention
    else:  # signed/32-bit/float data has no fixed range: stretch what is there
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = a.min(), a.max()
        a, top = a - low, (high - low) or 1.0
    return np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)


def _fit(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect and at most max_pixels pixels (at least 1 x 1)."""
    s = math.sqrt(max_pixels / (width * height))
    w = max(1, min(width, int(width * s)))
    h = max(1, min(height, int(height * s), max_pixels // w))
    return min(w, max_pixels // h), h
