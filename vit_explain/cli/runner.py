"""One run of `vit-explain`: images in, overlays, masks and a manifest out."""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import tqdm

from .._version import __version__
from ..io.images import ImageError, find_inputs
from ..io.labels import class_names
from ..io.models import ModelLoadError, load_model
from ..io.outputs import Manifest, OutputError, check_output_dir, output_stems, write_npy, write_png
from ..io.overlay import compat_overlay, head_grid, overlay
from ..io.preprocess import Preprocessor
from ..io.writer import BackgroundWriter
from .dataset import image_batches
from .errors import (EXIT_INPUT, EXIT_MODEL, EXIT_OK, EXIT_OUTPUT, EXIT_SOME_FAILED, EXIT_USAGE,
                     CommandError)
from .methods import METHODS


@dataclass
class Options:
    image_path: Path
    method: str
    model: str
    hub: str | None
    checkpoint: str | None
    device: str
    head_fusion: str
    discard_ratio: float
    category_index: int | None
    batch_size: int
    workers: int | None
    output_dir: Path
    topk: int
    compat: str | None
    layer: int
    target_layer: str | None
    colormap: str
    alpha: float
    overwrite: bool
    quiet: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda was asked for, but CUDA is not available here", EXIT_USAGE)
    return torch.device(name)


def build_explainer(options: Options, model):
    try:
        return METHODS[options.method].build(options, model)
    except ValueError as error:
        # a layer the user named that the model lacks is a command-line mistake
        chosen = (options.method == "grad-cam" and options.target_layer) or (
            options.method == "raw-attention" and options.layer != -1)
        raise CommandError(str(error), EXIT_USAGE if chosen else EXIT_MODEL) from None


def top_classes(logits: torch.Tensor, names: list[str], k: int) -> list[dict]:
    probabilities = logits.float().softmax(-1)
    values, indices = probabilities.topk(min(k, probabilities.shape[-1]))
    return [{"index": int(i), "label": names[int(i)], "probability": round(float(p), 6)}
            for p, i in zip(values, indices)]


def report(message: str) -> None:
    """One line on stderr that does not break the progress bar."""
    tqdm.tqdm.write(f"vit-explain: {message}", file=sys.stderr)


def misnamed_message(path: Path) -> str:
    return f"{path} is named like an image but is not one PIL can read"


def open_inputs_and_model(image_path: Path, output_dir: Path, model: str, hub: str | None,
                          checkpoint: str | None, device: str):
    """(images, misnamed files, model) for a command, each failure a CommandError with its exit code.

    Checked in this order so that a typo in a path fails before a slow model load.
    """
    try:
        images, misnamed = find_inputs(image_path)
    except ImageError as error:
        raise CommandError(str(error), EXIT_INPUT) from None
    try:
        check_output_dir(output_dir, image_path)
    except OutputError as error:
        raise CommandError(str(error), EXIT_OUTPUT) from None
    device = resolve_device(device)
    try:
        return images, misnamed, load_model(model, hub, checkpoint, device)
    except ModelLoadError as error:
        raise CommandError(str(error), EXIT_MODEL) from None


