"""Hugging Face transformers image classifiers from the command line: `--model hf:NAME_OR_FOLDER`.

The model comes from `AutoModelForImageClassification`, its preprocessing from the image
processor saved with it, translated into the timm data config the rest of vit-explain reads
(`model.pretrained_cfg`, with the class names from `config.id2label`). transformers is the `hf`
extra and is imported only here, only for such a model.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from PIL import Image
from torch import nn

from .hub import (ModelLoadError, check_class_count, check_fits_memory, first_line, hf_offline, reachable,
                  unreadable_file, weights_error)
from .messages import shown

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
    try:
        with quiet(transformers), hf_offline(local or offline):
            raw = read_config(where, local)
            check_config(raw, where)
            # CLIP, SigLIP, DINOv2: the model itself (its embedding), not an image classifier head
            embedding = raw.get("model_type") in EMBEDDING_MODEL_TYPES
            auto = transformers.AutoModel if embedding else transformers.AutoModelForImageClassification
            config = transformers.AutoConfig.from_pretrained(where)
            check_fits_memory(lambda: auto.from_config(config), f"the model {shown(where)}")
            model, info = auto.from_pretrained(where, output_loading_info=True)
            check_complete(info, source)
            processor = image_processor(transformers, where, vision_config(model.config))
            tokenizer = text_tokenizer(transformers, where) if embedding else None
    except ModelLoadError:
        raise
    # not found, not cached, not an image classifier, a broken config or weights file: transformers,
    # huggingface_hub, torch and safetensors raise many types for these
    except Exception as error:
        if offline:
            raise ModelLoadError(f"cannot download {source!r}: no network and not in the local cache. "
                                 "Use --model hf:FOLDER (a folder saved with save_pretrained)") from None
        if unreadable_file(error) and local:
            raise weights_error(folder, error) from None
        if "ignore_mismatched_sizes" in str(error):  # its message points at a report we keep quiet
            raise ModelLoadError(f"the weights of {source!r} do not fit the architecture its config.json "
                                 "describes (tensor sizes differ)") from None
        raise ModelLoadError(f"cannot load {source!r} with transformers: {first_line(error)}") from None
    model.pretrained_cfg = data_config(processor, vision_config(model.config), classes=not embedding)
    model.num_classes = 0 if embedding else int(model.config.num_labels)
    if tokenizer is not None:
        model.tokenizer = tokenizer  # the adapter tokenizes --prompt with it
    return model


# config.json's model_type of the transformers models vit-explain explains by their embedding
EMBEDDING_MODEL_TYPES = ("clip", "siglip", "dinov2")


def vision_config(config):
    """The image tower's config (CLIP and SigLIP keep it apart from the text tower's)."""
    return getattr(config, "vision_config", None) or config


def text_tokenizer(transformers, source: str):
    """The tokenizer saved with the model; None without one (DINOv2 has no text tower)."""
    try:
        return transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError):
        return None


def saved_by_transformers(source: str) -> bool:
    """Whether a folder was written by transformers' save_pretrained: its config.json names a
    "model_type" (timm's save_for_hf writes "architecture" instead)."""
    try:
        config = json.loads((Path(source).expanduser() / "config.json").read_bytes())
    except (OSError, ValueError):
        return False  # the timm loader explains what is wrong with the folder
    return isinstance(config, dict) and isinstance(config.get("model_type"), str) and "architecture" not in config


def check_complete(info: dict, source: str) -> None:
    """Every tensor of the model came from the weights: transformers would initialise a missing
    classifier at random (a base model's checkpoint), and its explanations would mean nothing.
    Its warning about it is silenced with the rest (quiet), so this is the one line instead."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelLoadError(f"the weights of {source!r} lack {len(missing)} of the model's tensors "
                             f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): not an image "
                             "classifier checkpoint? Those would be random")


@contextlib.contextmanager
def quiet(transformers):
    """transformers' progress bars and load reports would clutter stderr: errors only, while loading."""
    logging = transformers.utils.logging
    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def read_config(where: str, local: bool) -> dict:
    """config.json as JSON, read before transformers does: from the folder, or the hub's copy."""
    if local:
        path = Path(where) / "config.json"
    else:
        from huggingface_hub import hf_hub_download
        path = Path(hf_hub_download(where, "config.json"))
    try:
        config = json.loads(path.read_bytes())
    except OSError as error:
        raise ModelLoadError(f"cannot read {shown(path)}: {error.strerror or first_line(error)}") from None
    except ValueError as error:
        raise ModelLoadError(f"{shown(path)} is not valid JSON: {first_line(error)}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{shown(path)} is not a transformers model config (a JSON object)")
    return config


def check_config(config: dict, where: str) -> None:
    """The class count, before transformers makes a label for each class (a config claiming 10^9
    classes would take all memory there)."""
    labels = config.get("id2label")
    count = config.get("num_labels", len(labels) if isinstance(labels, dict) else 2)
    check_class_count(count, f"the config of {shown(where)}")


def image_processor(transformers, source: str, config):
    """The processor saved with the model, or a ViT processor at the model's image size."""
    try:
        return transformers.AutoImageProcessor.from_pretrained(source)
    except OSError:  # no preprocessor_config.json
        side = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        return transformers.ViTImageProcessor(size={"height": side, "width": side})


def data_config(processor, config, classes: bool = True) -> dict:
    """The processor's resize and normalisation as a timm data config: the image is resized to
    (height, width) without keeping its aspect (timm's "squash"), as ViTImageProcessor does; or,
    for processors that resize the shortest edge and crop the centre (CLIP's, DINOv2's), the same
    as timm's centre crop (crop_pct = crop / shortest edge)."""
    size = getattr(processor, "size", None) or {}
    height, width, crop = size.get("height"), size.get("width"), {}
    if "shortest_edge" in size and height is None:
        edge = int(size["shortest_edge"])
        crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        height, width = (int(crop["height"]), int(crop["width"])) if crop else (edge, edge)
        crop = {"crop_pct": height / edge, "crop_mode": "center"}
    if height is None or width is None:
        raise ModelLoadError(f"the image processor {type(processor).__name__} resizes by {dict(size)}; "
                             "vit-explain reads processors that resize to a height and width (ViT's, SigLIP's) "
                             "or the shortest edge (CLIP's, DINOv2's)")
    normalize = getattr(processor, "do_normalize", True)
    labels = getattr(config, "id2label", None) or {}
    return {
        "input_size": (int(getattr(config, "num_channels", 3)), int(height), int(width)),
        "interpolation": Image.Resampling(getattr(processor, "resample", Image.Resampling.BILINEAR)).name.lower(),
        "mean": tuple(processor.image_mean) if normalize else (0.0, 0.0, 0.0),
        "std": tuple(processor.image_std) if normalize else (1.0, 1.0, 1.0),
        "crop_pct": 1.0,
        "crop_mode": "squash",
        **crop,
        "label_names": [labels.get(i, labels.get(str(i), f"class {i}")) for i in range(int(config.num_labels))]
        if classes else [],
    }
