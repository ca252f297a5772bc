"""The options of a run, and the click options that set them, declared once for both commands.

`Options` is the one shape options take: the `vit-explain` and `vit-explain evaluate` commands
fill it from the command line, the method table reads each method's keywords from it by name
(`MethodSpec.build(model, options)`), and the benchmarks build one to explain as the command does.
The click options below take their defaults from it. No torch import here: `--help` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from ..methods.table import METHODS


@dataclass
class Options:
    # what to explain, and with which method
    image_path: Path | None = None
    method: str | None = None              # None: rollout, or grad-rollout when a class is named
    category_index: int | None = None      # None: each image's predicted class
    prompts: tuple[str, ...] = ()          # explain the similarity to each text prompt (CLIP-family), one map each
    references: tuple[Path, ...] = ()      # ... or to each reference image (models with an embedding)
    # the model
    model: str = "deit_tiny_patch16_224"
    hub: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    # the methods' keywords (each method takes those its table line names)
    head_fusion: str = "max"
    discard_ratio: float = 0.9
    compat: str | None = None
    layer: int = -1
    target_layer: str | None = None
    start_layer: int = 0
    # batches and outputs
    batch_size: int = 8
    workers: int | None = None
    output_dir: Path = Path("vit-explain-out")
    outputs: tuple[str, ...] | None = None  # output sinks; None: overlay, mask and the method's extras
    method_list: tuple[str, ...] = ()      # --method a,b,...: every method of the run (method: the first)
    added_outputs: tuple[str, ...] = ()    # added to those by --per-layer and --sheet (see selection.py)
    topk: int = 5
    colormap: str = "jet"
    alpha: float = 0.5
    overwrite: bool = False
    quiet: bool = False
    # engines (vit_explain/cli/engines/): where the images are explained
    engine: str = "local"                  # local, ray or torchrun
    rows_per_file: int | None = None      # Parquet rows per part file; None: 10000 (Ray: one file per batch)
    ray_address: str | None = None         # an existing Ray cluster; None: start a local instance
    actors: int | None = None              # Ray actors, each holding the model; None: as many as fit
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    # set by the run, not the command line
    command_line: tuple[str, ...] = ()
    run_id: str = ""
    rank: int = 0
    # vit-explain evaluate
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(METHODS))
    masks_dir: Path | None = None
    steps: int = 20
    baseline: str = "blur"
    seed: int = 0


DEFAULTS = Options()


def _apply(command, options):
    for option in reversed(options):
        command = option(command)
    return command


def model_options(command):
    """--model, --hub, --checkpoint, --device, --use_cuda."""
    return _apply(command, [
        click.option("--model", default=DEFAULTS.model,
                     help="timm model name (pretrained weights), local-dir:FOLDER for a model saved by timm or by "
                          "transformers' save_pretrained, hf:NAME_OR_FOLDER for a Hugging Face transformers ViT "
                          "classifier, CLIPModel, SiglipModel or Dinov2Model (the hf extra), or "
                          "open_clip:ARCH/PRETRAINED or open_clip:FOLDER (the clip extra)."),
        click.option("--hub", default=DEFAULTS.hub, metavar="REPO",
                     help="Load --model as an entry point of this torch hub repo "
                          "(e.g. facebookresearch/deit:main) or local hub folder."),
        click.option("--checkpoint", default=DEFAULTS.checkpoint, type=click.Path(dir_okay=False),
                     help="Weights (.pth / .safetensors) for the architecture named by --model."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=DEFAULTS.device),
        click.option("--use_cuda", "--use-cuda", "use_cuda", is_flag=True, help="Same as --device cuda."),
    ])


def method_options(command):
    """The methods' keywords: --head_fusion, --discard_ratio, --layer, --target-layer, --start-layer."""
    return _apply(command, [
        click.option("--head_fusion", "--head-fusion", "head_fusion", type=click.Choice(["mean", "max", "min"]),
                     default=DEFAULTS.head_fusion, help="How the attention heads are fused (rollout, grad-rollout)."),
        click.option("--discard_ratio", "--discard-ratio", "discard_ratio",
                     type=click.FloatRange(0, 1, max_open=True), default=DEFAULTS.discard_ratio,
                     help="Fraction of the weakest attention entries dropped in every block (rollout, grad-rollout)."),
        click.option("--layer", type=int, default=DEFAULTS.layer,
                     help="Block whose attention raw-attention shows (0-based; -1 = the last)."),
        click.option("--target-layer", "--target_layer", "target_layer", default=DEFAULTS.target_layer,
                     metavar="MODULE",
                     help="Module whose activations grad-cam uses (dotted name). Default: the last block's norm1."),
        click.option("--start-layer", "--start_layer", "start_layer", type=click.IntRange(min=0),
                     default=DEFAULTS.start_layer,
                     help="First block chefer multiplies in (0-based; the authors' evaluation uses 1)."),
    ])


def run_options(output_help: str):
    """--batch-size, --output-dir, --quiet, --debug; output_help says what the command writes."""
    def decorate(command):
        return _apply(command, [
            click.option("--batch-size", "--batch_size", "batch_size", type=click.IntRange(min=1),
                         default=DEFAULTS.batch_size, help="Images per forward pass."),
            click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(path_type=Path),
                         default=DEFAULTS.output_dir, help=output_help),
            click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
            click.option("--debug", is_flag=True, help="Show a traceback on errors."),
        ])
    return decorate
