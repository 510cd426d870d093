"""Analysis tools: model size and the attention eigen-analysis."""
from .profile import Profile, count_parameters, profile

__all__ = ["Profile", "count_parameters", "profile"]
