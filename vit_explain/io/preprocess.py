"""Images to model input, and where the model's input sits inside the original image."""
from __future__ import annotations

import numpy as np
import timm.data
import torch
from PIL import Image

COMPAT_SIZE = 224


class Preprocessor:
    """The model's own evaluation transform (timm data config), or the original vit-explain's
    (PIL resize to 224x224, mean = std = 0.5) with compat=True."""

    def __init__(self, model, compat: bool = False):
        self.compat = compat
        self.config = timm.data.resolve_model_data_config(model)
        built = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if built and not getattr(model.patch_embed, "dynamic_img_size", False):
            # a model without a pretrained config (torch hub, hand-built) gets timm's default 224
            self.config["input_size"] = (self.config["input_size"][0], *built)
        self.transform = None if compat else timm.data.create_transform(**self.config, is_training=False)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.compat:
            array = np.asarray(image.resize((COMPAT_SIZE, COMPAT_SIZE)), dtype=np.float32) / 255
            return torch.from_numpy((array - 0.5) / 0.5).permute(2, 0, 1).contiguous()
        return self.transform(image)

    def visible_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in image pixels of what the model sees; may reach past the image
        where the transform pads."""
        if self.compat:
            return 0.0, 0.0, float(width), float(height)
        _, in_h, in_w = self.config["input_size"]
        crop_pct = self.config.get("crop_pct") or 0.875
        scale_w, scale_h = int(in_w / crop_pct), int(in_h / crop_pct)
        mode = self.config.get("crop_mode") or "center"
        if mode == "squash":
            rx, ry = scale_w / width, scale_h / height
        elif mode == "border":
            rx = ry = min(scale_w / width, scale_h / height)
        else:
            rx = ry = max(scale_w / width, scale_h / height)
        box_w, box_h = in_w / rx, in_h / ry
        return ((width - box_w) / 2, (height - box_h) / 2, (width + box_w) / 2, (height + box_h) / 2)
