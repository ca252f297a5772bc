"""vit-explain: where did the Vision Transformer look?"""
from ._version import __version__

__all__ = ["Explanation", "VITAttentionFlow", "VITAttentionGradRollout", "VITAttentionRollout", "VITGradCAM",
           "VITGradWeightedAttention", "VITRawAttention", "__version__"]


def __getattr__(name: str):
    # Lazy: `vit-explain --help` and usage errors answer without importing torch.
    if name in __all__:
        from . import methods
        return getattr(methods, name)
    raise AttributeError(f"module 'vit_explain' has no attribute {name!r}")
