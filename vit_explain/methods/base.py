"""What every explainer shares: the adapter, input checks, the explained class, mask shaping.

What differs between architectures (input sizes, how to call the model, how attention is
recorded, prefix tokens, pooling, grid) is asked of the explainer's `adapter` (see
`adapters/`), chosen per model; what differs between methods is one `relevance` function.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..math import check_discard_ratio, check_head_fusion, readout_rows, scale_to_max, tokens_to_grid
from ..recording import DEFAULT_ATTENTION_LAYER, LayerError, RecordingSession, resolve_targets
from .adapters import Adapter, TokenLayout, adapter_for
from .targets import explains_targets

COMPAT_MODES = (None, "vit-explain")


@dataclass
class Explanation:
    """Where the model looked for a batch of images, and what it was explaining.

    masks:      (B, gh, gw) float32 over the patch grid, each map scaled so its maximum is 1 (an
                all-zero map stays 0)
    logits:     (B, num_classes) the model's output for the input
    targets:    (B,) long, the class each mask explains (the predicted class where none was given;
                class-agnostic methods report the predicted class), or the prompt / reference
                column for a prompt or reference target; None where no class is explained nor
                predicted: a class-agnostic method (rollout, raw attention, flow) on a model
                without classes (CLIP, DINOv2) called without a target, whose `logits` are then
                the image embedding
    head_masks: (B, heads, gh, gw) float32, one map per attention head, each scaled to its own
                maximum, for methods that show heads (raw attention); None otherwise

    Filled only by `explain(x, per_layer=True)`, for methods with per-block maps (None otherwise):
    layer_masks:      (B, L, gh, gw) float32, one map per block, scaled like `masks`: rollout and
                      gradient rollout up to and including each block (the last equals `masks` to
                      float rounding), Grad-SAM summed up to each block, LeGrad's and raw
                      attention's own map of each block
    layer_blocks:     the block index of each of those L maps (forward order)
    layer_head_masks: (B, L, heads, gh, gw) float32, per block and head, each scaled to its own
                      maximum (raw attention: the DINO view of every block)

    Filled only by methods whose relevance is signed (CP-LRP; None and False otherwise):
    pixel_relevance: (B, H, W) signed relevance of every input pixel (the model's input size),
                     summed over the colour channels, unscaled (CP-LRP: in units of the explained
                     logit); float32 (float64 for a float64 model)
    patch_relevance: (B, gh, gw) the same summed over each patch, signed and unscaled; `masks` is
                     then its positive part scaled to a maximum of 1
    signed:          True when pixel_relevance / patch_relevance hold signed relevance (negative:
                     evidence against the explained class); draw them with `relevance_overlays`

    In a notebook, `overlays(images)`, `figure(images)` and `show(images)` draw the masks over
    the images; the explanation itself displays as its masks (`_repr_png_`).
    """
    masks: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    head_masks: torch.Tensor | None = None
    layer_masks: torch.Tensor | None = None
    layer_blocks: list[int] | None = None
    layer_head_masks: torch.Tensor | None = None
    pixel_relevance: torch.Tensor | None = None
    patch_relevance: torch.Tensor | None = None
    signed: bool = False

    def overlays(self, images, boxes=None, colormap: str = "jet", alpha: float = 0.5) -> list[np.ndarray]:
        """Each mask over its image at the image's own resolution: a list of B RGB uint8 arrays.

        images: one per mask (a single image for a batch of one): PIL images, (H, W, 3) or (H, W)
        arrays (uint8, or floats in [0, 1]), file paths, or the model's input tensor (B, 3, H, W)
        (each image's values stretched to [0, 255] for display). boxes: per image the part of it
        the model saw, (x0, y0, x1, y1) in its pixels; None: all of it (pass
        `vit_explain.io.preprocess.Preprocessor(model).visible_box(w, h)` for a model whose
        preprocessing crops). Signed maps (negative values) get a diverging colormap with a
        symmetric scale, whatever `colormap` says.
        """
        from ..io.figures import as_images, show_mask_on_image  # drawing is I/O's (numpy, OpenCV, PIL)
        pictures = as_images(images, len(self.masks))
        boxes = [None] * len(pictures) if boxes is None else list(boxes)
        return [show_mask_on_image(picture, mask, box, colormap, alpha)
                for picture, mask, box in zip(pictures, self._numpy("masks"), boxes, strict=True)]

    def relevance_overlays(self, images, boxes=None, alpha: float = 0.5, level: str = "pixel") -> list[np.ndarray]:
        """The signed relevance over each image on the diverging blue-white-red colormap, symmetric
        around 0 (white), each image scaled by its own largest magnitude: a list of B RGB uint8
        arrays. level: "pixel" (`pixel_relevance`) or "patch" (`patch_relevance`). images and boxes
        as for `overlays`. ValueError for an explanation without signed relevance."""
        from ..io.figures import as_images, show_mask_on_image
        name = {"pixel": "pixel_relevance", "patch": "patch_relevance"}.get(level)
        if name is None:
            raise ValueError(f"level must be 'pixel' or 'patch'; got {level!r}")
        if getattr(self, name) is None:
            raise ValueError(f"this explanation has no {name} (only signed methods such as cp-lrp fill it)")
        pictures = as_images(images, len(self.masks))
        boxes = [None] * len(pictures) if boxes is None else list(boxes)
        return [show_mask_on_image(picture, relevance, box, alpha=alpha, signed=True)
                for picture, relevance, box in zip(pictures, self._numpy(name), boxes, strict=True)]

    def figure(self, images=None, boxes=None, labels=None, title: str | None = None, colormap: str = "jet",
               alpha: float = 0.5, limit: int | None = None) -> np.ndarray:
        """One labelled RGB picture: per image its overlay (or, without images, the mask alone) headed
        by the explained class and its probability, with a colour bar. labels: class names (a list,
        or a dict from index), else "class N". limit: draw only the first images of the batch."""
        from ..io.figures import as_images, class_caption, explanation_figure
        pictures = None if images is None else as_images(images, len(self.masks))
        count = len(self.masks) if limit is None else max(1, min(int(limit), len(self.masks)))
        probabilities = self.logits.detach().float().softmax(-1).cpu()
        if self.targets is None:  # a model without classes, explained without a target
            captions = ["no class (embedding)"] * count
        else:
            captions = [class_caption(target, float(probabilities[i, target]), labels)
                        for i, target in enumerate(self.targets.tolist()[:count])]
        if title is None and count < len(self.masks):
            title = f"explanation: the first {count} of {len(self.masks)} images"
        return explanation_figure(self._numpy("masks")[:count], captions, None if pictures is None else pictures[:count],
                                  None if boxes is None else list(boxes)[:count], title=title, colormap=colormap,
                                  alpha=alpha)

    def show(self, images=None, **options):
        """`figure(images, **options)` as a PIL image, which a notebook displays."""
        from PIL import Image
        return Image.fromarray(self.figure(images, **options))

    def _repr_png_(self) -> bytes:
        """Jupyter shows an explanation as its masks, labelled (the first 12 of a larger batch)."""
        from ..io.figures import png_bytes
        return png_bytes(self.figure(limit=12))

    def _numpy(self, name: str) -> np.ndarray:
        return getattr(self, name).detach().float().cpu().numpy()


class Explainer:
    """Base of every explainer: `explain(x, category_index) -> Explanation`, and `__call__`
    giving a float32 numpy mask, (gh, gw) for a batch of one, (B, gh, gw) otherwise."""

    has_layer_maps = False       # explain(x, per_layer=True) fills Explanation.layer_masks
    has_layer_head_maps = False  # ... and Explanation.layer_head_masks

    def __init_subclass__(cls, **kwargs):
        # Every method's explain takes target= (a class, Prompt or Reference; see targets.py) without
        # knowing about it: the target sets the adapter's scorer around the method's own explain.
        super().__init_subclass__(**kwargs)
        explain = cls.__dict__.get("explain")
        if explain is not None and not getattr(explain, "explains_targets", False):
            cls.explain = explains_targets(explain)

    def __init__(self, model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER):
        if not isinstance(attention_layer_name, str) or not attention_layer_name:
            raise LayerError(f"attention_layer_name must be a module name (a non-empty str); "
                             f"got {attention_layer_name!r}")
        # picks the model family (adapters/); fails at construction, not at the first call
        self.adapter: Adapter = adapter_for(model, attention_layer_name)
        self.model = model

    def explain(self, input_tensor: torch.Tensor, category_index=None, per_layer: bool = False) -> Explanation:
        """per_layer: also fill `layer_masks` (and `layer_head_masks`) where the method has per-block maps."""
        raise NotImplementedError

    def model_input(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """The checked input on the model's device, in its dtype. ValueError for an input the model
        cannot take, and for NaN or infinite values, in the input or after the cast to the model's
        dtype (1e5 overflows float16): they would come back as NaN masks without a word."""
        self.adapter.check_input(input_tensor)
        param = next(self.model.parameters(), None)
        x = input_tensor if param is None else input_tensor.to(device=param.device, dtype=param.dtype)
        # a sum is NaN or infinite when any value is (one cheap reduction; isfinite(x).all() costs a
        # bool copy of the input): only then is every value checked, and an overflowing sum of
        # finite values passes that check
        total = x.sum(dtype=torch.float32) if x.is_floating_point() and x.element_size() < 4 else x.sum()
        if not bool(torch.isfinite(total)) and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(input_tensor)).sum())
            if bad:
                raise ValueError(f"the input holds {bad} NaN or infinite values (of {input_tensor.numel()}); "
                                 "explanations of it would be NaN")
            raise ValueError(f"the input has values beyond the range of the model's dtype {x.dtype} "
                             f"(largest {torch.finfo(x.dtype).max:g})")
        return x

    def __call__(self, input_tensor: torch.Tensor, category_index=None, target=None) -> np.ndarray:
        """float32 numpy mask: (gh, gw) for a batch of one, (B, gh, gw) otherwise. target: a class,
        `Prompt(...)` or `Reference(...)` (vit_explain.methods.targets)."""
        masks = self.explain(input_tensor, category_index, target=target).masks.cpu().numpy()
        return masks[0] if masks.shape[0] == 1 else masks


class Recording(NamedTuple):
    """What one forward (and backward) left for the relevance math (a tuple: its first five items
    are the 5-tuple record() returned before it had names)."""
    attentions: list        # per block, what block_reduction() made of (B, H, N, N), or the attention
    gradients: list | None  # per block dL/dA (or what gradients_of() takes), for gradient methods
    logits: torch.Tensor
    targets: torch.Tensor
    layout: TokenLayout
    taps: dict | None = None  # name -> per-block tensors, for methods that record more (TapRecorder)


class AttentionExplainer(Explainer):
    """Base of the attention methods: subclasses define `needs_gradients` and `relevance`, and
    may define `block_reduction` and `head_relevance`."""

    needs_gradients = False

    def __init__(self, model: nn.Module, attention_layer_name: str = DEFAULT_ATTENTION_LAYER,
                 head_fusion: str = "mean", discard_ratio: float = 0.9, compat: str | None = None):
        check_head_fusion(head_fusion)
        check_discard_ratio(discard_ratio)
        if not (compat is None or (isinstance(compat, str) and compat in COMPAT_MODES)):
            raise ValueError(f"compat must be None or 'vit-explain'; got {compat!r}")
        super().__init__(model, attention_layer_name)
        self.adapter.check_attention()
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)
        self.compat = compat

    def relevance(self, attentions, gradients, layout: TokenLayout) -> torch.Tensor:
        """(B, N) relevance of every input token for the explained output. `attentions` holds
        what `block_reduction()` made of each block's attention (the attention itself by default)."""
        raise NotImplementedError

    def head_relevance(self, attentions, layout: TokenLayout) -> torch.Tensor | None:
        """(B, H, N) relevance per attention head, for methods that show heads; None otherwise."""
        return None

    @property
    def has_layer_maps(self) -> bool:
        return type(self).layer_relevance is not AttentionExplainer.layer_relevance

    @property
    def has_layer_head_maps(self) -> bool:
        return type(self).layer_head_relevance is not AttentionExplainer.layer_head_relevance

    def layer_relevance(self, attentions, gradients, layout: TokenLayout) -> torch.Tensor | None:
        """(B, L, N) relevance per block (`Explanation.layer_masks`), for methods with per-block
        maps; None otherwise. Called only when `explain(x, per_layer=True)` asks."""
        return None

    def layer_head_relevance(self, attentions, layout: TokenLayout) -> torch.Tensor | None:
        """(B, L, H, N) relevance per block and head, for methods that show heads; None otherwise."""
        return None

    def block_reduction(self):
        """None, or a function applied to each block's (B, H, N, N) attention as it is recorded
        (methods without gradients only), when `relevance` needs less than every head."""
        return None

    def recorder(self, reduce=None) -> RecordingSession:
        """The recording session of one call: the adapter's attention recorder (methods that read
        more than the attention wrap it in a `vit_explain.recording.TapRecorder`)."""
        return self.adapter.recorder(gradients=self.needs_gradients, reduce=reduce)

    def gradients_of(self, rec: RecordingSession, logits: torch.Tensor, targets: torch.Tensor) -> list:
        """The gradients a gradient method weights, one per block: dL/dA, L the explained logit."""
        return rec.attention_gradients(logits, targets)

    def record(self, input_tensor: torch.Tensor, category_index=None, reduce=None) -> Recording:
        """Run the model once (and backward for gradient methods). With `reduce` (no gradients),
        each block's attention is kept only as reduce(attention). Every gradient method passes
        here, so here it is refused when no gradient reaches the attention (`check_gradients_flow`)."""
        x = self.model_input(input_tensor)
        with self.recorder(reduce) as rec:
            logits = rec.forward(x)
            targets = resolve_targets(logits, category_index)
            gradients = None
            if self.needs_gradients:
                gradients = [g.detach() for g in self.gradients_of(rec, logits, targets)]
                check_gradients_flow(self.model, gradients)
            attentions = [a.detach() for a in rec.attentions]
            readout = pool_readout(rec)
            tapped = getattr(rec, "tapped", None)
            taps = None if tapped is None else {name: [t.detach() for t in items] for name, items in tapped.items()}
        check_attention_shapes(self.model, attentions, x.shape[0])
        layout = self.adapter.layout(tuple(x.shape[-2:]), attentions[0].shape[-1])
        if readout is not None:
            layout = dataclasses.replace(layout, pooling="map", readout=readout)
        if self.compat:
            layout = TokenLayout(1, "token", layout.grid)  # the original read R[0, 0, 1:]
        return Recording(attentions, gradients, logits.detach(), targets, layout, taps)

    def relevance_of(self, rec: Recording) -> torch.Tensor:
        """(B, N) relevance from one recording; methods that read its taps override this."""
        return self.relevance(rec.attentions, rec.gradients, rec.layout)

    shared = None  # a methods.sharing.SharedRecording when a multi-method run shares the model's run

    def explain(self, input_tensor: torch.Tensor, category_index=None, per_layer: bool = False) -> Explanation:
        if self.shared is not None:
            rec = self.shared.record(self, input_tensor, category_index)
        else:
            rec = self.record(input_tensor, category_index, reduce=self.block_reduction())
        layout = rec.layout
        # Under a caller's autocast only the model runs in low precision; the relevance math
        # stays in the attention's own dtype.
        with torch.no_grad(), torch.autocast(rec.attentions[0].device.type, enabled=False):
            relevance = self.relevance_of(rec)
            masks = scale_to_max(tokens_to_grid(relevance, layout.num_prefix, layout.grid).float())
            heads = self.head_relevance(rec.attentions, layout)
            if heads is not None:
                heads = scale_to_max(tokens_to_grid(heads, layout.num_prefix, layout.grid).float())
            layers = self.layer_maps_of(rec.attentions, rec.gradients, layout) if per_layer else (None, None, None)
        return Explanation(masks, rec.logits, rec.targets, heads, *layers)

    def layer_maps_of(self, attentions, gradients, layout: TokenLayout) -> tuple:
        """(layer_masks, layer_blocks, layer_head_masks) for `Explanation`, scaled like masks."""
        layers, heads = self.layer_relevance(attentions, gradients, layout), self.layer_head_relevance(attentions, layout)
        if layers is not None:
            layers = scale_to_max(tokens_to_grid(layers, layout.num_prefix, layout.grid).float())
        if heads is not None:
            heads = scale_to_max(tokens_to_grid(heads, layout.num_prefix, layout.grid).float())
        count = next((t.shape[1] for t in (layers, heads) if t is not None), None)
        return layers, None if count is None else list(range(count)), heads

    def attention_block_count(self) -> int:
        return self.adapter.block_count()


def pool_readout(rec) -> torch.Tensor | None:
    """The attention pool's (B, 1, N) weights where the recorder (or the one it wraps) recorded them."""
    while rec is not None:
        readout = getattr(rec, "readout", None)
        if readout is not None:
            return readout.detach()
        rec = getattr(rec, "attention", None)
    return None


def readout_for(attentions, layout: TokenLayout) -> torch.Tensor:
    """(B, 1, N) rows the classifier reads, in the attention's dtype and device."""
    if layout.readout is not None:  # an attention pool's recorded weights
        return layout.readout.to(dtype=attentions[0].dtype, device=attentions[0].device)
    batch, n = attentions[0].shape[0], attentions[0].shape[-1]
    return readout_rows(batch, n, layout.num_prefix, layout.pooling,
                        dtype=attentions[0].dtype, device=attentions[0].device)


def check_gradients_flow(model: nn.Module, gradients, layer: str | None = None) -> None:
    """ValueError when, for some sample, every gradient given is zero: its map would be all zero
    without a word. (A NaN is not zero: non-finite gradients are not this case.) The gradients are
    of every block's attention, or of the one `layer` named (Grad-CAM's target layer)."""
    if not gradients:
        return
    reached = torch.stack([(g != 0).flatten(1).any(dim=1) for g in gradients]).any(dim=0)
    if not bool(reached.all()):
        samples = (~reached).nonzero().flatten().tolist()
        where, which, changed = ((f"layer {layer} of", "that layer's", "its output was changed") if layer is not None
                                 else ("the attention of", "every block's", "the attention was changed"))
        raise ValueError(
            f"no gradient of the explained score reaches {where} {type(model).__name__} "
            f"(sample{'s' if len(samples) > 1 else ''} {', '.join(map(str, samples))} of the batch): {which} "
            "gradient is zero, so the map would be all zero. Either the score does not depend on it "
            f"(the model's output ignores the tokens, or the explained target), or {changed} "
            "(e.g. patched by another library) so that the recorded values are not the ones the output is "
            "computed from")


def check_attention_shapes(model: nn.Module, attentions, batch: int) -> None:
    for index, attention in enumerate(attentions):
        # (B, H, N, N), or (B, N, N) once a block_reduction fused the heads
        if attention.ndim not in (3, 4) or attention.shape[-1] != attention.shape[-2] or attention.shape[0] != batch:
            raise ValueError(
                f"attention of block {index} of {type(model).__name__} has shape {tuple(attention.shape)}; "
                f"rollout needs (B={batch}, heads, N, N) in every block (windowed attention such as "
                "Swin's has no rollout)"
            )
    sizes = {a.shape[-1] for a in attentions}
    if len(sizes) > 1:
        raise ValueError(
            f"the blocks of {type(model).__name__} attend over different token counts {sorted(sizes)}; "
            "rollout needs the same tokens in every block"
        )
