"""The per-image work of a run, the same for every engine: decode, explain a batch, describe each
image for the output sinks.

The local loop (runner.py), each torchrun rank (the same loop on its shard) and each Ray actor
(engines/ray.py) build one `Explaining` from the run's options and a loaded model, and call
`decode` on each input and `explain` on each batch of decoded items: the same decoding,
preprocessing, explainer and entries everywhere, so the masks are the same whichever engine ran.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.dataset import decode_item
from ..io.identity import file_sha256, weights_fingerprint
from ..io.inputs import input_key, is_uri
from ..io.labels import class_names
from ..io.messages import shown
from ..io.naming import output_base, output_stems
from ..io.preprocess import Preprocessor
from ..io.sinks import ExplainedImage
from ..io.table import request_id
from ..methods.table import METHODS
from .common import build_explainer
from .errors import EXIT_USAGE, CommandError
from .options import Options
from .targets import command_target, target_label
from .selection import needs_layer_maps, selected_sinks


def top_classes(logits: torch.Tensor, names: list[str], k: int) -> list[dict]:
    probabilities = logits.float().softmax(-1)
    values, indices = probabilities.topk(min(k, probabilities.shape[-1]))
    return [{"index": int(i), "label": names[int(i)] if names else str(int(i)), "probability": round(float(p), 6)}
            for p, i in zip(values, indices)]


def model_identity(options: Options, model) -> dict:
    """What made an output: the model's name, its checkpoint's hash, a fingerprint of its weights."""
    identity = {"name": options.model, "hub": options.hub, "checkpoint": options.checkpoint,
                "weights": weights_fingerprint(model)}
    if options.checkpoint:
        identity["checkpoint_sha256"] = file_sha256(options.checkpoint)
    return identity


@dataclass
class Outcome:
    """One input after explain(): `image` for the sinks, or the `error` that stopped it."""
    path: object                     # Path, or a URI (str)
    image: ExplainedImage | None = None
    error: str | None = None


class Explaining:
    """The model, its explainer and preprocessing, and how each image is described, for one run."""

    def __init__(self, options: Options, model, run: str = "", identity: dict | None = None):
        self.options = options
        self.model = model
        self.run = run
        self.spec = METHODS[options.method]
        self.num_classes = getattr(model, "num_classes", None)
        if options.category_index is not None and self.num_classes and not (
                0 <= options.category_index < self.num_classes):
            raise CommandError(f"--category_index {options.category_index} is out of range: "
                               f"{options.model} has {self.num_classes} classes (0..{self.num_classes - 1})",
                               EXIT_USAGE)
        self.explainer = build_explainer(self.spec, model, options)
        self.parameters = self.method_parameters()
        self.identity = identity or model_identity(options, model)
        self.preprocess = Preprocessor(model, compat=bool(options.compat))
        self.names = class_names(model, self.num_classes or 0) if self.num_classes else []
        # --prompt / --reference: the scores are similarities, one column (and one map) per target
        self.scorer = command_target(options, self.explainer, self.preprocess, self.spec.class_specific)
        if self.scorer is not None:
            self.names = list(self.scorer.labels)
        self.device = next(model.parameters()).device
        self.stems: dict = {}
        # the per-block figures need the per-block maps; nothing else asks for them (they cost memory)
        self.per_layer = needs_layer_maps(selected_sinks(options, self.spec))

    def method_parameters(self) -> dict:
        """The method's keywords as the explainer took them (Grad-CAM's resolved default layer,
        say), and the class asked for when the map depends on it."""
        o = self.options
        parameters = {key: getattr(self.explainer, key, getattr(o, key)) for key in self.spec.options}
        if self.spec.class_specific:
            parameters["category_index"] = o.category_index
        return parameters

    def name_outputs(self, images: list, root: Path | None) -> None:
        """Where each local input's file outputs go (unique names, the input folders mirrored)."""
        local = [p for p in images if not is_uri(p)]
        if local:
            self.stems = output_stems(local, root if root is not None else Path(local[0]).parent,
                                      Path(self.options.output_dir))

    def base_for(self, path, category: int | None) -> Path | None:
        """The image's output path without an ending: its stem and the method's suffix."""
        stem = self.stems.get(path)
        return None if stem is None else output_base(stem, self.spec.suffix(self.options, category))

    def request(self, path, column: int | None = None) -> dict:
        """What an entry or a row is filed under: the input, the method and its parameters (with
        the prompt or reference explained in `column`), and its id (with the model's weights)."""
        parameters = {**self.parameters, **self.target_parameters(column)}
        entry = {"input": input_key(path), "method": self.options.method, "parameters": parameters}
        entry["request"] = request_id(entry, self.identity["weights"])
        return entry

    def target_parameters(self, column: int | None) -> dict:
        """A prompt or reference run's part of a request, known before the image is explained: the
        explained prompt or reference for a method that reads the score; every prompt or reference
        for one that does not (its map is the same whichever scores best)."""
        if self.scorer is None or (column is None and self.spec.class_specific):
            return {}
        if self.spec.class_specific:
            return {self.scorer.kind: self.scorer.labels[column]}
        return {self.scorer.kind: list(self.scorer.labels)}

    def requests(self, path) -> list[dict]:
        """Every request an input makes in this run: one per prompt or reference for a method that
        reads the score, else one."""
        if self.scorer is not None and self.spec.class_specific:
            return [self.request(path, column) for column in range(len(self.scorer))]
        return [self.request(path)]

    def label(self, index: int | None):
        """What an output name says of the explained class (its index) or prompt or reference."""
        return index if self.scorer is None or index is None else target_label(self.scorer, index)

    def failure(self, path, message: str) -> dict:
        """The manifest entry (or the row's fields) of an input that failed."""
        return {**self.request(path), "status": "failed", "error": message, "model": self.identity, "run": self.run}

    def decode(self, path, data: bytes | None = None) -> dict:
        """An input decoded and preprocessed: {"path", "tensor", "image", "error"}."""
        if data is None and is_uri(path):
            return {"path": path, "tensor": None, "image": None,
                    "error": f"{shown(path)}: URIs are read by --engine ray only"}
        return decode_item(path, self.preprocess, data)

    def explain(self, items: list[dict]) -> list[Outcome]:
        """Decoded items (decode failures among them) -> one Outcome each, in order; with several
        prompts or references and a method that reads the score, one per item and target."""
        if self.scorer is None or not self.spec.class_specific:
            return self.explain_column(items, self.options.category_index)
        outcomes = []
        for column in range(len(self.scorer)):
            explained = self.explain_column(items, column)
            outcomes += explained if column == 0 else [o for o in explained if o.image is not None]
        return outcomes

    def explain_column(self, items: list[dict], category) -> list[Outcome]:
        """explain() for one class (or prompt, or reference) column."""
        outcomes = [Outcome(item["path"], error=item["error"]) for item in items]
        good = [(index, item) for index, item in enumerate(items) if not item["error"]]
        if not good:
            return outcomes
        try:
            x = torch.stack([item["tensor"] for _, item in good])
            started = time.perf_counter()
            result = self.explainer.explain(x, category, target=self.scorer, per_layer=self.per_layer)
            seconds = (time.perf_counter() - started) / len(good)  # for the sheets' headers
        # A batch the model or the method cannot take fails its own images, and the run goes on;
        # that includes running out of memory on a device (a RuntimeError).
        except (ValueError, RuntimeError) as error:
            for index, item in good:
                outcomes[index].error = f"{shown(item['path'])}: cannot explain: {error}"
            return outcomes
        # one copy from the device per batch, not one per image
        masks, logits = result.masks.cpu().numpy(), result.logits.cpu()
        # no targets: a class-agnostic map of a model without classes (its output is an embedding)
        targets = [None] * len(good) if result.targets is None else result.targets.tolist()
        heads = None if result.head_masks is None else result.head_masks.cpu().numpy()
        extras = figure_fields(result, logits, targets, seconds)
        finite = torch.isfinite(logits).all(dim=1).tolist()
        for number, (index, item) in enumerate(good):
            if not finite[number] or not np.isfinite(masks[number]).all():
                outcomes[index].error = (f"{shown(item['path'])}: cannot explain: the model's output is not finite "
                                         "(NaN or inf); check its weights and the input")
                continue
            outcomes[index].image = self.explained_image(item, masks[number],
                                                         None if heads is None else heads[number],
                                                         logits[number], targets[number], extras[number])
        return outcomes

    def explained_image(self, item: dict, mask: np.ndarray, head_masks: np.ndarray | None,
                        logits: torch.Tensor, target: int | None, extras: dict | None = None) -> ExplainedImage:
        path, image = item["path"], item["image"]
        class_specific = self.spec.class_specific
        request = self.request(path, target)  # one entry per prompt or reference, each its own request
        label = self.label(target)
        # an embedding's largest component is no class: no prediction to report
        top = [None] if target is None else top_classes(logits, self.names, max(1, self.options.topk))
        return ExplainedImage(
            input=Path(request["input"]) if not is_uri(path) else request["input"],
            base=self.base_for(path, label if class_specific else None),
            image=image, box=self.preprocess.visible_box(image.shape[1], image.shape[0]), mask=mask,
            head_masks=head_masks,
            entry={
                **request,
                "model": self.identity,
                "run": self.run,
                "image_size": [int(image.shape[1]), int(image.shape[0])],
                "mask_grid": list(mask.shape),
                "topk": top[:self.options.topk] if self.names and target is not None else [],
                "predicted": top[0],
                # a class-agnostic map explains no class, whatever --category_index said
                "target": (self.scorer.kind if self.scorer is not None else "class") if class_specific
                else "class-agnostic",
                "explained_class": {"index": target, "label": self.names[target] if self.names else str(target)}
                if class_specific else None,
            }, **(extras or {}))


def figure_fields(result, logits: torch.Tensor, targets: list[int], seconds: float) -> list[dict]:
    """Per image of a batch, what the figure and signed sinks read beyond the mask (ExplainedImage's
    fields): the time, the explained class's probability, the per-block maps when asked for,
    and the signed pixel relevance of signed methods."""
    softmax = logits.float().softmax(-1)
    # no target (a class-agnostic map of a model without classes): no probability to show
    probabilities = [None if target is None else float(softmax[number, target]) for number, target in enumerate(targets)]
    arrays = {name: None if getattr(result, source) is None else getattr(result, source).float().cpu().numpy()
              for name, source in (("layer_masks", "layer_masks"), ("layer_head_masks", "layer_head_masks"),
                                   ("pixel_relevance", "pixel_relevance"))}
    return [{"seconds": seconds, "probability": probabilities[number], "layer_blocks": result.layer_blocks,
             **{name: None if array is None else array[number] for name, array in arrays.items()}}
            for number in range(len(targets))]
