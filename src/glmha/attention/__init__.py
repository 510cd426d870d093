"""Attention variants behind one interface; see :mod:`glmha.attention.registry`."""
from .registry import FAMILIES, build_attention, get_attention_class, list_attentions, register_attention
from . import csa  # noqa: F401  (registers "csa")
from .csa import MDTA, MaskGuidedMechanism, SpectralMSA, channel_attention, shift_back_mask
from . import glmha  # noqa: F401  (registers "glmha")
from .glmha import GLMHA, SpectralGLMHA, resolve_rank
from . import baselines  # noqa: F401  (registers "linformer", "performer", "reformer")
from .convert import swap_attention

__all__ = [
    "FAMILIES",
    "GLMHA",
    "MDTA",
    "SpectralGLMHA",
    "MaskGuidedMechanism",
    "SpectralMSA",
    "build_attention",
    "channel_attention",
    "get_attention_class",
    "list_attentions",
    "register_attention",
    "shift_back_mask",
    "resolve_rank",
    "swap_attention",
]
