"""`vit-explain`: explain one image or a folder of images from the shell."""
from __future__ import annotations

import copy
import importlib.util
import math
import sys
import traceback
from pathlib import Path

import click

from .._version import __version__
from ..io.allocator import keep_freed_memory
from ..io.messages import one_line, shown
from ..io.overlay import COLORMAPS
from ..io.sinks import DEFAULT_SINKS, OUTPUT_NAMES
from ..methods.table import DEFAULT_CLASS_SPECIFIC_METHOD, DEFAULT_METHOD, METHODS
from .engines import ENGINES
from .errors import (EXIT_INPUT, EXIT_INTERNAL, EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE, CommandError,
                     cannot_write)
from .options import DEFAULTS, Options, method_options, model_options, run_options
from .selection import added_outputs, check_engine_outputs, parse_methods, parse_outputs

EXIT_CODES_HELP = ("Scoring methods: vit-explain evaluate --help. Exit codes: 0 all explained; 1 some "
                   "images failed (the rest were written); 2 bad command line (or the engine's package missing); "
                   "3 model not loadable; 4 no usable input; 5 output folder not writable; 6 the Ray engine failed; "
                   "70 internal error.")
RAY_OPTIONS = ("ray_address", "actors", "cpus_per_actor", "gpus_per_actor")


class NonEmptyPath(click.Path):
    """A path option that refuses "": Path("") is ".", so --image_path "" explained the current folder."""

    def convert(self, value, param, ctx):
        if isinstance(value, (str, bytes)) and not value:
            self.fail("is empty: give a file or folder name", param, ctx)
        return super().convert(value, param, ctx)


def finite(number: float, value, param, ctx) -> float:
    """number, once click has converted it; a usage error for nan and inf."""
    if not math.isfinite(number):
        raise click.BadParameter(f"{value!r} is not a finite number.", ctx, param)
    return number


class FiniteFloatRange(click.FloatRange):
    """A float option that refuses nan and inf: nan passes every range check (it compares false)."""

    def convert(self, value, param, ctx):
        return finite(super().convert(value, param, ctx), value, param, ctx)


class FiniteFloat(click.types.FloatParamType):
    def convert(self, value, param, ctx):
        return finite(super().convert(value, param, ctx), value, param, ctx)


def harden(command: click.Command) -> click.Command:
    """Every path and float option of the command refuses "" and nan / inf (see the classes
    above): the options are declared in options.py for both commands, so their types are
    tightened here, once, rather than at each declaration. The type is copied first (click.FLOAT
    is one object shared by every float option) and given the stricter subclass."""
    stricter = [(click.Path, NonEmptyPath), (click.FloatRange, FiniteFloatRange),
                (click.types.FloatParamType, FiniteFloat)]
    for param in command.params:
        for base, strict in stricter:
            if isinstance(param.type, base):
                param.type = copy.copy(param.type)
                param.type.__class__ = strict
                break
    return command


def check_engine(kwargs: dict) -> None:
    """The engine's outputs (the Parquet table for ray and torchrun), its own options, and the
    optional packages the run needs (a missing one is exit 2 naming the pip extra)."""
    engine, ctx = ENGINES[kwargs["engine"]], click.get_current_context()
    given = {name for name in RAY_OPTIONS + ("rows_per_file",)
             if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    if engine.table_only:
        if kwargs["outputs"] is None:
            kwargs["outputs"] = ("parquet",)
        elif "parquet" not in kwargs["outputs"]:
            raise click.BadParameter(f"--engine {engine.name} writes the Parquet table: add parquet",
                                     param_hint="--outputs")
    for name in sorted(given & set(RAY_OPTIONS)):
        if engine.name != "ray":
            raise click.BadParameter("applies to --engine ray only", param_hint="--" + name.replace("_", "-"))
    table = "parquet" in (kwargs["outputs"] or ())
    if "rows_per_file" in given and not table:
        raise click.BadParameter("applies to --outputs parquet only", param_hint="--rows-per-file")
    for module in engine.needs + (("pyarrow",) if table else ()):
        if importlib.util.find_spec(module) is None:
            what = f"--engine {engine.name}" if module in engine.needs else "--outputs parquet"
            extra = engine.extra if module in engine.needs else "parquet"
            raise CommandError(f"{what} needs the {module} package: pip install 'vit-explain[{extra}]'", EXIT_USAGE)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
               epilog=EXIT_CODES_HELP)
