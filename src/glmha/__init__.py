"""glmha: guided low-rank multi-head attention for image restoration and spectral reconstruction.

Public entry points::

    import glmha
    model = glmha.create_model("restormer", attention="csa")  # official layout
    glmha.save_model(model, "model.safetensors")              # self-describing file
    model = glmha.load_model("model.safetensors")             # or an official file: preset="deraining"
    glmha.list_models()
"""
from ._version import __version__
from .analysis import Profile, profile
from .attention import list_attentions, swap_attention
from .models.checkpoint import CheckpointError, load_checkpoint, load_model, read_state_dict, save_model, save_weights
from .inference.fast import FastModel, optimize
from .inference.restoration import restore
from .models import create_model, list_models
from .models.presets import list_presets
from .validation import InputError

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
