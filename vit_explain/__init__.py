"""vit-explain: where did the Vision Transformer look?"""
from .methods import Explanation, VITAttentionGradRollout, VITAttentionRollout

__version__ = "0.1.0"

__all__ = ["Explanation", "VITAttentionGradRollout", "VITAttentionRollout", "__version__"]
