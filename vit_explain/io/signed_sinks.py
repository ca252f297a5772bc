"""Output sinks for signed relevance (CP-LRP's `Explanation.pixel_relevance`): the map itself as
float32 .npy, and its overlay on the diverging blue-white-red colormap with a symmetric scale.

Both are in SINKS (sinks.py), and the method table's cp-lrp line names them in its
`extra_outputs`: they are written by default for cp-lrp, and asking for them with a method
without signed relevance is a usage error (exit 2). The run loop fills each image's
`ExplainedImage.pixel_relevance` from `Explanation.pixel_relevance` (float32 (H, W) at the
model's input size, the part of the image `box` names).

Both are `FileSink`s (file_sink.py): `done(base, entry)` (the file is there, no link, of the size
the manifest recorded), `write(item)` (OSError when it cannot, including an item without signed
relevance), `close()`.
"""
from __future__ import annotations


import numpy as np

from .file_sink import FileSink
from .outputs import write_npy, write_png
from .overlay import overlay_signed


def signed_relevance(item) -> np.ndarray:
    """The item's signed pixel relevance as float32 (H, W); OSError when it has none."""
    relevance = getattr(item, "pixel_relevance", None)
    if relevance is None:
        raise OSError("no signed relevance for this image (only signed methods such as cp-lrp give it)")
    relevance = np.asarray(relevance, dtype=np.float32)
    if relevance.ndim != 2:
        raise OSError(f"signed relevance must be one (H, W) map per image; got shape {relevance.shape}")
    return relevance


class SignedFileSink(FileSink):
    """One file per image, base + ending, for methods with signed relevance only."""

    @staticmethod
    def applies(explainer) -> bool:
        """Whether the explainer gives signed relevance (`signed = True`, as VITCPLRP)."""
        return bool(getattr(explainer, "signed", False))


class RelevanceSink(SignedFileSink):
    """The signed pixel relevance, float32 (H, W) at the model's input size (.npy): positive
    speaks for the explained class, negative against it, in the method's units (CP-LRP: the
    explained logit's)."""
    name, ending = "relevance", "_relevance.npy"

    def save(self, path, item):
        write_npy(path, signed_relevance(item))


class RelevanceOverlaySink(SignedFileSink):
    """The signed pixel relevance over the image at its own resolution (PNG), on the diverging
    blue-white-red colormap: white 0, red positive, blue negative, symmetric around 0 and scaled
    by the image's largest magnitude (`overlay.overlay_signed`), blended with --alpha."""
    name, ending = "relevance-overlay", "_relevance.png"

    def save(self, path, item):
        alpha = getattr(self.options, "alpha", 0.5)
        write_png(path, overlay_signed(item.image, signed_relevance(item), item.box, alpha=alpha))


SIGNED_SINKS = (RelevanceSink, RelevanceOverlaySink)
