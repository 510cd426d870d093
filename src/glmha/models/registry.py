"""Model registry: build any model of the package from a name and keyword arguments.

Every model :func:`create_model` builds carries a :class:`ModelSpec` as ``model.spec``: the
name and arguments it was built from, so that it can be saved with them
(:func:`glmha.save_model`) and rebuilt from the file alone (:func:`glmha.load_model`).
"""
from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable

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


@dataclass
class ModelSpec:
    """How a model was built: ``create_model(name, attention, attention_kwargs, **model_kwargs)``.

    ``layers`` holds the attention layers that were changed afterwards on their own
    (:func:`glmha.analysis.eigen.apply_ranks`): ``{layer name: {"attention": ..., "attention_kwargs": {...}}}``.
    ``preset`` names the official release file the model was loaded as, if any
    (:mod:`glmha.models.presets`). Everything is plain JSON data.
    """

    name: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    attention: str = "csa"
    attention_kwargs: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    preset: str | None = None

    def to_json(self) -> str:
        fields = {"name": self.name, "model_kwargs": self.model_kwargs, "attention": self.attention,
                  "attention_kwargs": self.attention_kwargs, "layers": self.layers, "preset": self.preset}
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        """Parse :meth:`to_json`'s text; ``ValueError`` names what is wrong."""
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"model record is not valid JSON ({err.msg})") from None
        expected = {"name", "model_kwargs", "attention", "attention_kwargs", "layers", "preset"}
        if not isinstance(fields, dict) or not isinstance(fields.get("name"), str) or not set(fields) <= expected:
            raise ValueError(f"model record must be a JSON object with a 'name' and keys among {sorted(expected)}, got {text[:200]}")
        return cls(**fields)

    def build(self) -> nn.Module:
        """A new model built as this spec says (fresh weights), with its own copy of the spec."""
        model = create_model(self.name, self.attention, copy.deepcopy(self.attention_kwargs), **copy.deepcopy(self.model_kwargs))
        if self.layers:
            from ..attention.convert import swap_layer_attentions

            swap_layer_attentions(model, self.layers)
        model.spec.preset = self.preset
        return model


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
    model = builder(attention=attention, attention_kwargs=dict(attention_kwargs or {}), **model_kwargs)
    try:  # plain-data copies (tuples become lists), so the record equals what a saved file reads back
        model.spec = ModelSpec(name, json.loads(json.dumps(model_kwargs)), attention, json.loads(json.dumps(dict(attention_kwargs or {}))))
    except TypeError:  # an argument that is not plain data (e.g. a module): the model cannot describe itself
        model.spec = None
    return model
