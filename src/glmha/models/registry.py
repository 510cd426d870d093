"""Model registry: build any model of the package from a name and keyword arguments."""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder ``fn(attention=..., attention_kwargs=..., **model_kwargs) -> nn.Module``."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_MODELS)


def create_model(
    name: str,
    attention: str = "csa",
    attention_kwargs: dict | None = None,
    **model_kwargs,
) -> nn.Module:
    """Build model ``name`` with the attention ``attention`` ("csa" is the official one).

    ``attention_kwargs`` go to every attention module (e.g. ``{"rank_ratio": 0.5}``);
    ``model_kwargs`` are the architecture's own constructor arguments.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    builder = _MODELS[name]
    params = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(model_kwargs) - set(params))
        if unknown:
            accepted = [p for p in params if p not in ("attention", "attention_kwargs")]
            raise TypeError(f"model {name!r} got unknown arguments {unknown}; it accepts {accepted}")
    return builder(attention=attention, attention_kwargs=dict(attention_kwargs or {}), **model_kwargs)
