"""vit-explain: where did the Vision Transformer look?"""
from importlib import import_module

from ._version import __version__
from .methods.table import METHODS

# Helpers beyond the method table, and the module each comes from (numpy, OpenCV and PIL, or the
# standard library, only).
_HELPERS = {"show_mask_on_image": ".io.figures", "keep_freed_memory": ".io.allocator"}

# Every explainer of the method table, what they return, and the helpers; imported on first use,
# so that `vit-explain --help` and usage errors answer without importing torch.
__all__ = sorted({spec.class_name for spec in METHODS.values()} | {"Explanation"} | set(_HELPERS)) + ["__version__"]


def __getattr__(name: str):
    if name in _HELPERS:
        return getattr(import_module(_HELPERS[name], __name__), name)
    if name in __all__:
        from . import methods
        return getattr(methods, name)
    raise AttributeError(f"module 'vit_explain' has no attribute {name!r}")
