"""--prompt and --reference: the command's targets beyond a class, checked against the model
before any image is read (a wrong target is a usage error, exit 2, in one line)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..io.dataset import decode_item
from ..io.naming import short_hash
from ..methods.targets import Prompt, Reference, Scorer, resolve, supported
from .errors import EXIT_USAGE, CommandError
from .options import Options

LABEL_CHARS = 40  # of a prompt in an output name; longer ones are cut and hashed


def command_target(options: Options, explainer, preprocess, class_specific: bool) -> Scorer | None:
    """The scorer of the run's prompts or references (None: classes); CommandError (exit 2) for a
    target the model does not take, an empty prompt, or a class asked of a model without classes."""
    adapter, model = explainer.adapter, type(explainer.model).__name__
    prompts, references = tuple(options.prompts or ()), tuple(options.references or ())
    if prompts and references:
        raise CommandError("give --prompt or --reference, not both", EXIT_USAGE)
    if (prompts or references) and options.category_index is not None:
        raise CommandError("--category_index explains a class; it does not combine with --prompt or --reference",
                           EXIT_USAGE)
    if any(not p.strip() for p in prompts):
        raise CommandError("--prompt is empty: give the text to explain, e.g. --prompt 'a dog'", EXIT_USAGE)
    wanted = "prompt" if prompts else "reference" if references else "class"
    if wanted not in adapter.targets:
        if wanted == "class" and not (class_specific or options.category_index is not None):
            return None  # rollout and raw attention read no score
        what = {"prompt": "--prompt (it has no text tower)", "reference": "--reference (it has no embedding output)",
                "class": "a class (it has no classifier head): give --prompt or --reference"}[wanted]
        raise CommandError(f"{options.model} ({model}) cannot explain {what}; it takes {supported(adapter)}",
                           EXIT_USAGE)
    if prompts:
        return resolve(explainer, Prompt(*prompts))
    if references:
        items = [decode_item(path, preprocess) for path in references]
        bad = next((item["error"] for item in items if item["error"]), None)
        if bad:
            raise CommandError(f"--reference {bad}", EXIT_USAGE)
        images = torch.stack([item["tensor"] for item in items])
        return resolve(explainer, Reference(images, tuple(Path(path).stem for path in references)))
    return None


def target_label(scorer: Scorer, column: int) -> str:
    """What an output name says of the explained prompt or reference: `prompt-a_dog`, `ref-cat`."""
    words = re.sub(r"[^\w-]+", "_", scorer.labels[column]).strip("_") or str(column)
    if len(words) > LABEL_CHARS:
        words = words[:LABEL_CHARS] + "~" + short_hash(scorer.labels[column])
    return ("prompt-" if scorer.kind == "prompt" else "ref-") + words
