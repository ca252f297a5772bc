"""Record the attention of a Hugging Face transformers model (the optional `hf` extra).

transformers is never imported here: the model brings it. The recorder

* switches the attention implementation to "eager" for the call (SDPA / flash attention
  return no attention weights): `model.set_attn_implementation("eager")` where it exists
  (transformers >= 4.48), else `config._attn_implementation = "eager"`; afterwards every
  config it touched gets its own `_attn_implementation` back;
* runs `model(pixel_values=x, output_attentions=True, return_dict=True)`: `outputs.attentions`
  holds one post-softmax (B, H, N, N) tensor per layer, in layer order, and these are the very
  tensors multiplied with the values, so `torch.autograd.grad(score, attentions)` is dL/dA;
* removes what transformers >= 5 installs on first use of `output_attentions` (forward hooks
  on the attention and layer modules, and the `_output_capturing_hooks_installed` flag), so
  the model comes back without them, as it came.

Training flags and requires_grad are handled as for timm models.
"""
from __future__ import annotations

import torch
from torch import nn

from .multihead import MultiheadAttentionRecorder
from .session import HookSnapshot, RecordingSession

# Set by transformers >= 5 on (sub)models once its output-capturing hooks are installed.
HF_HOOK_FLAGS = ("_output_capturing_hooks_installed",)
EAGER = "eager"


def is_huggingface_model(model: nn.Module) -> bool:
    """Whether the model is a transformers model (by its classes' module, so transformers need
    not be importable for a timm model)."""
    return any(cls.__module__.split(".")[0] == "transformers" for cls in type(model).__mro__)


def _configs(model: nn.Module) -> list:
    """Every distinct transformers config reachable from the model's modules, sub-configs included."""
    found, seen = [], set()
    stack = [getattr(m, "config", None) for m in model.modules()]
    while stack:
        config = stack.pop()
        if config is None or id(config) in seen or not hasattr(config, "_attn_implementation"):
            continue
        seen.add(id(config))
        found.append(config)
        for key in getattr(config, "sub_configs", None) or ():
            stack.append(getattr(config, key, None))
    return found


class AttnImplementation:
    """Switch every config of the model to eager attention; restore() puts each one back."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._saved: list[tuple[object, str, bool, object]] = []

    def save(self) -> None:
        for config in _configs(self.model):
            # transformers >= 4.36 stores it as _attn_implementation_internal behind a property
            attribute = "_attn_implementation_internal" if "_attn_implementation_internal" in vars(config) \
                else "_attn_implementation"
            present = attribute in vars(config)
            self._saved.append((config, attribute, present, vars(config).get(attribute)))
        if all(config._attn_implementation == EAGER for config, *_ in self._saved):
            return
        setter = getattr(self.model, "set_attn_implementation", None)
        if callable(setter):
            setter(EAGER)
        for config, *_ in self._saved:
            if config._attn_implementation != EAGER:
                config._attn_implementation = EAGER

    def restore(self) -> None:
        # The stored attribute itself: the public setter would recurse into sub-configs.
        for config, attribute, present, value in reversed(self._saved):
            if present:
                vars(config)[attribute] = value
            else:
                vars(config).pop(attribute, None)
        self._saved = []


class HuggingFaceAttentionRecorder(RecordingSession):
    """Context manager: `with HuggingFaceAttentionRecorder(model, gradients=True) as rec: logits = rec.forward(x)`.

    rec.attentions holds one (B, H, N, N) post-softmax tensor per layer, in layer order;
    rec.attention_gradients(logits, targets) returns dL/dA for each, keyed by layer.
    `interpolate_pos_encoding=True` is passed to the model (ViT-style models: inputs of other
    sizes than config.image_size).
    """

    def __init__(self, model: nn.Module, gradients: bool = False, interpolate_pos_encoding: bool = False,
                 reduce=None, call=None, pool: nn.Module | None = None):
        """call(x, **kwargs) -> (scores, attentions), for models whose output is not `.logits`
        (CLIP, SigLIP, DINOv2): kwargs are the ones the recorder asks the vision tower for. pool: an
        nn.MultiheadAttention that pools the last tokens (SigLIP's head), recorded as `readout`."""
        if not is_huggingface_model(model):
            raise ValueError(f"{type(model).__name__} is not a Hugging Face transformers model")
        super().__init__(model, gradients=gradients, reduce=reduce)
        self.interpolate_pos_encoding = interpolate_pos_encoding
        self.outputs_of = call or self._classifier_outputs
        self.pool = None if pool is None else MultiheadAttentionRecorder(pool, gradients=gradients)
        self.attentions: list[torch.Tensor] = []
        self._hooks = HookSnapshot(model, HF_HOOK_FLAGS)
        self._attn = AttnImplementation(model)

    def install(self) -> None:
        self._hooks.save()
        self._attn.save()
        if self.pool is not None:
            self.pool.__enter__()

    def _restore(self) -> None:
        if self.pool is not None:
            self.pool.__exit__(None, None, None)
        self._attn.restore()
        super()._restore()
        self._hooks.restore()  # transformers adds hooks of its own on the first output_attentions call

    def _classifier_outputs(self, x: torch.Tensor, **kwargs):
        outputs = self.model(pixel_values=x, **kwargs)
        return outputs.logits, getattr(outputs, "attentions", None)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        kwargs = {"output_attentions": True, "return_dict": True}
        if self.interpolate_pos_encoding:
            kwargs["interpolate_pos_encoding"] = True
        scores, attentions = self.outputs_of(x, **kwargs)
        if not attentions or any(a is None for a in attentions):
            raise RuntimeError(f"{type(self.model).__name__} returned no attention weights with "
                               "output_attentions=True and eager attention")
        self.attentions = [self.reduced(a) for a in attentions]
        return scores

    @property
    def readout(self) -> torch.Tensor | None:
        """(B, 1, N) the pooling attention's row, heads averaged (with a pool)."""
        if self.pool is None or not self.pool.attentions:
            return None
        return self.pool.attentions[-1].mean(dim=1)[:, :1]

    @property
    def pool_attentions(self) -> list[torch.Tensor]:
        """(B, H, 1, N) of every call of the pool, in order (the model's own call last)."""
        return [] if self.pool is None else self.pool.attentions

    def reset(self) -> None:
        self.attentions = []
        if self.pool is not None:
            self.pool.reset()

    def attention_gradients(self, logits: torch.Tensor, targets) -> list[torch.Tensor]:
        """dL/dA for every layer's attention, keyed by layer; L = sum of each sample's target logit."""
        return self.gradients_wrt(logits, targets, self.attentions)
