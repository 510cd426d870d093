"""Attention registry.

Every attention variant is registered under a name (``"csa"``, ``"glmha"``, ...) and a
*family*, the block layout it plugs into:

- ``"mdta"``: Restormer's transformer block. Built as ``cls(dim, num_heads, bias, **kwargs)``;
  ``forward(x)`` maps ``B x C x H x W`` to ``B x C x H x W``.
- ``"smsa"``: MST / MST++'s spectral-wise MSA. Built as
  ``cls(dim, num_heads, dim_head, mask_guided=False, **kwargs)``; ``forward(x, mask=None)``
  maps ``B x H x W x C`` (channels last, as the official code) to the same shape; ``mask``
  (``B x H x W x C``) is the mask-guided input of MST, unused by MST++.

A block asks the registry for ``(name, family)`` and never cares which class it gets.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

FAMILIES = ("mdta", "smsa")

_ATTENTIONS: dict[tuple[str, str], type[nn.Module]] = {}


def register_attention(name: str, family: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: register an attention module under ``name`` for ``family``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown attention family {family!r}; expected one of {FAMILIES}")

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        key = (name, family)
        if key in _ATTENTIONS and _ATTENTIONS[key] is not cls:
            raise ValueError(f"attention {name!r} is already registered for family {family!r}")
        _ATTENTIONS[key] = cls
        return cls

    return decorator


def list_attentions(family: str | None = None) -> list[str]:
    """Names of the registered attentions (for one family, or for any)."""
    return sorted({name for name, fam in _ATTENTIONS if family is None or fam == family})


def get_attention_class(name: str, family: str) -> type[nn.Module]:
    try:
        return _ATTENTIONS[(name, family)]
    except KeyError:
        raise ValueError(
            f"unknown attention {name!r} for {family!r} blocks; available: {list_attentions(family)}"
        ) from None


def build_attention(name: str, family: str, **kwargs) -> nn.Module:
    """Build the attention ``name`` of ``family`` with the block's arguments and its options."""
    cls = get_attention_class(name, family)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"attention {name!r} ({family}) does not accept these arguments: {err}") from None
