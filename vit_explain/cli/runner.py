"""One run of `vit-explain`: images in, one explanation each, written by the output sinks."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import timm
import torch
import tqdm

from .._version import __version__
from ..io.dataset import image_batches
from ..io.labels import class_names
from ..io.outputs import Manifest, output_stems
from ..io.preprocess import Preprocessor
from ..io.sinks import DEFAULT_SINKS, SINKS, ExplainedImage, close_all
from ..io.writer import BackgroundWriter
from ..methods.table import METHODS
from .common import build_explainer, input_root, misnamed_message, open_inputs_and_model, report
from .errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, CommandError
from .options import Options


def top_classes(logits: torch.Tensor, names: list[str], k: int) -> list[dict]:
    probabilities = logits.float().softmax(-1)
    values, indices = probabilities.topk(min(k, probabilities.shape[-1]))
    return [{"index": int(i), "label": names[int(i)], "probability": round(float(p), 6)}
            for p, i in zip(values, indices)]


def selected_sinks(options: Options) -> tuple[str, ...]:
    """The output sinks of a run: --outputs, or the overlay, the mask and the method's extra outputs."""
    return options.outputs or DEFAULT_SINKS + METHODS[options.method].extra_outputs


class Run:
    def __init__(self, options: Options):
        self.options = options
        self.spec = METHODS[options.method]
        self.images, self.misnamed, self.model = open_inputs_and_model(options)
        self.num_classes = getattr(self.model, "num_classes", None)
        if options.category_index is not None and self.num_classes and not (
                0 <= options.category_index < self.num_classes):
            raise CommandError(f"--category_index {options.category_index} is out of range: "
                               f"{options.model} has {self.num_classes} classes (0..{self.num_classes - 1})",
                               EXIT_USAGE)
        self.explainer = build_explainer(self.spec, self.model, options)
        self.parameters = self.method_parameters()
        self.preprocess = Preprocessor(self.model, compat=bool(options.compat))
        self.names = class_names(self.model, self.num_classes or 0) if self.num_classes else []
        self.stems = output_stems(self.images, input_root(options.image_path), options.output_dir)
        self.manifest = Manifest(options.output_dir, {
            "vit_explain": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "model": options.model, "hub": options.hub, "checkpoint": options.checkpoint,
        })
        # the manifest goes last: it lists what the others wrote
        self.sinks = [SINKS[name](options) for name in selected_sinks(options)] + [self.manifest]
        self.explained = self.failed = self.skipped = 0
        self._lock = threading.Lock()  # the counters, shared with the writer threads
        self._writer: BackgroundWriter | None = None

    def method_parameters(self) -> dict:
        """The method's keywords as the explainer took them (Grad-CAM's resolved default layer,
        say), and the class asked for when the map depends on it: for the manifest."""
        o = self.options
        parameters = {key: getattr(self.explainer, key, getattr(o, key)) for key in self.spec.options}
        if self.spec.class_specific:
            parameters["category_index"] = o.category_index
        return parameters

    def base_for(self, path: Path, category: int | None) -> Path:
        """The image's output path without an ending: its stem and the method's suffix."""
        stem = self.stems[path]
        return stem.with_name(f"{stem.name}_{self.spec.suffix(self.options, category)}")

    def already_done(self, path: Path) -> bool:
        """Outputs exist from an earlier run (named with the class asked for, if any)."""
        if self.options.overwrite:
            return False
        category = self.options.category_index
        if category is None and self.spec.class_specific:
            entry = self.manifest.get(str(path))  # the predicted class is in the earlier manifest
            category = (entry or {}).get("explained_class", {}).get("index")
            if category is None:
                return False
        base = self.base_for(path, category)
        return all(sink.done(base) for sink in self.sinks)

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
                self._writer.close()  # every finished image is written before the sinks close
            finally:
                progress.close()
                close_all(self.sinks)
        summary = f"{self.explained} explained, {self.failed} failed"
        if self.skipped:
            summary += f" ({self.skipped} skipped: outputs exist; --overwrite redoes them)"
        print(summary, file=sys.stderr)
        return EXIT_SOME_FAILED if self.failed else EXIT_OK

    def explain_batch(self, items: list[dict]) -> None:
        try:
            x = torch.stack([item["tensor"] for item in items])
            result = self.explainer.explain(x, self.options.category_index)
        # A batch the model or the method cannot take fails its own images, and the run goes on;
        # that includes running out of memory on a device (a RuntimeError).
        except (ValueError, RuntimeError) as error:
            for item in items:
                self.fail(item["path"], f"{item['path']}: cannot explain: {error}")
            return
        # one copy from the device per batch, not one per image
        masks, logits, targets = result.masks.cpu().numpy(), result.logits.cpu(), result.targets.tolist()
        heads = None if result.head_masks is None else result.head_masks.cpu().numpy()
        for index, item in enumerate(items):
            self._writer.submit(self.write_outputs, item, masks[index], None if heads is None else heads[index],
                                logits[index], targets[index])

    def write_outputs(self, item: dict, mask: np.ndarray, head_masks: np.ndarray | None,
                      logits: torch.Tensor, target: int) -> None:
        path, image = item["path"], item["image"]
        explained = ExplainedImage(
            input=path, base=self.base_for(path, target if self.spec.class_specific else None), image=image,
            box=self.preprocess.visible_box(image.shape[1], image.shape[0]), mask=mask, head_masks=head_masks,
            entry={
                "method": self.options.method,
                "parameters": self.parameters,
                "image_size": [int(image.shape[1]), int(image.shape[0])],
                "mask_grid": list(mask.shape),
                "topk": top_classes(logits, self.names, self.options.topk) if self.names else [],
                "explained_class": {"index": target, "label": self.names[target] if self.names else str(target)},
            })
        try:
            for sink in self.sinks:
                sink.write(explained)
        except OSError as error:
            self.fail(path, f"{path}: cannot write outputs: {error}")
            return
        with self._lock:
            self.explained += 1
