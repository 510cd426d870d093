"""Architectures; importing a module registers its models."""
from .registry import create_model, list_models, register_model
from . import restormer  # noqa: F401
from .restormer import Restormer
from . import mst, mst_plus_plus, mst_real  # noqa: F401
from .mst import MST
from .mst_plus_plus import MSTPlusPlus
from .mst_real import RealMST

__all__ = ["MST", "MSTPlusPlus", "RealMST", "Restormer", "create_model", "list_models", "register_model"]
