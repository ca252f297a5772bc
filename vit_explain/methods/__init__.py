"""The methods room: public explainer classes joining recording and math, and architecture adapters.

The explainer classes are listed once, in the method table (`table.py`), and imported on first
use: importing this package (or the table) does not import torch.
"""
from importlib import import_module

from .table import METHODS

_EXPLAINERS = {spec.class_name: spec for spec in METHODS.values()}
_OTHERS = {"AttentionExplainer": ".base", "Explainer": ".base", "Explanation": ".base",
           "TokenLayout": ".adapters", "adapter_for": ".adapters", "token_layout": ".adapters"}

__all__ = sorted([*_EXPLAINERS, *_OTHERS, "METHODS"])


def __getattr__(name: str):
    if name in _EXPLAINERS:
        return _EXPLAINERS[name].load()
    if name in _OTHERS:
        return getattr(import_module(_OTHERS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
