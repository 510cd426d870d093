"""Analysis tools: model size and the attention eigen-analysis."""
from .complexity import LayerCost, attention_cost, attention_sweep, measure_attention
from .profile import Profile, count_parameters, profile

__all__ = [
    "LayerCost",
    "attention_cost",
    "attention_sweep",
    "measure_attention",
    "Profile",
    "count_parameters",
    "profile",
]
