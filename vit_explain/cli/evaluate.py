"""`vit-explain evaluate`: deletion / insertion AUC and pointing game for every method."""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import click
import numpy as np
import torch
import tqdm
from PIL import Image

from .._version import __version__
from ..io.messages import shown
from ..methods.evaluation import BASELINES
from ..methods.table import METHODS
from .errors import EXIT_INPUT, EXIT_OK, EXIT_OUTPUT, EXIT_SOME_FAILED, CommandError
from .main import harden
from .options import DEFAULTS, Options, method_options, model_options, run_options

BASELINE_MAPS = ("random", "uniform")
RESULT_FILES = ("evaluation.json", "evaluation.csv")
# the mean deletion / insertion curve of every method: the numbers and their plot
CURVE_FILES = ("evaluation_curves.json", "evaluation_curves.png")
# Every step puts two perturbed copies of each image through the model, and the copies of one
# image are made at once: 1000 steps of a 224 x 224 input take 1.2 GB. Steps beyond the number
# of patches only repeat points of the curves.
MAX_STEPS = 1000


class MaskError(Exception):
    """A ground-truth mask that cannot be used: its image fails, the others go on."""


def all_finite(row: dict) -> bool:
    return all(math.isfinite(value) for value in row.values() if isinstance(value, float))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--image_path", "--image-path", "image_path", required=True, type=click.Path(path_type=Path),
              help="An image file, or a folder searched recursively.")
@click.option("--masks", "masks_dir", type=click.Path(path_type=Path), default=DEFAULTS.masks_dir,
              help="Folder of ground-truth object masks (PNG, same stems as the images) for the pointing game.")
@click.option("--methods", default=",".join(DEFAULTS.methods),
              help="Comma-separated methods to score; a random and a uniform map are always added.")
@click.option("--steps", type=click.IntRange(1, MAX_STEPS), default=DEFAULTS.steps,
              help=f"Deletion / insertion steps (at most {MAX_STEPS}).")
@click.option("--baseline", type=click.Choice(BASELINES), default=DEFAULTS.baseline,
              help="What deleted (or not yet inserted) patches become.")
