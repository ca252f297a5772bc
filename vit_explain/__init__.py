"""vit-explain: where did the Vision Transformer look?"""
from ._version import __version__
from .methods.table import METHODS

# Every explainer of the method table, and what they return; imported on first use, so that
# `vit-explain --help` and usage errors answer without importing torch.
__all__ = sorted({spec.class_name for spec in METHODS.values()} | {"Explanation"}) + ["__version__"]


def __getattr__(name: str):
    if name in __all__:
        from . import methods
        return getattr(methods, name)
    raise AttributeError(f"module 'vit_explain' has no attribute {name!r}")
