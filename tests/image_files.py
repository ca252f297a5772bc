"""Writers of small test image files, one per kind of input a user may hand us.

Each writer takes a file path, or an existing folder (then a default file name is used), writes
the file and returns its Path. The pixel content is simple and known, so tests can check what a
loader made of it. Shared by any test module that needs real image files.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE, GRAY = (255, 0, 0), (0, 0, 255), (128, 128, 128)

# Where the stored image's top-left (red) and top-right (blue) marks show up once an EXIF
# orientation is applied, straight from the EXIF spec's "row 0 is at ..., column 0 is at ...".
EXIF_MARKS = {
    1: ("top-left", "top-right"),
    2: ("top-right", "top-left"),
    3: ("bottom-right", "bottom-left"),
    4: ("bottom-left", "bottom-right"),
    5: ("top-left", "bottom-left"),
    6: ("top-right", "bottom-right"),
    7: ("bottom-right", "top-right"),
    8: ("bottom-left", "top-left"),
}


def _target(path, default_name: str) -> Path:
    path = Path(path)
    return path / default_name if path.is_dir() else path


def rgb_pixels(size=(64, 48), seed=0) -> np.ndarray:
    """The exact (h, w, 3) uint8 pixels write_rgb stores."""
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def gradient(size=(64, 48), top=255, dtype=np.uint8) -> np.ndarray:
    """(h, w) left-to-right ramp from 0 to `top`, the same on every row."""
    ramp = np.rint(np.linspace(0, top, size[0])).astype(dtype)
    return np.tile(ramp, (size[1], 1))


# --- good files ----------------------------------------------------------------------------------

def write_rgb(path, size=(64, 48), seed=0) -> Path:
    """Seeded noise, lossless PNG: loads back bit for bit."""
    path = _target(path, "rgb.png")
    Image.fromarray(rgb_pixels(size, seed), "RGB").save(path, format="PNG")
    return path


def write_grayscale(path, size=(64, 48)) -> Path:
    """8-bit 'L' PNG, a 0..255 ramp."""
    path = _target(path, "gray.png")
    Image.fromarray(gradient(size), "L").save(path, format="PNG")
    return path


def write_16bit_png(path, size=(64, 48)) -> Path:
    """16-bit grayscale PNG, a 0..65535 ramp (opens as 'I;16')."""
    path = _target(path, "gray16.png")
    Image.fromarray(gradient(size, 65535, np.uint16)).save(path, format="PNG")
    return path


def write_16bit_ppm(path, size=(64, 48)) -> Path:
    """16-bit PGM, a 0..65535 ramp (opens as mode 'I')."""
    path = _target(path, "gray16.pgm")
    Image.fromarray(gradient(size, 65535, np.uint16)).save(path, format="PPM")
    return path


def write_float_tiff(path, size=(64, 48)) -> Path:
    """32-bit float 'F' TIFF, a 0.0..1.0 ramp."""
    path = _target(path, "float.tif")
    ramp = np.tile(np.linspace(0, 1, size[0], dtype=np.float32), (size[1], 1))
    Image.fromarray(ramp, "F").save(path, format="TIFF")
    return path


def write_bilevel(path, size=(64, 48)) -> Path:
    """1-bit PNG: left half black, right half white."""
    path = _target(path, "bilevel.png")
    a = np.zeros((size[1], size[0]), bool)
    a[:, size[0] // 2:] = True
    Image.fromarray(a).convert("1").save(path, format="PNG")
    return path


def write_rgba(path, size=(64, 48)) -> Path:
    """RGBA PNG: left third fully transparent (black underneath), middle opaque red,
    right third blue at alpha 128."""
    path = _target(path, "rgba.png")
    a = np.zeros((size[1], size[0], 4), np.uint8)
    third = size[0] // 3
    a[:, third:2 * third] = (*RED, 255)
    a[:, 2 * third:] = (*BLUE, 128)
    Image.fromarray(a, "RGBA").save(path, format="PNG")
    return path


def write_la(path, size=(64, 48)) -> Path:
    """Gray + alpha PNG: left half transparent black, right half opaque mid-gray."""
    path = _target(path, "la.png")
    a = np.zeros((size[1], size[0], 2), np.uint8)
    a[:, size[0] // 2:] = (128, 255)
    Image.fromarray(a, "LA").save(path, format="PNG")
    return path


def write_palette(path, size=(64, 48)) -> Path:
    """'P' PNG whose index 0 (black) is transparent: left half transparent, right half red."""
    path = _target(path, "palette.png")
    idx = np.zeros((size[1], size[0]), np.uint8)
    idx[:, size[0] // 2:] = 1
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0, *RED] + [0] * (3 * 254))
    im.save(path, format="PNG", transparency=0)
    return path


def write_cmyk_jpeg(path, size=(64, 48)) -> Path:
    """CMYK JPEG (PIL writes Adobe-style inverted CMYK), flat pure cyan."""
    path = _target(path, "cmyk.jpg")
    Image.new("CMYK", size, (255, 0, 0, 0)).save(path, format="JPEG", quality=95)
    return path


def write_exif_rotated_jpeg(path, orientation=6, size=(80, 40)) -> Path:
    """A wide JPEG on gray, red block at the stored top-left and blue at the stored top-right,
    tagged with an EXIF orientation. See EXIF_MARKS for where the blocks should show up."""
    return write_exif_rotated(_target(path, f"exif{orientation}.jpg"), orientation, size, "JPEG")


def write_exif_rotated(path, orientation=6, size=(80, 40), format="PNG") -> Path:
    """write_exif_rotated_jpeg in another format (PNG and TIFF carry EXIF orientation too)."""
    path = _target(path, f"exif{orientation}.{format.lower()}")
    im = Image.new("RGB", size, GRAY)
    block = min(size) // 3
    im.paste(RED, (0, 0, block, block))
    im.paste(BLUE, (size[0] - block, 0, size[0], block))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, format=format, exif=exif, **({"quality": 95} if format == "JPEG" else {}))
    return path


def write_one_pixel(path, color=(10, 200, 30)) -> Path:
    path = _target(path, "one_pixel.png")
    Image.new("RGB", (1, 1), color).save(path, format="PNG")
    return path


def write_animated_gif(path, size=(64, 48)) -> Path:
    """Two frames: red, then blue. The first frame is the one to load."""
    path = _target(path, "animated.gif")
    frames = [Image.new("RGB", size, RED), Image.new("RGB", size, BLUE)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def write_multiframe_tiff(path, size=(64, 48)) -> Path:
    """Two pages: red, then blue."""
    path = _target(path, "pages.tif")
    frames = [Image.new("RGB", size, RED), Image.new("RGB", size, BLUE)]
    frames[0].save(path, format="TIFF", save_all=True, append_images=frames[1:])
    return path


def write_huge_jpeg(path, side=10000) -> Path:
    """A side x side JPEG (100 Mpx by default): flat gray with a red top-left quarter.
    Flat content encodes fast (well under a second) and small (a few MB)."""
    path = _target(path, "huge.jpg")
    im = Image.new("RGB", (side, side), GRAY)
    im.paste(RED, (0, 0, side // 2, side // 2))
    im.save(path, format="JPEG", quality=50)
    return path


def write_absurd_png(path, side=200_000) -> Path:
    """A PNG header claiming side x side pixels (4e10 by default); the data is a stub.
    Only the header is valid: enough for a loader to see the size and refuse."""
    return write_png_header(_target(path, "absurd.png"), side, side)


def write_png_header(path, width, height, bit_depth=8, color_type=2) -> Path:
    """A tiny PNG whose header claims width x height pixels (color_type 0: gray, 2: RGB) over a
    stub of data: a decompression bomb in a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