@click.option("--image_path", "--image-path", "image_path", required=True,
              type=click.Path(path_type=Path),
              help="An image file, a folder searched recursively, a quoted glob ('photos/**/*.jpg'), or a list "
                   "file (.txt/.lst/.list) with one path or URI a line.")
@click.option("--method", default=DEFAULTS.method, metavar="NAME[,NAME...]",
              help=f"Explanation method ({', '.join(METHODS)}); several, comma-separated, explain every image with "
                   f"each and add a comparison sheet per image. Default: {DEFAULT_METHOD}, or "
                   f"{DEFAULT_CLASS_SPECIFIC_METHOD} when --category_index is given.")
@model_options
@method_options
@click.option("--category_index", "--category-index", "category_index", type=click.IntRange(min=0),
              default=DEFAULTS.category_index,
              help="Class to explain (gradient rollout). Default: each image's predicted class.")
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT",
              help="Explain the image's similarity to this text (CLIP-family models); repeat it for one map per "
                   "prompt.")
@click.option("--reference", "references", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Explain the image's similarity to this reference image (CLIP-family models, DINOv2 and other "
                   "headless backbones); repeatable.")
@click.option("--workers", type=click.IntRange(min=0), default=DEFAULTS.workers,
              help="Image-decoding worker processes. Default: up to 4 for folders, none for one batch.")
@run_options("Where overlays, masks and manifest.json go.")
@click.option("--outputs", "outputs", default=None, metavar="NAMES",
              help=f"Comma-separated outputs to write: {', '.join(OUTPUT_NAMES)}. Default: "
                   f"{','.join(DEFAULT_SINKS)} and the method's own (raw-attention: heads; cp-lrp: relevance, "
                   "relevance-overlay; several methods: sheet). manifest.json is always written.")
@click.option("--per-layer", "--per_layer", "per_layer", is_flag=False, flag_value="strip", default=None,
              metavar="[strip,gif,webp]", help="Also draw the per-block maps: a strip of every block (PNG; with "
              "raw-attention also its heads x blocks grid), a looping GIF or WebP over the blocks, or several.")
@click.option("--sheet", is_flag=True, help="Also write sheet_001.png, ...: rows = images, columns = methods.")
@click.option("--topk", type=click.IntRange(min=1), default=DEFAULTS.topk, help="Top classes listed in the manifest.")
@click.option("--compat", type=click.Choice(["vit-explain"]), default=DEFAULTS.compat,
              help="Reproduce the original vit-explain exactly (its preprocessing, math and overlay).")
