"""Images to tensors in DataLoader workers; a bad file becomes an error record, not a crash.

A decoding worker that dies (the kernel kills it for memory, say) costs only the images it
held: the batches that were in flight are decoded again one image per process, an image whose
process dies again becomes an error record, and the run goes on with a fresh set of workers.
"""
from __future__ import annotations

import ctypes
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .images import ImageError, load_image
from .messages import shown


class ImageFiles(Dataset):
    def __init__(self, paths: list[Path], preprocess):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return decode_item(self.paths[index], self.preprocess)


def decode_item(path, preprocess, data: bytes | None = None) -> dict:
    """One image decoded and preprocessed: {"path", "tensor", "image", "error"}. Every engine
    decodes through here (`data`: the file's bytes, read by a distributed engine)."""
    try:
        image = load_image(path, data=data)
        return {"path": path, "tensor": preprocess(image), "image": np.asarray(image), "error": None}
    except ImageError as error:
        return failed(path, str(error))
    except Exception as error:  # a decoder bug must not stop the folder
        return failed(path, f"{shown(path)}: cannot read: {error}")


def failed(path: Path, message: str) -> dict:
    return {"path": path, "tensor": None, "image": None, "error": message}


def keep_as_list(items: list[dict]) -> list[dict]:
    """The batch as it is: items hold Nones (bad files) and images of different sizes, which the
    default collate cannot stack. A module-level function, as DataLoader workers pickle it."""
    return items


PREFETCH = 2  # batches each DataLoader worker decodes ahead (torch's default prefetch_factor)
PARENT = [os.getpid()]  # the process that starts the workers (set again by each image_batches)


def image_batches(paths: list[Path], preprocess, batch_size: int, workers: int):
    """Decoded batches of items ({"path", "tensor", "image", "error"}), in the order of paths."""
    PARENT[0] = os.getpid()
    start = 0
    while start < len(paths):
        done = 0
        try:
            for batch in _loader(paths[start:], preprocess, batch_size, workers):
                done += len(batch)
                yield batch
            return
        except (RuntimeError, ConnectionError, EOFError) as error:
            # how a dead worker shows: torch's RuntimeError, or the pipe to it breaking first
            if isinstance(error, RuntimeError) and "DataLoader worker" not in str(error):
                raise
        # A worker died with batches in flight; which one killed it is unknown, so each of
        # them is decoded in a process of its own.
        start += done
        suspects = paths[start:start + max(workers, 1) * PREFETCH * batch_size]
        items = [decode_isolated(path, preprocess) for path in suspects]
        for first in range(0, len(items), batch_size):
            yield items[first:first + batch_size]
        start += len(suspects)


def _loader(paths: list[Path], preprocess, batch_size: int, workers: int) -> DataLoader:
    # persistent_workers=False: workers exit with the loop, so an interrupted run leaves none behind
    return DataLoader(ImageFiles(paths, preprocess), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=keep_as_list, prefetch_factor=PREFETCH if workers else None,
                      persistent_workers=False, pin_memory=torch.cuda.is_available(),
                      worker_init_fn=die_with_parent if workers else None)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(worker_id: int) -> None:
    """Have the kernel kill this decoding worker when the run's process dies, however it dies.
    Without it a worker of a killed run (kill -9) can wait forever on a pipe it holds itself."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: torch's own watchdog is all there is
        return
    if os.getppid() != PARENT[0]:  # the run died before the line above: go now
        os._exit(1)


def decode_one(path: Path, preprocess) -> dict:
    return ImageFiles([path], preprocess)[0]


def decode_isolated(path: Path, preprocess) -> dict:
    """One image decoded in a process of its own: if that process dies, only this image fails."""
    with ProcessPoolExecutor(max_workers=1) as pool:
        try:
            return pool.submit(decode_one, path, preprocess).result()
        except BrokenProcessPool:
            return failed(path, f"{shown(path)}: its decoding process was killed (too large to decode in the "
                                "memory available?)")