# --- bad files -----------------------------------------------------------------------------------

def write_truncated_jpeg(path, size=(64, 48)) -> Path:
    """A noisy JPEG cut in half: the header is intact (it identifies), the data is not."""
    path = _target(path, "truncated.jpg")
    full = path.with_name(path.name + ".full")
    Image.fromarray(rgb_pixels(size), "RGB").save(full, format="JPEG", quality=95)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_zero_byte(path) -> Path:
    path = _target(path, "empty.jpg")
    path.write_bytes(b"")
    return path


def write_text_as_jpg(path) -> Path:
    path = _target(path, "notes.jpg")
    path.write_text("These are my holiday notes, not a picture.\n")
    return path


# --- everything at once --------------------------------------------------------------------------

GOOD_WRITERS = {
    "rgb": write_rgb,
    "grayscale": write_grayscale,
    "gray16_png": write_16bit_png,
    "gray16_pgm": write_16bit_ppm,
    "float": write_float_tiff,
    "bilevel": write_bilevel,
    "rgba": write_rgba,
    "la": write_la,
    "palette": write_palette,
    "cmyk_jpeg": write_cmyk_jpeg,
    "exif_rotated": write_exif_rotated_jpeg,
    "one_pixel": write_one_pixel,
    "animated_gif": write_animated_gif,
    "multiframe_tiff": write_multiframe_tiff,
}

BAD_WRITERS = {
    "truncated_jpeg": write_truncated_jpeg,
    "zero_byte": write_zero_byte,
    "text_as_jpg": write_text_as_jpg,
}


def write_all_good(folder) -> dict[str, Path]:
    """Every kind that must load, each under its default name in `folder`."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return {name: write(folder) for name, write in GOOD_WRITERS.items()}


def write_all_bad(folder) -> dict[str, Path]:
    """Every kind that must fail with ImageError, each under its default name in `folder`."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return {name: write(folder) for name, write in BAD_WRITERS.items()}
