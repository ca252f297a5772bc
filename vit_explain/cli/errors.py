"""Exit codes of the vit-explain command, and the error that carries one."""

EXIT_OK = 0            # every image explained (or already explained)
EXIT_SOME_FAILED = 1   # some images could not be explained; the others were written
EXIT_USAGE = 2         # bad command line: unknown flag, value out of range, class out of range
EXIT_MODEL = 3         # the model could not be loaded or has no attention to explain
EXIT_INPUT = 4         # no usable input: missing path, empty folder, no images
EXIT_OUTPUT = 5        # the output folder cannot be written
EXIT_INTERNAL = 70     # a bug: rerun with --debug and report it


class CommandError(Exception):
    """A one-line message for stderr and the exit code to leave with."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
