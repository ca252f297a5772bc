"""Hugging Face transformers image classifiers from the command line: `--model hf:NAME_OR_FOLDER`.

The model comes from `AutoModelForImageClassification`, its preprocessing from the image
processor saved with it, translated into the timm data config the rest of vit-explain reads
(`model.pretrained_cfg`, with the class names from `config.id2label`). transformers is the `hf`
extra and is imported only here, only for such a model.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch import nn

from .hub import ModelLoadError, first_line, hf_offline, reachable

HF_PREFIX = "hf:"


def load_transformers(source: str) -> nn.Module:
    """A transformers image classifier from the hub (name) or a folder saved with save_pretrained."""
    name = HF_PREFIX + source
    try:
        import transformers
        from huggingface_hub import constants
    except ImportError:
        raise ModelLoadError(f"--model {name} needs the transformers package: "
                             "pip install 'vit-explain[hf]'") from None
    folder = Path(source).expanduser()
    local = folder.is_dir()
    where = str(folder) if local else source
    offline = not local and not reachable(constants.ENDPOINT)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # its weight-loading bar would clutter stderr
    try:
        with hf_offline(local or offline):
            model = transformers.AutoModelForImageClassification.from_pretrained(where)
            processor = image_processor(transformers, where, model.config)
    except (OSError, ValueError) as error:  # not found, not cached, not an image classifier
        if offline:
            raise ModelLoadError(f"cannot download {source!r}: no network and not in the local cache. "
                                 "Use --model hf:FOLDER (a folder saved with save_pretrained)") from None
        raise ModelLoadError(f"cannot load {source!r} with transformers: {first_line(error)}") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    model.pretrained_cfg = data_config(processor, model.config)
    model.num_classes = int(model.config.num_labels)
    return model


def image_processor(transformers, source: str, config):
    """The processor saved with the model, or a ViT processor at the model's image size."""
    try:
        return transformers.AutoImageProcessor.from_pretrained(source)
    except OSError:  # no preprocessor_config.json
        side = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        return transformers.ViTImageProcessor(size={"height": side, "width": side})


def data_config(processor, config) -> dict:
    """The processor's resize and normalisation as a timm data config: the image is resized to
    (height, width) without keeping its aspect (timm's "squash"), as ViTImageProcessor does."""
    size = getattr(processor, "size", None) or {}
    if "height" not in size or "width" not in size:
        raise ModelLoadError(f"the image processor {type(processor).__name__} resizes by {dict(size)}; "
                             "vit-explain reads processors that resize to a height and width (ViT's)")
    normalize = getattr(processor, "do_normalize", True)
    labels = getattr(config, "id2label", None) or {}
    return {
        "input_size": (int(getattr(config, "num_channels", 3)), int(size["height"]), int(size["width"])),
        "interpolation": Image.Resampling(getattr(processor, "resample", Image.Resampling.BILINEAR)).name.lower(),
        "mean": tuple(processor.image_mean) if normalize else (0.0, 0.0, 0.0),
        "std": tuple(processor.image_std) if normalize else (1.0, 1.0, 1.0),
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "label_names": [labels.get(i, labels.get(str(i), f"class {i}")) for i in range(int(config.num_labels))],
    }
