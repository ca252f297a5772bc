"""The methods room: public explainer classes joining recording and math, and architecture adapters."""
from .attention import VITGradWeightedAttention, VITRawAttention
from .base import AttentionExplainer, Explanation
from .flow import VITAttentionFlow
from .gradcam import VITGradCAM
from .layout import TokenLayout, token_layout
from .rollout import VITAttentionGradRollout, VITAttentionRollout

__all__ = ["AttentionExplainer", "Explanation", "TokenLayout", "VITAttentionFlow", "VITAttentionGradRollout",
           "VITAttentionRollout", "VITGradCAM", "VITGradWeightedAttention", "VITRawAttention", "token_layout"]
