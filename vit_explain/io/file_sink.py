"""The two shapes every output sink shares: `ExplainedImage`, what a sink is handed for one image
and method, and `FileSink`, a sink that writes one file per image (sinks.py lists them all; the
figure sinks in figure_sinks.py subclass it, which is why it lives apart from that list)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .outputs import make_output_folder


@dataclass
class ExplainedImage:
    """One explained image, as the sinks receive it."""
    input: Path                      # the input file
    base: Path                       # its output path without an ending
    image: np.ndarray                # the decoded image, RGB uint8 (H, W, 3)
    box: tuple                       # (x0, y0, x1, y1): what the model saw, in image pixels
    mask: np.ndarray                 # (gh, gw) float32
    head_masks: np.ndarray | None    # (heads, gh, gw) for methods that show heads
    entry: dict                      # what the manifest says of it: method, parameters, classes
    outputs: dict[str, str] = field(default_factory=dict)  # sink name -> file written
    output_bytes: dict[str, int] = field(default_factory=dict)  # sink name -> its size
    # for the figure sinks (figure_sinks.py); None where a run does not ask for figures
    seconds: float | None = None            # the method's time for this image (its batch's / batch size)
    probability: float | None = None        # the explained class's probability (class-agnostic: the predicted's)
    layer_masks: np.ndarray | None = None   # (L, gh, gw) this image's Explanation.layer_masks
    layer_blocks: list[int] | None = None   # their block indices
    layer_head_masks: np.ndarray | None = None  # (L, heads, gh, gw) this image's Explanation.layer_head_masks
    # for the signed sinks (signed_sinks.py): this image's Explanation.pixel_relevance, float32
    # (H, W) at the model's input size (the part of `image` that `box` names); None for unsigned methods
    pixel_relevance: np.ndarray | None = None


class FileSink:
    """One file per image: base + ending."""

    name = ""
    ending = ""

    def __init__(self, options):
        self.options = options

    def path(self, base: Path) -> Path:
        return base.with_name(base.name + self.ending)

    def done(self, base: Path, entry: dict | None) -> bool:
        """The file exists, is no link, and has the size the earlier run recorded for it."""
        if entry is None:
            return False
        path, size = self.path(base), entry.get("output_bytes", {}).get(self.name)
        return path.is_file() and not path.is_symlink() and path.stat().st_size == size

    def write(self, item: ExplainedImage) -> None:
        path = self.path(item.base)
        make_output_folder(Path(self.options.output_dir), path.parent)
        self.save(path, item)
        item.outputs[self.name] = str(path)
        item.output_bytes[self.name] = path.stat().st_size

    def save(self, path: Path, item: ExplainedImage) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass
