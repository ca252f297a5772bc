"""`vit-explain`: explain one image or a folder of images from the shell."""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from .._version import __version__
from ..io.overlay import COLORMAPS
from .errors import EXIT_INTERNAL, EXIT_USAGE, CommandError
from .main_options import METHOD_NAMES, model_options

EXIT_CODES_HELP = ("Scoring methods: vit-explain evaluate --help. Exit codes: 0 all explained; 1 some "
                   "images failed (the rest were written); 2 bad command line; 3 model not loadable; 4 no usable input; 5 output folder "
                   "not writable; 70 internal error.")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
               epilog=EXIT_CODES_HELP)
@click.option("--image_path", "--image-path", "image_path", required=True,
              type=click.Path(path_type=Path), help="An image file, or a folder searched recursively.")
@click.option("--method", type=click.Choice(METHOD_NAMES), default=None,
              help="Explanation method. Default: rollout, or grad-rollout when --category_index is given.")
@click.option("--layer", type=int, default=-1,
              help="Block whose attention raw-attention shows (0-based; -1 = the last).")
@click.option("--target-layer", "--target_layer", "target_layer", default=None, metavar="MODULE",
              help="Module whose activations grad-cam uses (dotted name). Default: the last block's norm1.")
@model_options
@click.option("--head_fusion", "--head-fusion", "head_fusion", type=click.Choice(["mean", "max", "min"]),
              default="max", help="How the attention heads are fused.")
@click.option("--discard_ratio", "--discard-ratio", "discard_ratio",
              type=click.FloatRange(0, 1, max_open=True), default=0.9,
              help="Fraction of the weakest attention entries dropped in every block.")
@click.option("--category_index", "--category-index", "category_index", type=click.IntRange(min=0),
              default=None, help="Class to explain (gradient rollout). Default: each image's predicted class.")
@click.option("--batch-size", "--batch_size", "batch_size", type=click.IntRange(min=1), default=8)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Image-decoding worker processes. Default: up to 4 for folders, none for one batch.")
@click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(path_type=Path),
              default=Path("vit-explain-out"), help="Where overlays, masks and manifest.json go.")
@click.option("--topk", type=click.IntRange(min=1), default=5, help="Top classes listed in the manifest.")
@click.option("--compat", type=click.Choice(["vit-explain"]), default=None,
              help="Reproduce the original vit-explain exactly (its preprocessing, math and overlay).")
@click.option("--colormap", default="jet", help="OpenCV colormap name.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, help="Heat-map opacity in the overlay.")
@click.option("--overwrite", is_flag=True, help="Redo images whose outputs exist.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.version_option(__version__, prog_name="vit-explain")
def explain(use_cuda: bool, debug: bool, **kwargs) -> int:
    """Show where a Vision Transformer looked: heat-map overlays and masks for images."""
    from .runner import Options, Run  # heavy imports only once the command line is valid
    if kwargs["colormap"].lower() not in COLORMAPS:
        raise click.BadParameter(f"unknown colormap {kwargs['colormap']!r}; choose one of "
                                 f"{', '.join(sorted(COLORMAPS))}", param_hint="--colormap")
    if use_cuda:
        kwargs["device"] = "cuda"
    if kwargs["method"] is None:
        kwargs["method"] = "grad-rollout" if kwargs["category_index"] is not None else "rollout"
    if kwargs["compat"] and kwargs["method"] not in ("rollout", "grad-rollout"):
        raise click.BadParameter(f"applies to rollout and grad-rollout only, not {kwargs['method']}",
                                 param_hint="--compat")
    return Run(Options(**kwargs)).execute()


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure ends in one line on stderr and a documented exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    command, name = explain, "vit-explain"
    if argv[:1] == ["evaluate"]:
        from .evaluate import evaluate
        command, name, argv = evaluate, "vit-explain evaluate", argv[1:]
    try:
        code = command.main(args=argv, prog_name=name, standalone_mode=False)
    except click.exceptions.UsageError as error:
        hint = f" (see {name} --help)"
        print(f"vit-explain: {error.format_message()}{hint}", file=sys.stderr)
        code = EXIT_USAGE
    except click.exceptions.Abort:
        print("vit-explain: interrupted", file=sys.stderr)
        code = 130
    except CommandError as error:
        if debug:
            traceback.print_exc()
        print(f"vit-explain: {error}", file=sys.stderr)
        code = error.code
    except Exception as error:  # a bug: still one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"vit-explain: internal error: {type(error).__name__}: {error} (rerun with --debug)",
              file=sys.stderr)
        code = EXIT_INTERNAL
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