@model_options
@method_options
@run_options("Where evaluation.csv and evaluation.json go.")
@click.option("--seed", type=int, default=DEFAULTS.seed, help="Seed of the random baseline map.")
def evaluate(use_cuda: bool, debug: bool, **kwargs) -> int:
    """Score explanation methods: deletion and insertion AUC (Petsiuk et al. 2018) and, with
    --masks, the pointing game and energy-based pointing score."""
    if use_cuda:
        kwargs["device"] = "cuda"
    methods = [m.strip() for m in kwargs.pop("methods").split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise click.BadParameter(f"unknown method {', '.join(unknown) or '(none)'}; choose from "
                                 f"{', '.join(METHODS)}", param_hint="--methods")
    return Evaluation(Options(methods=tuple(dict.fromkeys(methods)), **kwargs)).run()


harden(evaluate)


class Evaluation:
    def __init__(self, options: Options):
        from ..io.preprocess import Preprocessor
        from .common import build_explainer, input_root, open_inputs_and_model
        self.options = options
        if options.masks_dir is not None and not options.masks_dir.is_dir():
            raise CommandError(f"--masks {shown(options.masks_dir)} is not a folder", EXIT_INPUT)
        self.images, self.misnamed, self.model = open_inputs_and_model(options)
        for name in RESULT_FILES + CURVE_FILES:  # found now, not after the whole evaluation has run
            if (options.output_dir / name).is_dir():
                raise CommandError(f"{shown(options.output_dir / name)} is a folder, where the evaluation writes "
                                   "its results: move it away or choose another --output-dir", EXIT_OUTPUT)
        self.root = input_root(options.image_path)
        self.explainers = {name: build_explainer(METHODS[name], self.model, options) for name in options.methods}
        self.preprocess = Preprocessor(self.model)
        self.generator = torch.Generator().manual_seed(options.seed)
        self.rows: list[dict] = []
        self.curves: dict[str, dict[str, list]] = {}  # method -> deletion / insertion -> per-image curves
        self.failed = 0

    def object_mask(self, path: Path, size: tuple[int, int]) -> torch.Tensor | None:
        """The ground-truth mask in model-input space: cropped and resized as the image was.
        MaskError for a mask that cannot be read or is not the image's size."""
        masks_dir = self.options.masks_dir
        if masks_dir is None:
            return None
        relative = path.parent.relative_to(self.root)
        for candidate in (masks_dir / relative / f"{path.stem}.png", masks_dir / f"{path.stem}.png"):
            if candidate.is_file():
                return self.read_mask(candidate, path, size)
        return None

    def read_mask(self, mask_path: Path, image_path: Path, size: tuple[int, int]) -> torch.Tensor:
        try:
            # PIL's decompression-bomb check stays on: a mask needs no more pixels than its image
            with Image.open(mask_path) as mask:
                mask = mask.convert("L")
        except Exception as error:  # PIL raises many types for a file it cannot decode
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise MaskError(f"{shown(image_path)}: its mask {shown(mask_path)} cannot be read: {reason}") from None
        if mask.size != tuple(size):
            raise MaskError(f"{shown(image_path)}: its mask {shown(mask_path)} is {mask.width} x {mask.height} "
                            f"pixels, the image {size[0]} x {size[1]}")
        box = self.preprocess.visible_box(*size)
        _, height, width = self.preprocess.config["input_size"]
        mask = mask.resize((width, height), Image.NEAREST, box=box)
        return torch.from_numpy(np.asarray(mask) > 127)

    def run(self) -> int:
        from ..io.dataset import image_batches
        from .common import misnamed_message
        o = self.options
        for path in self.misnamed:
            self.fail(misnamed_message(path))
        progress = tqdm.tqdm(total=len(self.images), unit="img", disable=o.quiet, desc="evaluating",
                             file=sys.stderr)
        for batch in image_batches(self.images, self.preprocess, o.batch_size, workers=0):
            good = []
            for item in batch:
                try:
                    if item["error"]:
                        raise MaskError(item["error"])
                    item["object"] = self.object_mask(item["path"], item["image"].shape[1::-1])
                    good.append(item)
                except MaskError as error:
                    self.fail(str(error))
            if good:
                self.score(good)
            progress.update(len(batch))
        progress.close()
        self.write()
        return EXIT_SOME_FAILED if self.failed else EXIT_OK

    def fail(self, message: str) -> None:
        from .common import report
        report(message)
        self.failed += 1

    def score(self, items: list[dict]) -> None:
        """Rows for a batch of images: every method and the baselines. A batch the model or a method
        cannot take fails its own images, as in the explain command; an image whose scores are not
        finite (a model with NaN weights) fails alone, so that the results hold numbers only."""
        from ..methods.evaluation import deletion_insertion
        o = self.options
        x = torch.stack([item["tensor"] for item in items]).to(next(self.model.parameters()).device)
        rows, curves = [], []
        try:
            for name, maps, targets in self.maps(x):
                scores = deletion_insertion(self.model, x, maps, targets, o.steps, o.baseline)
                rows.append([self.row(item, name, maps[i:i + 1], int(targets[i]), scores, i)
                             for i, item in enumerate(items)])
                curves.append((name, scores["deletion_curve"].float().cpu().numpy(),
                               scores["insertion_curve"].float().cpu().numpy()))
        except (ValueError, RuntimeError) as error:  # RuntimeError: out of memory on a device, too
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            for item in items:
                self.fail(f"{shown(item['path'])}: cannot evaluate: {reason}")
            return
        finite = [all(all_finite(method_rows[i]) for method_rows in rows) for i in range(len(items))]
        for i, item in enumerate(items):
            if not finite[i]:
                self.fail(f"{shown(item['path'])}: cannot evaluate: the model's scores are not finite "
                          "(NaN or inf); check its weights")
        self.rows.extend(row for method_rows in rows for i, row in enumerate(method_rows) if finite[i])
        for name, deletion, insertion in curves:
            kept = self.curves.setdefault(name, {"deletion": [], "insertion": []})
            kept["deletion"].extend(deletion[i] for i in range(len(items)) if finite[i])
            kept["insertion"].extend(insertion[i] for i in range(len(items)) if finite[i])

    @staticmethod
    def row(item: dict, name: str, one_map: torch.Tensor, target: int, scores: dict, i: int) -> dict:
        from ..methods.evaluation import energy_pointing, pointing_hits
        row = {"image": str(item["path"]), "method": name, "class": target,
               "deletion_auc": float(scores["deletion"][i]), "insertion_auc": float(scores["insertion"][i])}
        if item["object"] is not None:
            one_map, one_object = one_map.cpu(), item["object"][None]
            row["pointing_hit"] = bool(pointing_hits(one_map, one_object)[0])
            row["energy_pointing"] = float(energy_pointing(one_map, one_object)[0])
        return row

    def maps(self, x: torch.Tensor):
        """(name, (B, gh, gw) maps, (B,) explained classes) for every method and the two baselines."""
        targets, grid = None, None
        for name, explainer in self.explainers.items():
            result = explainer.explain(x, None)
            targets, grid = result.targets, tuple(result.masks.shape[-2:])
            yield name, result.masks, result.targets
        if targets is None:
            return
        yield "random", torch.rand(len(x), *grid, generator=self.generator).to(x.device), targets
        yield "uniform", torch.ones(len(x), *grid, device=x.device), targets

    def summary(self) -> list[dict]:
        names = list(self.explainers) + list(BASELINE_MAPS)
        table = []
        for name in names:
            rows = [r for r in self.rows if r["method"] == name]
            if not rows:
                continue
            entry = {"method": name, "images": len(rows),
                     "deletion_auc": float(np.mean([r["deletion_auc"] for r in rows])),
                     "insertion_auc": float(np.mean([r["insertion_auc"] for r in rows]))}
            pointed = [r for r in rows if "pointing_hit" in r]
            if pointed:
                entry["pointing_game"] = float(np.mean([r["pointing_hit"] for r in pointed]))
                entry["energy_pointing"] = float(np.mean([r["energy_pointing"] for r in pointed]))
            table.append(entry)
        return table

    def write(self) -> None:
        from ..io.outputs import atomic_write
        table = self.summary()
        header = f"{'method':<15}{'images':>7}{'deletion AUC (lower better)':>30}{'insertion AUC (higher better)':>31}"
        pointing = any("pointing_game" in e for e in table)
        if pointing:
            header += f"{'pointing game':>15}{'energy pointing':>17}"
        lines = [header]
        for e in table:
            line = f"{e['method']:<15}{e['images']:>7}{e['deletion_auc']:>30.4f}{e['insertion_auc']:>31.4f}"
            if pointing:
                line += f"{e.get('pointing_game', float('nan')):>15.3f}{e.get('energy_pointing', float('nan')):>17.3f}"
            lines.append(line)
        print("\n".join(lines))
        o = self.options
        document = {"vit_explain": __version__, "torch": torch.__version__, "steps": o.steps,
                    "baseline": o.baseline, "summary": table, "images": self.rows}
        # allow_nan=False: non-finite scores were failed in score(), and JSON has no NaN
        json_text = json.dumps(document, indent=2, allow_nan=False) + "\n"
        fields = ["image", "method", "class", "deletion_auc", "insertion_auc", "pointing_hit", "energy_pointing"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        for name, text in zip(RESULT_FILES, (json_text, buffer.getvalue())):
            try:
                atomic_write(o.output_dir / name, text.encode())
            except OSError as error:  # a full disk, say: the output folder's problem
                raise CommandError(f"cannot write {shown(o.output_dir / name)}: {error.strerror or error}",
                                   EXIT_OUTPUT) from None
        self.write_curves(table)
        scored = len({row["image"] for row in self.rows})
        print(f"{scored} images scored, {self.failed} failed; "
              f"details in {shown(o.output_dir / 'evaluation.csv')}", file=sys.stderr)

    def mean_curves(self, table: list[dict]) -> dict:
        """method -> its mean deletion and insertion curves over the scored images, and its AUCs."""
        curves = {}
        for entry in table:
            kept = self.curves.get(entry["method"])
            if not kept or not kept["deletion"]:
                continue
            curves[entry["method"]] = {
                "images": len(kept["deletion"]),
                "deletion": [round(float(v), 6) for v in np.mean(kept["deletion"], axis=0)],
                "insertion": [round(float(v), 6) for v in np.mean(kept["insertion"], axis=0)],
                "deletion_auc": entry["deletion_auc"], "insertion_auc": entry["insertion_auc"]}
        return curves

    def write_curves(self, table: list[dict]) -> None:
        """evaluation_curves.json (the mean curves, x = fraction of patches from 0 to 1 in --steps
        steps) and evaluation_curves.png (their plot), beside evaluation.csv and .json."""
        from ..io.figures import curves_figure, png_bytes
        from ..io.outputs import atomic_write
        curves = self.mean_curves(table)
        if not curves:
            return
        o = self.options
        document = {"vit_explain": __version__, "model": o.model, "steps": o.steps, "baseline": o.baseline,
                    "x": [round(k / o.steps, 6) for k in range(o.steps + 1)],
                    "probability_of": "the explained class", "methods": curves}
        images = max(c["images"] for c in curves.values())
        note = (f"{images} images, {o.steps} steps, removed patches: {o.baseline}; "
                "mean over images of the explained class's probability; AUC by the trapezoid rule on [0, 1]")
        plot = curves_figure(curves, f"deletion and insertion | model {o.model}", note)
        for name, data in zip(CURVE_FILES, (json.dumps(document, indent=2, allow_nan=False).encode() + b"\n",
                                             png_bytes(plot))):
            try:
                atomic_write(o.output_dir / name, data)
            except OSError as error:
                raise CommandError(f"cannot write {shown(o.output_dir / name)}: {error.strerror or error}",
                                   EXIT_OUTPUT) from None
