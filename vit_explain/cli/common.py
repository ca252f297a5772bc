"""What both commands share: opening the inputs, the model and the explainers, each failure a
`CommandError` with its documented exit code, and one-line reports."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import tqdm

from ..io.images import ImageError, find_inputs
from ..io.messages import one_line, shown
from ..io.models import ModelLoadError, load_model
from ..io.outputs import OutputError, check_output_dir
from ..methods.table import MethodSpec
from ..recording import LayerError
from .errors import EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE, CommandError
from .options import Options


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda was asked for, but CUDA is not available here", EXIT_USAGE)
    return torch.device(name)


def report(message: str) -> None:
    """One line on stderr that does not break the progress bar (whatever a file name in it holds)."""
    tqdm.tqdm.write(f"vit-explain: {one_line(message)}", file=sys.stderr)


def misnamed_message(path: Path) -> str:
    return f"{shown(path)} is named like an image but is not one PIL can read"


def input_root(image_path: Path) -> Path:
    """The folder the inputs' relative paths start from (mirrored under the output folder)."""
    return image_path if image_path.is_dir() else image_path.parent


def open_inputs_and_model(options: Options):
    """(images, misnamed files, model) for a command, each failure a CommandError with its exit code.

    Checked in this order so that a typo in a path fails before a slow model load.
    """
    try:
        images, misnamed = find_inputs(options.image_path)
    except ImageError as error:
        raise CommandError(str(error), EXIT_INPUT) from None
    try:
        check_output_dir(options.output_dir, options.image_path)
    except OutputError as error:
        raise CommandError(str(error), EXIT_OUTPUT) from None
    device = resolve_device(options.device)
    try:
        return images, misnamed, load_model(options.model, options.hub, options.checkpoint, device)
    except ModelLoadError as error:
        raise CommandError(str(error), EXIT_MODEL) from None


def build_explainer(spec: MethodSpec, model, options: Options):
    """The method's explainer for the model; a layer the user named that the model lacks is a
    command-line mistake (exit 2), anything else the model cannot do a model problem (exit 3)."""
    try:
        return spec.build(model, options)
    except LayerError as error:
        raise CommandError(str(error), EXIT_USAGE) from None
    except ValueError as error:
        raise CommandError(str(error), EXIT_MODEL) from None
