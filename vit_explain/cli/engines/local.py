"""--engine local (the default): this process explains every image (runner.Run)."""
from __future__ import annotations

from ..options import Options


def run(options: Options) -> int:
    from ..runner import Run
    return Run(options).execute()