class Run:
    def __init__(self, options: Options):
        self.options = options
        self.images, self.misnamed, self.model = open_inputs_and_model(
            options.image_path, options.output_dir, options.model, options.hub, options.checkpoint, options.device)
        self.num_classes = getattr(self.model, "num_classes", None)
        if options.category_index is not None and self.num_classes and not (
                0 <= options.category_index < self.num_classes):
            raise CommandError(f"--category_index {options.category_index} is out of range: "
                               f"{options.model} has {self.num_classes} classes (0..{self.num_classes - 1})",
                               EXIT_USAGE)
        self.explainer = build_explainer(options, self.model)
        self.preprocess = Preprocessor(self.model, compat=bool(options.compat))
        self.names = class_names(self.model, self.num_classes or 0) if self.num_classes else []
        root = options.image_path if options.image_path.is_dir() else options.image_path.parent
        self.stems = output_stems(self.images, root, options.output_dir)
        self.manifest = Manifest(options.output_dir, {
            "vit_explain": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "model": options.model, "hub": options.hub, "checkpoint": options.checkpoint,
        })
        self.explained = self.failed = self.skipped = 0
        self._lock = threading.Lock()  # counters and manifest, shared with the writer threads
        self._writer: BackgroundWriter | None = None

    def outputs_for(self, path: Path, category: int | None) -> dict[str, Path]:
        stem = self.stems[path]
        name = f"{stem.name}_{METHODS[self.options.method].suffix(self.options, category)}"
        outputs = {"overlay": stem.with_name(name + ".png"), "mask": stem.with_name(name + ".npy")}
        if self.options.method == "raw-attention":
            outputs["heads"] = stem.with_name(name + "_heads.png")
        return outputs

    def already_done(self, path: Path) -> bool:
        """Outputs exist from an earlier run (named with the class asked for, if any)."""
        if self.options.overwrite:
            return False
        category = self.options.category_index
        if category is None and METHODS[self.options.method].class_specific:
            entry = self.manifest.get(str(path))  # the predicted class is in the earlier manifest
            category = (entry or {}).get("explained_class", {}).get("index")
            if category is None:
                return False
        return all(p.exists() for p in self.outputs_for(path, category).values())

    def fail(self, path: Path, message: str) -> None:
        with self._lock:
            self.failed += 1
            report(message)
            self.manifest.add({"input": str(path), "status": "failed", "error": message})

    def execute(self) -> int:
        o = self.options
        for path in self.misnamed:
            self.fail(path, misnamed_message(path))
        pending = [p for p in self.images if not self.already_done(p)]
        self.skipped = len(self.images) - len(pending)
        workers = o.workers if o.workers is not None else (0 if len(pending) <= o.batch_size
                                                           else min(4, os.cpu_count() or 1))
        progress = tqdm.tqdm(total=len(pending), unit="img", disable=o.quiet or not pending,
                             desc="explaining", file=sys.stderr)
        # images waiting to be written stay in memory: at most two batches of them
        self._writer = BackgroundWriter(pending=2 * o.batch_size)
        try:
            for batch in image_batches(pending, self.preprocess, o.batch_size, workers):
                good = []
                for item in batch:
                    if item["error"]:
                        self.fail(item["path"], item["error"])
                    else:
                        good.append(item)
                if good:
                    self.explain_batch(good)
                progress.update(len(batch))
        finally:
            try:
                self._writer.close()  # every finished image is written before the manifest
            finally:
                progress.close()
                self.manifest.save()
        summary = f"{self.explained} explained, {self.failed} failed"
        if self.skipped:
            summary += f" ({self.skipped} skipped: outputs exist; --overwrite redoes them)"
        print(summary, file=sys.stderr)
        return EXIT_SOME_FAILED if self.failed else EXIT_OK

    def explain_batch(self, items: list[dict]) -> None:
        o = self.options
        try:
            x = torch.stack([item["tensor"] for item in items])
            result = self.explainer.explain(x, o.category_index)
            heads = self.explainer.explain_heads(x).masks.cpu().numpy() if o.method == "raw-attention" else None
        except (ValueError, RuntimeError) as error:
            for item in items:
                self.fail(item["path"], f"{item['path']}: cannot explain: {error}")
            return
        # one copy from the device per batch, not one per image
        masks, logits, targets = result.masks.cpu().numpy(), result.logits.cpu(), result.targets.tolist()
        for index, item in enumerate(items):
            self._writer.submit(self.write_outputs, item, masks[index], None if heads is None else heads[index],
                                logits[index], targets[index])

    def write_outputs(self, item: dict, mask: np.ndarray, head_masks: np.ndarray | None,
                      logits: torch.Tensor, target: int) -> None:
        o = self.options
        path, image = item["path"], item["image"]
        spec = METHODS[o.method]
        outputs = self.outputs_for(path, target if spec.class_specific else None)
        try:
            if o.compat:
                picture = compat_overlay(np.ascontiguousarray(image[:, :, ::-1]), mask)
            else:
                box = self.preprocess.visible_box(image.shape[1], image.shape[0])
                picture = overlay(image, mask, box, o.colormap, o.alpha)
                if head_masks is not None:
                    write_png(outputs["heads"], head_grid(image, head_masks, box, o.colormap, o.alpha))
            write_png(outputs["overlay"], picture)
            write_npy(outputs["mask"], mask)
        except OSError as error:
            self.fail(path, f"{path}: cannot write outputs: {error}")
            return
        entry = {
            "input": str(path), "status": "explained",
            "outputs": {kind: str(p) for kind, p in outputs.items()},
            "method": o.method,
            "parameters": self.parameters(),
            "image_size": [int(image.shape[1]), int(image.shape[0])],
            "mask_grid": list(mask.shape),
            "topk": top_classes(logits, self.names, o.topk) if self.names else [],
            "explained_class": {"index": target, "label": self.names[target] if self.names else str(target)},
        }
        with self._lock:
            self.explained += 1
            self.manifest.add(entry)

    def parameters(self) -> dict:
        o = self.options
        common = {"category_index": o.category_index}
        return {
            "rollout": {"head_fusion": o.head_fusion, "discard_ratio": o.discard_ratio, "compat": o.compat},
            "grad-rollout": {"head_fusion": o.head_fusion, "discard_ratio": o.discard_ratio, "compat": o.compat,
                             **common},
            "raw-attention": {"layer": o.layer},
            "grad-cam": {"target_layer": o.target_layer or "default (last block's norm1)", **common},
        }.get(o.method, common)
