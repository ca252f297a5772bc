"""Finding and loading input images: what a user handing us files would notice."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import image_files as files
from vit_explain.io.images import ImageError, find_images, image_size, is_image, load_image

IMAGES_PY = Path(__file__).parents[1] / "vit_explain" / "io" / "images.py"

# Displayed sizes; every other good kind is written at the default 64 x 48.
SIZES = {"exif_rotated": (40, 80), "one_pixel": (1, 1)}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return files.write_all_good(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return files.write_all_bad(tmp_path_factory.mktemp("bad"))


def pixels(path, **kw) -> np.ndarray:
    return np.asarray(load_image(path, **kw)).astype(int)


def corner(a: np.ndarray, where: str, inset: int = 4) -> np.ndarray:
    """The pixel a few pixels in from a named corner (clear of JPEG ringing at the block edge)."""
    y = inset if where.startswith("top") else a.shape[0] - 1 - inset
    x = inset if where.endswith("left") else a.shape[1] - 1 - inset
    return a[y, x]


def close(a, b, tol=12) -> bool:
    return bool(np.all(np.abs(np.asarray(a, int) - np.asarray(b, int)) <= tol))


# --- every good kind loads as 8-bit RGB ----------------------------------------------------------

@pytest.mark.parametrize("kind", list(files.GOOD_WRITERS))
def test_good_kind_loads_as_8bit_rgb(good, kind):
    im = load_image(good[kind])
    assert isinstance(im, Image.Image) and im.mode == "RGB"
    assert im.size == SIZES.get(kind, (64, 48))
    assert image_size(good[kind]) == im.size  # header-only size agrees with the decode
    a = np.asarray(im)
    assert a.dtype == np.uint8 and a.shape == (im.height, im.width, 3)


def test_rgb_png_is_loaded_bit_for_bit(good):
    assert np.array_equal(np.asarray(load_image(good["rgb"])), files.rgb_pixels())


def test_grayscale_becomes_equal_rgb_channels(good):
    a = pixels(good["grayscale"])
    assert np.array_equal(a[..., 0], files.gradient()) and (a == a[..., :1]).all()


@pytest.mark.parametrize("kind", ["gray16_png", "gray16_pgm", "float"])
def test_high_bit_depth_is_scaled_not_clipped(good, kind):
    row = pixels(good[kind])[0, :, 0]
    assert row[0] == 0 and row[-1] == 255  # the full ramp survives, not a white wall past 255
    assert (np.diff(row) >= 0).all() and np.abs(row - files.gradient()[0]).max() <= 1


def test_bilevel_is_black_and_white(good):
    a = pixels(good["bilevel"])
    assert (a[:, :32] == 0).all() and (a[:, 32:] == 255).all()


def test_transparent_pixels_come_out_white(good):
    rgba = pixels(good["rgba"])
    assert (rgba[:, :21] == 255).all()  # fully transparent (black underneath) -> white
    assert (rgba[:, 21:42] == files.RED).all()  # opaque -> itself
    assert close(rgba[:, 42:], (127, 127, 255), tol=1)  # half-transparent blue over white
    la = pixels(good["la"])
    assert (la[:, :32] == 255).all() and (la[:, 32:] == 128).all()
    palette = pixels(good["palette"])
    assert (palette[:, :32] == 255).all() and (palette[:, 32:] == files.RED).all()


def test_cmyk_jpeg_keeps_its_colour(good):
    assert close(pixels(good["cmyk_jpeg"]), (0, 255, 255))  # cyan, not inverted to red


@pytest.mark.parametrize("kind", ["animated_gif", "multiframe_tiff"])
def test_multi_frame_file_gives_first_frame(good, kind):
    assert close(pixels(good[kind]), files.RED, tol=0)


def test_one_pixel(good):
    assert pixels(good["one_pixel"]).tolist() == [[[10, 200, 30]]]


@pytest.mark.parametrize("orientation, format", [(o, "JPEG") for o in range(1, 9)]
                         + [(6, "PNG"), (8, "PNG"), (6, "TIFF"), (3, "TIFF")])
def test_exif_orientation_is_applied(tmp_path, orientation, format):
    path = files.write_exif_rotated(tmp_path, orientation, format=format)  # stored 80 x 40
    a = pixels(path)
    expected_size = (40, 80) if orientation >= 5 else (80, 40)
    assert (a.shape[1], a.shape[0]) == expected_size == image_size(path)
    red_at, blue_at = files.EXIF_MARKS[orientation]
    assert close(corner(a, red_at), files.RED) and close(corner(a, blue_at), files.BLUE)
    others = {"top-left", "top-right", "bottom-left", "bottom-right"} - {red_at, blue_at}
    assert all(close(corner(a, c), files.GRAY) for c in others)


# --- every bad kind gives one clear ImageError ---------------------------------------------------

@pytest.mark.parametrize("kind, reason", [
    ("truncated_jpeg", "is truncated or corrupt: "),
    ("zero_byte", "is empty (0 bytes)"),
    ("text_as_jpg", "is not an image PIL can read"),
])
def test_bad_kind_raises_image_error_naming_file_and_reason(bad, kind, reason):
    path = bad[kind]
    with pytest.raises(ImageError) as info:  # any other exception type fails the test
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path} {reason}") and "\n" not in message
    assert type(info.value) is ImageError and isinstance(info.value, ValueError)


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(ImageError, match="no such file or folder: .*nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a folder, not an image"):
        load_image(tmp_path)


def test_image_size_of_bad_files_raises_image_error(bad):
    for path in bad.values():
        if path.name != "truncated.jpg":  # its header is fine, so its size is known
            with pytest.raises(ImageError, match=re.escape(str(path))):
                image_size(path)


def test_absurd_size_is_refused_without_decoding(tmp_path):
    path = files.write_absurd_png(tmp_path)  # claims 200000 x 200000
    assert is_image(path)
    with pytest.raises(ImageError, match=r"absurd.png is too large to load \(200000 x 200000 pixels\)"):
        load_image(path)


def test_pil_bomb_limit_is_restored(good, bad, tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    load_image(good["rgb"])
    with pytest.raises(ImageError):
        load_image(bad["truncated_jpeg"])
    with pytest.raises(ImageError):
        load_image(files.write_absurd_png(tmp_path))
    find_images(good["rgb"].parent)
    assert Image.MAX_IMAGE_PIXELS == before


# --- large images are reduced --------------------------------------------------------------------

@pytest.mark.parametrize("writer, max_pixels", [(files.write_rgb, 6000), (files.write_cmyk_jpeg, 1000)])
def test_large_image_is_reduced_keeping_aspect(tmp_path, writer, max_pixels):
    path = writer(tmp_path / ("big.png" if writer is files.write_rgb else "big.jpg"), size=(300, 200))
    im = load_image(path, max_pixels=max_pixels)
    assert im.mode == "RGB" and im.width * im.height <= max_pixels
    assert im.width * im.height > max_pixels / 2  # reduced, not crushed
    assert abs(im.width / im.height - 1.5) < 0.05


def test_huge_jpeg_loads_reduced_with_bounded_memory(tmp_path):
    """A 10000 x 10000 JPEG (300 MB as RGB) loads at <= max_pixels, decoded at reduced scale.

    Measured in a fresh process: ru_maxrss is a high-water mark, meaningless in a long pytest run.
    The module is loaded from its file so the child does not pay for importing torch.
    """
    path = files.write_huge_jpeg(tmp_path)
    child = f"""
import importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("images", {str(IMAGES_PY)!r})
images = importlib.util.module_from_spec(spec); spec.loader.exec_module(images)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
before = peak()
out = {{}}
for max_pixels in (40_000_000, 1_000_000):
    im = images.load_image({str(path)!r}, max_pixels=max_pixels)
    out[max_pixels] = [im.mode, im.size, im.getpixel((10, 10)), im.getpixel((im.width - 10, im.height - 10))]
    del im
print(json.dumps({{"grown_mib": peak() - before, "loads": out}}))
"""
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    for max_pixels, (mode, (w, h), top_left, bottom_right) in report["loads"].items():
        assert mode == "RGB" and w == h and w * h <= int(max_pixels)
        assert close(top_left, files.RED) and close(bottom_right, files.GRAY)
    # The 40 Mpx load is decoded at half scale (75 MB); a full decode alone would take 300 MB.
    assert report["grown_mib"] < 250, report


# --- finding images ------------------------------------------------------------------------------

def test_find_images_recurses_sorts_and_sniffs_content(tmp_path):
    files.write_rgb(tmp_path / "b.png")
    (tmp_path / "a" / "z").mkdir(parents=True)
    files.write_grayscale(tmp_path / "a" / "c.png")
    files.write_exif_rotated_jpeg(tmp_path / "a" / "z" / "d.jpg")
    files.write_rgb(tmp_path / "x.dat")  # a PNG by content: counts
    files.write_text_as_jpg(tmp_path / "notes.jpg")  # text by content: skipped
    (tmp_path / "readme.txt").write_text("hello")
    files.write_zero_byte(tmp_path / "empty.png")
    broken = files.write_truncated_jpeg(tmp_path / "broken.jpg")  # found; load_image reports it
    files.write_rgb(tmp_path / ".hidden.png")
    (tmp_path / ".cache").mkdir()
    files.write_rgb(tmp_path / ".cache" / "e.png")

    found = find_images(tmp_path)
    assert found == [tmp_path / "a" / "c.png", tmp_path / "a" / "z" / "d.jpg", tmp_path / "b.png",
                     broken, tmp_path / "x.dat"]
    assert all(isinstance(p, Path) for p in found)
    assert find_images(str(tmp_path)) == found


def test_find_images_on_a_file(tmp_path):
    png = files.write_rgb(tmp_path / "x.dat")
    assert find_images(png) == [png]
    text = files.write_text_as_jpg(tmp_path)
    with pytest.raises(ImageError, match=re.escape(f"{text} is not an image PIL can read")):
        find_images(text)
    empty = files.write_zero_byte(tmp_path)
    with pytest.raises(ImageError, match=re.escape(f"{empty} is empty (0 bytes)")):
        find_images(empty)


def test_find_images_folder_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ImageError, match=re.escape(f"no such file or folder: {missing}") + "$"):
        find_images(missing)

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / ".DS_Store").write_bytes(b"junk")  # hidden files do not count
    with pytest.raises(ImageError, match=re.escape(f"folder {empty} is empty") + "$"):
        find_images(empty)

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("a")
    files.write_text_as_jpg(docs / "b.jpg")
    with pytest.raises(ImageError, match=re.escape(f"no images found in folder {docs} (2 files looked at)") + "$"):
        find_images(docs)


def test_is_image_reads_content(good, bad, tmp_path):
    assert all(is_image(p) for p in good.values())
    assert is_image(bad["truncated_jpeg"])  # header is fine
    assert not is_image(bad["text_as_jpg"]) and not is_image(bad["zero_byte"])
    assert not is_image(tmp_path) and not is_image(tmp_path / "missing.png")
