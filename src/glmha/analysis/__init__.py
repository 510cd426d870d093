"""Analysis tools: model size and the attention eigen-analysis."""
from .complexity import LayerCost, attention_cost, attention_sweep, measure_attention
from .eigen import apply_ranks, attention_spectra, capture_attention_maps, suggest_ranks
from .profile import Profile, count_parameters, profile

__all__ = [
    "apply_ranks",
    "attention_spectra",
    "capture_attention_maps",
    "suggest_ranks",
    "LayerCost",
    "attention_cost",
    "attention_sweep",
    "measure_attention",
    "Profile",
    "count_parameters",
    "profile",
]
