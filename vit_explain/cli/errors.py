"""Exit codes of the vit-explain command, and the error that carries one."""
from __future__ import annotations

import errno

EXIT_OK = 0            # every image explained (or already explained)
EXIT_SOME_FAILED = 1   # some images could not be explained; the others were written
EXIT_USAGE = 2         # bad command line: unknown flag, value out of range, class out of range
EXIT_MODEL = 3         # the model could not be loaded or has no attention to explain
EXIT_INPUT = 4         # no usable input: missing path, empty folder, no images
EXIT_OUTPUT = 5        # the output folder cannot be written
EXIT_ENGINE = 6        # the distributed engine failed (Ray unreachable, a Ray job error); rows written are kept
EXIT_INTERNAL = 70     # a bug: rerun with --debug and report it

# OS errors that only a write gives, and that no retry of the next image can cure: the run's
# outputs cannot be written (exit 5), whichever file was being written when they came.
CANNOT_WRITE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class CommandError(Exception):
    """A one-line message for stderr and the exit code to leave with."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def cannot_write(error: BaseException) -> bool:
    """A full disk, an exhausted quota, a file too large or a read-only file system."""
    return isinstance(error, OSError) and error.errno in CANNOT_WRITE
