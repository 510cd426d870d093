"""glmha: guided low-rank multi-head attention for image restoration and spectral reconstruction.

Public entry points::

    import glmha
    model = glmha.create_model("restormer", attention="csa")  # official layout
    glmha.save_model(model, "model.safetensors")              # self-describing file
    model = glmha.load_model("model.safetensors")             # or an official file: preset="deraining"
    glmha.list_models()

The names are imported on first use (PEP 562): ``import glmha`` and ``glmha --help`` do not
wait for PyTorch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .analysis import Profile, profile
    from .attention import list_attentions, swap_attention
    from .inference.fast import FastModel, optimize
    from .inference.restoration import restore
    from .models import create_model, list_models
    from .models.checkpoint import CheckpointError, load_checkpoint, load_model, read_state_dict, save_model, save_weights
    from .models.presets import list_presets
    from .validation import InputError

# public name -> the module that defines it
_SOURCES = {
    "Profile": ".analysis", "profile": ".analysis",
    "list_attentions": ".attention", "swap_attention": ".attention",
    "CheckpointError": ".models.checkpoint", "load_checkpoint": ".models.checkpoint", "load_model": ".models.checkpoint",
    "read_state_dict": ".models.checkpoint", "save_model": ".models.checkpoint", "save_weights": ".models.checkpoint",
    "FastModel": ".inference.fast", "optimize": ".inference.fast",
    "restore": ".inference.restoration",
    "create_model": ".models", "list_models": ".models",
    "list_presets": ".models.presets",
    "InputError": ".validation",
}
# sub-packages reachable as attributes after a bare ``import glmha`` (as when they were imported eagerly)
_SUBPACKAGES = ("analysis", "attention", "data", "engine", "experiments", "inference", "io", "metrics", "models", "validation")

__all__ = [
    "CheckpointError",
    "FastModel",
    "InputError",
    "Profile",
    "create_model",
    "list_attentions",
    "list_models",
    "load_checkpoint",
    "load_model",
    "list_presets",
    "optimize",
    "profile",
    "read_state_dict",
    "restore",
    "save_model",
    "save_weights",
    "swap_attention",
]


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        value = getattr(importlib.import_module(_SOURCES[name], __name__), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBPACKAGES})
