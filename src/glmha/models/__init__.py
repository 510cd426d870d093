"""Architectures; importing a module registers its models."""
from .registry import create_model, list_models, register_model
from . import restormer  # noqa: F401
from .restormer import Restormer

__all__ = ["Restormer", "create_model", "list_models", "register_model"]
