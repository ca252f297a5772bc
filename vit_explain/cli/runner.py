"""One run of `vit-explain`: images in, one explanation each, written by the output sinks.

A run holds a lock on its output folder, so a second run into it is refused. An image counts
as done from an earlier run only when the manifest has an entry for the same request (input,
method, parameters) made by the same model (name, checkpoint hash, weights fingerprint), and
every selected output exists with the size recorded for it; anything else is redone.
SIGTERM ends a run like Ctrl-C: the decoding workers stop, finished images are written and
listed, and the command exits with 143.
"""
from __future__ import annotations

import contextlib
import os
import signal
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
from ..io.identity import file_sha256, weights_fingerprint
from ..io.manifest import Manifest, entry_key
from ..io.messages import shown
from ..io.naming import output_base, output_stems
from ..io.outputs import OutputError, OutputLock, check_inputs_outside, remove_leftovers
from ..io.preprocess import Preprocessor
from ..io.sinks import DEFAULT_SINKS, SINKS, ExplainedImage, close_all
from ..io.writer import BackgroundWriter
from ..methods.table import METHODS
from .common import build_explainer, input_root, misnamed_message, open_inputs_and_model, report
from .errors import EXIT_OK, EXIT_OUTPUT, EXIT_SOME_FAILED, EXIT_USAGE, CommandError, cannot_write
from .options import Options


def top_classes(logits: torch.Tensor, names: list[str], k: int) -> list[dict]:
    probabilities = logits.float().softmax(-1)
    values, indices = probabilities.topk(min(k, probabilities.shape[-1]))
    return [{"index": int(i), "label": names[int(i)], "probability": round(float(p), 6)}
            for p, i in zip(values, indices)]


EXIT_TERMINATED = 128 + signal.SIGTERM  # the shell's code for a process ended by SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C (finally blocks run), then exit with 143."""


