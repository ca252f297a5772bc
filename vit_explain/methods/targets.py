"""What an explanation explains: a class, text prompts, or reference images.

A target turns the model into a scorer, and every gradient method explains one column of the
scores, exactly as it explains one class of a classifier's logits:

* a class (an int, one per sample, or None for the predicted class): the model's logits;
* `Prompt("a dog", "a cat")`: for CLIP-family models, scores (B, P) = the model's logit scale
  times the cosine similarity of the image embedding and each prompt's text embedding (plus the
  model's logit bias, SigLIP's), one column per prompt;
* `Reference(images)`: for models with an embedding output (CLIP-family, headless backbones
  such as DINOv2), scores (B, R) = the cosine similarity of the image embedding and each
  reference image's embedding, one column per reference.

The prompts' and references' embeddings are computed once, without gradients (`Scorer`); then
the adapter's one way of calling the model (`Adapter.logits`, `scores_of_tokens`) maps the image
embedding through the scorer, so every method that differentiates a score explains any target
unchanged. Rollout and raw attention do not read the score, and ignore it as they ignore a class;
on a model without classes and without a target they explain no class: `Explanation.targets`
is None (the model's output is an embedding, whose largest component is no prediction).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..recording import RecordingSession


@dataclass(frozen=True, init=False)
class Prompt:
    """One or more text prompts: `Prompt("a dog")`, `Prompt("a dog", "a cat")` or `Prompt(["a dog", ...])`."""
    texts: tuple[str, ...]

    def __init__(self, *texts):
        if len(texts) == 1 and isinstance(texts[0], (list, tuple)):
            texts = tuple(texts[0])
        bad = [t for t in texts if not isinstance(t, str) or not t.strip()]
        if not texts or bad:
            raise ValueError(f"a prompt must be non-empty text; got {bad[0] if bad else 'no prompt'!r}")
        object.__setattr__(self, "texts", tuple(texts))

    def labels(self) -> list[str]:
        return list(self.texts)


@dataclass(frozen=True, eq=False)
class Reference:
    """Reference images, preprocessed as the explained input: (R, C, H, W) or one (C, H, W)."""
    images: torch.Tensor
    names: tuple[str, ...] = ()   # what to call each reference in output names (default: its index)

    def labels(self) -> list[str]:
        count = 1 if self.images.ndim == 3 else len(self.images)
        return list(self.names) if len(self.names) == count else [f"reference{i}" for i in range(count)]


class Scorer:
    """A resolved prompt or reference target: embedding (B, D) -> scores (B, K), one column per
    prompt or reference. Build it once (`resolve`) to explain many batches with it."""

    def __init__(self, kind: str, keys: torch.Tensor, scale, bias, labels: list[str], normalize=None):
        self.kind, self.keys, self.scale, self.bias, self.labels = kind, keys, scale, bias, labels
        self.normalize = normalize or functools.partial(F.normalize, dim=-1)

    def with_normalize(self, normalize) -> "Scorer":
        """The same scores with another L2 normalisation of the image embedding (same values, another
        backward: CP-LRP holds the norm constant, see vit_explain.math.lrp)."""
        return Scorer(self.kind, self.keys, self.scale, self.bias, self.labels, normalize)

    def __call__(self, embedding: torch.Tensor) -> torch.Tensor:
        image = self.normalize(embedding)
        scores = image @ self.keys.to(image.dtype).t()
        if self.scale is not None:
            scores = scores * self.scale
        return scores if self.bias is None else scores + self.bias

    def __len__(self) -> int:
        return len(self.labels)


def supported(adapter) -> str:
    """The targets a model takes, in words, for error messages."""
    words = {"class": "class indices", "prompt": "text prompts (Prompt)", "reference": "reference images (Reference)"}
    return " and ".join(words[t] for t in adapter.targets)


def refuse(adapter, what: str) -> ValueError:
    return ValueError(f"{type(adapter.model).__name__} cannot explain {what}: it takes {supported(adapter)}")


def resolve(explainer, target) -> Scorer | None:
    """The Scorer of a prompt or reference target (None for a class); ValueError naming what the
    model supports when it cannot take the target."""
    adapter = explainer.adapter
    if isinstance(target, Scorer):
        return target
    if isinstance(target, Prompt):
        if "prompt" not in adapter.targets:
            raise refuse(adapter, "a text prompt (it has no text tower)")
        with frozen(explainer.model), outside_autograd():
            keys = F.normalize(adapter.text_embedding(list(target.texts)), dim=-1)
            scale, bias = adapter.prompt_scale()
        return Scorer("prompt", keys, scale, bias, target.labels())
    if isinstance(target, Reference):
        if "reference" not in adapter.targets:
            raise refuse(adapter, "a reference image (it has no embedding output)")
        images = target.images if target.images.ndim != 3 else target.images[None]
        x = explainer.model_input(images)
        with frozen(explainer.model), outside_autograd():
            keys = F.normalize(adapter.image_embedding(x.clone()), dim=-1)
        return Scorer("reference", keys, None, None, target.labels())
    raise ValueError(f"target must be a class index, a Prompt or a Reference; got {type(target).__name__}")


@contextlib.contextmanager
def outside_autograd():
    """No graph, and ordinary tensors even under a caller's inference_mode: the embeddings made
    here join the graph of the explained scores later."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def frozen(model):
    """The model in eval mode for a call, handed back as it came."""
    return RecordingSession(model)


def is_class(target) -> bool:
    return target is None or isinstance(target, (numbers.Integral, list, tuple, range)) or torch.is_tensor(target)


def explains_targets(explain):
    """Give an `explain(x, category_index=None, per_layer=False)` the `target=` keyword: a class
    target is the category_index; a prompt or reference target is set on the adapter as its
    scorer for the call, and category_index then picks the column (the prompt or reference)
    per sample, None meaning the best-scoring one."""
    @functools.wraps(explain)
    def with_target(self, input_tensor, category_index=None, per_layer: bool = False, target=None):
        adapter = self.adapter
        if is_class(target):
            if target is not None:
                if category_index is not None:
                    raise ValueError("give the class as category_index or as target, not both")
                category_index = target
            # methods that never read the score (rollout, raw attention, flow) need no class
            # label-free DAAM reads its own score of the features, not a class
            reads_score = getattr(self, "needs_gradients", True) and not getattr(self, "label_free", False)
            classless = adapter.scorer is None and "class" not in adapter.targets
            if reads_score and classless:
                raise refuse(adapter, "a class (it has no classifier head)")
            explanation = explain(self, input_tensor, category_index, per_layer)
            if classless:
                # the output is an embedding: its argmax is no class, so none is reported
                explanation = dataclasses.replace(explanation, targets=None)
            return explanation
        scorer = resolve(self, target)
        with adapter.scoring(scorer):
            return explain(self, input_tensor, category_index, per_layer)
    with_target.explains_targets = True
    return with_target
