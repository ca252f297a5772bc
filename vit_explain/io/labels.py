"""Class names: the model's own label_names, else timm's ImageNet names, else 'class N'."""
from __future__ import annotations

import timm.data


def class_names(model, num_classes: int) -> list[str]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if names and len(names) == num_classes:
        return list(names)
    subset = timm.data.infer_imagenet_subset(model) if hasattr(model, "pretrained_cfg") else None
    if subset is None and num_classes == 1000:
        subset = "imagenet-1k"
    if subset:
        info = timm.data.ImageNetInfo(subset)
        if info.num_classes() == num_classes:
            return [info.index_to_description(i) for i in range(num_classes)]
    return [f"class {i}" for i in range(num_classes)]
