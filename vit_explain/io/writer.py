"""Write outputs on background threads while the model works on the next batch.

Encoding an overlay (OpenCV) and writing files release the GIL, so on a GPU, or with cores
to spare, the writes of one batch overlap the next batch's forward pass instead of adding to it.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


def default_threads() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


class BackgroundWriter:
    """submit(fn, *args) runs fn on a writer thread. At most `pending` jobs wait (their images
    stay in memory), and close() waits for every job. An exception raised by a job (a bug:
    jobs report their own I/O errors) comes back from the next submit() or close()."""

    def __init__(self, threads: int | None = None, pending: int = 64):
        self.threads = threads or default_threads()
        self.pending = pending
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="vit-explain-writer")
        self._futures: deque[Future] = deque()

    def submit(self, job: Callable, *args) -> None:
        while len(self._futures) >= self.pending or (self._futures and self._futures[0].done()):
            self._futures.popleft().result()
        self._futures.append(self._pool.submit(job, *args))

    def close(self) -> None:
        """Wait for every job (even when one failed), then raise the first failure."""
        error = None
        while self._futures:
            try:
                self._futures.popleft().result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the rest finished
                error = error or exc
        self._pool.shutdown(wait=True)
        if error is not None:
            raise error