@click.option("--colormap", default=DEFAULTS.colormap, help="OpenCV colormap name.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=DEFAULTS.alpha, help="Heat-map opacity in the overlay.")
@click.option("--overwrite", is_flag=True, help="Redo images whose outputs exist.")
@click.option("--engine", type=click.Choice(list(ENGINES)), default=DEFAULTS.engine,
              help="Where the images are explained: this process (local), Ray Data (ray, the ray extra), or every "
                   "process of torchrun --nproc-per-node N -m vit_explain (torchrun). ray and torchrun write the "
                   "Parquet table (--outputs parquet).")
@click.option("--rows-per-file", "rows_per_file", type=click.IntRange(min=1), default=DEFAULTS.rows_per_file,
              help="Rows per Parquet part file. Default: 10000; with --engine ray one file per batch.")
@click.option("--ray-address", "ray_address", default=DEFAULTS.ray_address, metavar="ADDRESS",
              help="Join this Ray cluster (auto, ray://HOST:10001, HOST:6379). Default: start a local Ray instance.")
@click.option("--actors", type=click.IntRange(min=1), default=DEFAULTS.actors,
              help="Ray actors, each holding the model. Default: as many as the cluster's GPUs (or CPUs, one left "
                   "for reading) hold.")
@click.option("--cpus-per-actor", "cpus_per_actor", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULTS.cpus_per_actor, help="CPUs each Ray actor reserves (fractions allowed).")
@click.option("--gpus-per-actor", "gpus_per_actor", type=click.FloatRange(min=0),
              default=DEFAULTS.gpus_per_actor, help="GPUs each Ray actor reserves (fractions share a GPU).")
@click.version_option(__version__, prog_name="vit-explain")
def explain(use_cuda: bool, debug: bool, **kwargs) -> int:
    """Show where a Vision Transformer looked: heat-map overlays and masks for images."""
    if kwargs["colormap"].lower() not in COLORMAPS:
        raise click.BadParameter(f"unknown colormap {kwargs['colormap']!r}; choose one of "
                                 f"{', '.join(sorted(COLORMAPS))}", param_hint="--colormap")
    if use_cuda:
        kwargs["device"] = "cuda"
    if kwargs["method"] is None:
        targeted = kwargs["category_index"] is not None or kwargs["prompts"] or kwargs["references"]
        kwargs["method"] = DEFAULT_CLASS_SPECIFIC_METHOD if targeted else DEFAULT_METHOD
    names = parse_methods(kwargs["method"])
    kwargs["method"], kwargs["method_list"] = names[0], names if len(names) > 1 else ()
    specs = [METHODS[name] for name in names]
    for spec in specs:
        if kwargs["compat"] and not spec.compat:
            compatible = ", ".join(name for name, other in METHODS.items() if other.compat)
            raise click.BadParameter(f"applies to {compatible} only, not {spec.name}", param_hint="--compat")
    kwargs["outputs"] = parse_outputs(specs, kwargs["outputs"])
    kwargs["added_outputs"] = added_outputs(specs, kwargs.pop("per_layer"), kwargs.pop("sheet"))
    check_engine_outputs(kwargs["engine"], names, kwargs["outputs"], kwargs["added_outputs"])
    check_engine(kwargs)
    kwargs["command_line"] = tuple((click.get_current_context().obj or {}).get("argv", ()))
    return ENGINES[kwargs["engine"]].load()(Options(**kwargs))


harden(explain)


def exit_code_for(error: Exception) -> tuple[int, str]:
    """(exit code, message) for an error no command turned into a CommandError: the package's own
    user-facing errors keep their documented code wherever they were raised, and an OS error only
    a write gives (a full disk) is the output's; anything else is a bug (70)."""
    if isinstance(error, CommandError):
        return error.code, str(error)
    # looked up, not imported: an error raised while importing one of them must not raise again here
    for module, name, code in (("vit_explain.io.outputs", "OutputError", EXIT_OUTPUT),
                               ("vit_explain.io.images", "ImageError", EXIT_INPUT),
                               ("vit_explain.io.hub", "ModelLoadError", EXIT_MODEL),
                               ("vit_explain.recording.modules", "LayerError", EXIT_USAGE)):
        kind = getattr(sys.modules.get(module), name, None)
        if kind is not None and isinstance(error, kind):
            return code, str(error)
    if cannot_write(error):
        where = f" {shown(error.filename)}" if error.filename else ""
        return EXIT_OUTPUT, f"cannot write{where}: {error.strerror}"
    text = (str(error).strip().splitlines() or [""])[0]
    return EXIT_INTERNAL, f"internal error: {type(error).__name__}: {text} (rerun with --debug)"


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure ends in one line on stderr and a documented exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    command, name = explain, "vit-explain"
    if argv[:1] == ["evaluate"]:
        from .evaluate import evaluate
        command, name, argv = evaluate, "vit-explain evaluate", argv[1:]
    elif argv[:1] == ["report"]:
        from .report import report
        command, name, argv = report, "vit-explain report", argv[1:]
    # this process is a run of the tool: let each batch reuse the pages the last one freed
    keep_freed_memory()
    try:
        code = command.main(args=argv, prog_name=name, standalone_mode=False, obj={"argv": ["vit-explain", *argv]})
    except click.exceptions.UsageError as error:
        hint = f" (see {name} --help)"
        print(f"vit-explain: {one_line(error.format_message())}{hint}", file=sys.stderr)
        code = EXIT_USAGE
    except click.exceptions.Abort:
        print("vit-explain: interrupted", file=sys.stderr)
        code = 130
    except Exception as error:  # one line whatever it is (a bug says so); --debug adds the traceback
        if debug:
            traceback.print_exc()
        code, message = exit_code_for(error)
        print(f"vit-explain: {one_line(message)}", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
