"""Attention variants behind one interface; see :mod:`glmha.attention.registry`."""
from .registry import FAMILIES, build_attention, get_attention_class, list_attentions, register_attention
from . import csa  # noqa: F401  (registers "csa")
from .csa import MDTA, channel_attention

__all__ = [
    "FAMILIES",
    "MDTA",
    "build_attention",
    "channel_attention",
    "get_attention_class",
    "list_attentions",
    "register_attention",
]