@contextlib.contextmanager
def sigterm_unwinds():
    """While the run lasts, SIGTERM raises Terminated in the main thread instead of killing the
    process on the spot (which would leave decoding workers behind and the manifest unsaved)."""
    def handler(signum, frame):
        raise Terminated()
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def model_identity(options: Options, model) -> dict:
    """What made an output: the model's name, its checkpoint's hash, a fingerprint of its weights."""
    identity = {"name": options.model, "hub": options.hub, "checkpoint": options.checkpoint,
                "weights": weights_fingerprint(model)}
    if options.checkpoint:
        identity["checkpoint_sha256"] = file_sha256(options.checkpoint)
    return identity


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
        self.identity = model_identity(options, self.model)
        self.preprocess = Preprocessor(self.model, compat=bool(options.compat))
        self.names = class_names(self.model, self.num_classes or 0) if self.num_classes else []
        self.stems = output_stems(self.images, input_root(options.image_path), options.output_dir)
        self.lock = OutputLock(options.output_dir)
        try:
            check_inputs_outside(options.output_dir, self.images)
            self.lock.acquire()
            remove_leftovers(options.output_dir)  # temporary files of killed runs; ours is the only run now
            self.manifest = Manifest(options.output_dir, {
                "vit_explain": __version__, "torch": torch.__version__, "timm": timm.__version__,
                "model": options.model, "hub": options.hub, "checkpoint": options.checkpoint,
            })
        except OutputError as error:
            self.lock.release()
            raise CommandError(str(error), EXIT_OUTPUT) from None
        # the manifest goes last: it lists what the others wrote
        self.sinks = [SINKS[name](options) for name in selected_sinks(options)] + [self.manifest]
        self.explained = self.failed = self.skipped = 0
        self._lock = threading.Lock()  # the counters, shared with the writer threads
        self._writer: BackgroundWriter | None = None
        self.stop: CommandError | None = None  # set by a writer thread when no output can be written

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
        return output_base(self.stems[path], self.spec.suffix(self.options, category))

    def request(self, path: Path) -> dict:
        """What the manifest files an entry under: the input (resolved: the same file given by a
        relative or an absolute path is one input), the method and its parameters."""
        return {"input": str(path.resolve()), "method": self.options.method, "parameters": self.parameters}

    def already_done(self, path: Path) -> bool:
        """An earlier run made this request's outputs with this model, and they are whole."""
        if self.options.overwrite:
            return False
        entry = self.manifest.get(entry_key(self.request(path)))
        if entry is None or entry.get("status") != "explained" or entry.get("model") != self.identity:
            return False
        category = (entry.get("explained_class") or {}).get("index")  # named after the class it explains
        base = self.base_for(path, category if self.spec.class_specific else None)
        return all(sink.done(base, entry) for sink in self.sinks)

    def fail(self, path: Path, message: str) -> None:
        with self._lock:
            self.failed += 1
            report(message)
        self.manifest.add({**self.request(path), "status": "failed", "error": message, "model": self.identity})

    def execute(self) -> int:
        try:
            with sigterm_unwinds():
                self.explain_all()
        except Terminated:
            raise CommandError(f"terminated (SIGTERM): {self.explained} images explained, written and listed "
                               "in the manifest; a re-run does the rest", EXIT_TERMINATED) from None
        finally:
            self.lock.release()
        summary = f"{self.explained} explained, {self.failed} failed"
        if self.skipped:
            summary += f" ({self.skipped} skipped: outputs exist; --overwrite redoes them)"
        print(summary, file=sys.stderr)
        return EXIT_SOME_FAILED if self.failed else EXIT_OK

    def explain_all(self) -> None:
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
        batches = image_batches(pending, self.preprocess, o.batch_size, workers)
        try:
            for batch in batches:
                good = []
                for item in batch:
                    if item["error"]:
                        self.fail(item["path"], item["error"])
                    else:
                        good.append(item)
                if good:
                    self.explain_batch(good)
                progress.update(len(batch))
                if self.stop is not None:
                    break
        finally:
            batches.close()  # stops the decoding workers now, also on an interrupt
            try:
                self._writer.close()  # every finished image is written before the sinks close
            finally:
                progress.close()
                try:
                    close_all(self.sinks)
                except OSError as error:
                    raise CommandError(f"cannot save the manifest in {shown(o.output_dir)}: "
                                       f"{error.strerror or error}", EXIT_OUTPUT) from None
        if self.stop is not None:
            raise self.stop

    def explain_batch(self, items: list[dict]) -> None:
        try:
            x = torch.stack([item["tensor"] for item in items])
            result = self.explainer.explain(x, self.options.category_index)
        # A batch the model or the method cannot take fails its own images, and the run goes on;
        # that includes running out of memory on a device (a RuntimeError).
        except (ValueError, RuntimeError) as error:
            for item in items:
                self.fail(item["path"], f"{shown(item['path'])}: cannot explain: {error}")
            return
        # one copy from the device per batch, not one per image
        masks, logits, targets = result.masks.cpu().numpy(), result.logits.cpu(), result.targets.tolist()
        heads = None if result.head_masks is None else result.head_masks.cpu().numpy()
        finite = torch.isfinite(logits).all(dim=1).tolist()
        for index, item in enumerate(items):
            if not finite[index] or not np.isfinite(masks[index]).all():
                self.fail(item["path"], f"{shown(item['path'])}: cannot explain: the model's output is not finite "
                                        "(NaN or inf); check its weights and the input")
                continue
            self._writer.submit(self.write_outputs, item, masks[index], None if heads is None else heads[index],
                                logits[index], targets[index])

    def write_outputs(self, item: dict, mask: np.ndarray, head_masks: np.ndarray | None,
                      logits: torch.Tensor, target: int) -> None:
        if self.stop is not None:  # the disk is full: this image waits for the next run, like the rest
            return
        path, image = item["path"], item["image"]
        class_specific = self.spec.class_specific
        request = self.request(path)
        explained = ExplainedImage(
            input=Path(request.pop("input")), base=self.base_for(path, target if class_specific else None),
            image=image, box=self.preprocess.visible_box(image.shape[1], image.shape[0]), mask=mask,
            head_masks=head_masks,
            entry={
                **request,
                "model": self.identity,
                "image_size": [int(image.shape[1]), int(image.shape[0])],
                "mask_grid": list(mask.shape),
                "topk": top_classes(logits, self.names, self.options.topk) if self.names else [],
                # a class-agnostic map explains no class, whatever --category_index said
                "target": "class" if class_specific else "class-agnostic",
                "explained_class": {"index": target, "label": self.names[target] if self.names else str(target)}
                if class_specific else None,
            })
        try:
            for sink in self.sinks:
                sink.write(explained)
        except OSError as error:
            self.fail(path, f"{shown(path)}: cannot write outputs: {error}")
            if cannot_write(error):  # a full disk fails every image after it too: stop the run
                self.stop = CommandError(f"cannot write to {shown(self.options.output_dir)}: "
                                         f"{error.strerror or error}", EXIT_OUTPUT)
            return
        with self._lock:
            self.explained += 1
