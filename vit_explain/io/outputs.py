"""Output files and the output folder: checks, a lock against concurrent runs, folders that
stay inside it, atomic writes, leftovers of killed runs, and the encoders."""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np

from .messages import shown


class OutputError(Exception):
    """The output folder cannot be used; one user-facing line."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(output_dir: Path, input_path: Path) -> None:
    """The output folder can be written and is apart from the input: it lies neither inside the
    input folder nor around the input (outputs would land among the inputs, or on one)."""
    output_dir, input_path = output_dir.resolve(), input_path.resolve()
    if input_path.is_dir() and _inside(output_dir, input_path):
        raise OutputError(f"the output folder {shown(output_dir)} is inside the input folder {shown(input_path)}; "
                          "choose another --output-dir")
    check_inputs_outside(output_dir, [input_path])
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise OutputError(f"cannot write to the output folder {shown(output_dir)}: {error.strerror or error}") from None


def check_inputs_outside(output_dir: Path, inputs) -> None:
    """No input lies inside the output folder (as its outputs or manifest could overwrite it);
    resolved, so a link in an input folder that points into the output folder counts."""
    output_dir = output_dir.resolve()
    for item in inputs:
        if _inside(Path(item).resolve(), output_dir):
            raise OutputError(f"the input {shown(item)} lies inside the output folder {shown(output_dir)}; "
                              "choose another --output-dir")


def make_output_folder(output_dir: Path, folder: Path) -> None:
    """Create folder (inside output_dir) one level at a time, refusing to go through a symbolic
    link or anything that is not a folder: outputs never leave the output folder."""
    relative = folder.relative_to(output_dir)
    current = output_dir
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            raise OSError(f"{shown(current)} is a symbolic link; vit-explain does not write through links")
        if not current.exists():
            current.mkdir(exist_ok=True)
        elif not current.is_dir():
            raise OSError(f"{shown(current)} is in the way: it is a file where a folder of outputs goes")


class OutputLock:
    """An exclusive lock on the output folder for one run (flock on the folder itself, so no
    lock file is left behind): a second run into the same folder is refused instead of
    interleaving its writes and manifest with the first's. The kernel drops the lock when the
    process ends, however it ends."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self._fd = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no guard, as before
            return
        fd = os.open(self.output_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(f"another vit-explain run is writing to {shown(self.output_dir)}; wait for it to "
                              "finish or choose another --output-dir") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


TEMPORARY_PREFIX = ".vxe-"  # short: the temporary name must fit the file-name limit whatever the output's
# leftovers of killed runs: ours, and 0.1's ".<output name>.<random>.part"
_LEFTOVER = re.compile(r"^\.(vxe-|.+\.)[a-z0-9_]{8}\.part$")


def remove_leftovers(output_dir: Path) -> int:
    """Delete the temporary files killed runs left in the output folder (call it holding the lock)."""
    removed = 0
    for folder, dirs, names in os.walk(output_dir):  # does not follow links
        for name in names:
            if _LEFTOVER.match(name):
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed


@contextmanager
def atomic_file(path: Path, mode: str = "wb"):
    """A file to write that appears at path, whole, only when the block ends without an error:
    it is written beside path under a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX, suffix=".part")
    try:
        with os.fdopen(handle, mode) as file:
            yield file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write data so that a reader never sees half a file."""
    with atomic_file(path) as file:
        file.write(data)


# Fast PNG settings: the "up" filter with run-length zlib encodes an overlay 3x faster than
# OpenCV's default (adaptive filters, full deflate) for files 0-70% larger. Encoding was the
# largest cost of folder mode after the model itself. IMWRITE_PNG_FILTER needs OpenCV >= 4.11.
PNG_PARAMETERS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_PARAMETERS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def write_image(path: Path, image_bgr: np.ndarray, parameters=()) -> None:
    """Encode by the path's ending (OpenCV's encoders and parameters) and write atomically."""
    ok, encoded = cv2.imencode(path.suffix, image_bgr, list(parameters))
    if not ok:
        raise OSError(f"cannot encode {path.name} as {path.suffix.lstrip('.').upper()}")
    atomic_write(path, encoded.tobytes())


def write_png(path: Path, image_bgr: np.ndarray) -> None:
    write_image(path, image_bgr, PNG_PARAMETERS)


def write_npy(path: Path, array: np.ndarray) -> None:
    buffer = BytesIO()
    np.save(buffer, array)
    atomic_write(path, buffer.getvalue())
