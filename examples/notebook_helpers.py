"""The notebook helpers on the offline demo model: an explanation draws itself over the images.

    python examples/notebook_helpers.py      # a few seconds on a CPU, no network

writes examples/notebook_rollout.png (the explanation's figure), examples/notebook_overlay.png
(one mask on one image) and examples/notebook_layers.png (LeGrad's map of every block). In a
notebook, a cell ending in `result.show(images)` displays the figure, and a cell ending in
`result` displays the masks alone.
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vit_explain import VITAttentionRollout, VITLeGrad, show_mask_on_image
from vit_explain.io import figures
from vit_explain.io.models import load_model
from vit_explain.io.preprocess import Preprocessor

HERE = Path(__file__).parent


def main(out: Path = HERE) -> list[Path]:
    model = load_model(f"local-dir:{HERE / 'demo-vit'}")
    names = model.pretrained_cfg["label_names"]
    preprocess = Preprocessor(model)
    images = [Image.open(HERE / "images" / f"{colour}_01.png").convert("RGB")
              for colour in ("red", "green", "blue", "yellow")]
    x = torch.stack([preprocess(image) for image in images])
    boxes = [preprocess.visible_box(*image.size) for image in images]  # what the model saw of each

    # two lines: explain, then draw every mask over its image, labelled with class and probability
    result = VITAttentionRollout(model, head_fusion="max", discard_ratio=0.9).explain(x)
    figure = result.show(images, boxes=boxes, labels=names, title="attention rollout | demo-vit")

    # one mask on one image, as an RGB array at the image's own resolution
    overlay = show_mask_on_image(images[0], result.masks[0], box=boxes[0], colormap="inferno")

    # per-block maps: LeGrad's map of every block, side by side
    legrad = VITLeGrad(model).explain(x[:1], per_layer=True)
    strip = figures.layer_strip(np.asarray(images[0]), legrad.layer_masks[0].numpy(), boxes[0], legrad.layer_blocks,
                                title=f"demo-vit | legrad | {names[int(legrad.targets[0])]}",
                                note="each block's own LeGrad map")

    written = [out / "notebook_rollout.png", out / "notebook_overlay.png", out / "notebook_layers.png"]
    figure.save(written[0])
    Image.fromarray(overlay).save(written[1])
    Image.fromarray(strip).save(written[2])
    return written


if __name__ == "__main__":
    for path in main():
        print(path)
