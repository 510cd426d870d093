"""Starting a new run from given weights (``train.init_from``): fine-tuning.

The source is an official release file (``.pth``, any layout :func:`glmha.models.checkpoint.read_state_dict`
reads), or this project's weights file or run folder. Tensors load where name and shape
match the model; the rest of the model keeps its own initialisation ("new"), and source
tensors without a place are "dropped". A CSA source (official files are CSA) into a GLMHA
model is converted first with ``swap_attention(..., init="svd")``, so the GLMHA attentions
start from the CSA ones.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..attention.convert import _attention_family, swap_attention
from ..models.checkpoint import CheckpointError, read_model_spec, read_state_dict, resolve_checkpoint


@dataclass
class InitReport:
    """Which tensors of the model came from ``source``, which kept their initialisation, which source tensors were unused."""

    source: Path
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    conversion: str | None = None  # e.g. "CSA -> GLMHA by SVD"

    def summary(self) -> str:
        def names(items: list[str]) -> str:
            shown = ", ".join(items[:4]) + (", ..." if len(items) > 4 else "")
            return f"{len(items)}" + (f" ({shown})" if items else "")

        how = f" ({self.conversion})" if self.conversion else ""
        return (f"initialised from {self.source}{how}: {len(self.loaded)} of {len(self.loaded) + len(self.new)} tensors loaded; "
                f"new (initialised): {names(self.new)}; dropped: {names(self.dropped)}")

    def to_dict(self) -> dict:
        return {"source": str(self.source), "conversion": self.conversion, "loaded": self.loaded, "new": self.new, "dropped": self.dropped}


def _fitting(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}


def _svd_converted(spec, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str], set[str]]:
    """The source's CSA model converted to ``spec``'s GLMHA by SVD: (its state, source keys used, target keys from the source)."""
    from ..models.registry import ModelSpec

    csa = ModelSpec(spec.name, copy.deepcopy(spec.model_kwargs), "csa", {}).build()
    own = csa.state_dict()
    fitted = _fitting(own, state)
    csa.load_state_dict(fitted, strict=False)
    attentions = [name for name, module in csa.named_modules() if _attention_family(module) is not None]

    def layer(key: str) -> str | None:
        return next((name for name in attentions if key.startswith(name + ".")), None)

    complete = {name for name in attentions if all(k in fitted for k in own if layer(k) == name)}
    with torch.no_grad():
        swap_attention(csa, "glmha", init="svd", **copy.deepcopy(spec.attention_kwargs))
    converted = csa.state_dict()
    from_source = set()
    for key in converted:
        name = layer(key)
        if name is None:
            if key in fitted:
                from_source.add(key)
        elif name in complete and ".calibration." not in key:  # the gate starts neutral, from no source tensor
            from_source.add(key)
    return converted, set(fitted), from_source


def initialise_from(model: nn.Module, source: str | os.PathLike) -> InitReport:
    """Load the weights of ``source`` into ``model`` where they fit (see the module doc); return what happened."""
    path = resolve_checkpoint(source)
    state = read_state_dict(path)
    recorded = read_model_spec(path)
    source_attention = recorded.attention if recorded is not None else "csa"  # official releases are CSA models
    spec = getattr(model, "spec", None)
    own = model.state_dict()
    report = InitReport(path)
    if spec is not None and spec.attention == "glmha" and not spec.layers and source_attention == "csa":
        converted, used, from_source = _svd_converted(spec, state)
        report.conversion = "CSA -> GLMHA by SVD"
        fitting = _fitting(own, converted)
        loadable = {k: v for k, v in fitting.items() if k in from_source}
        # calibration tensors are set by the conversion (a neutral gate): they load too, but count as new
        model.load_state_dict({**loadable, **{k: v for k, v in fitting.items() if ".calibration." in k}}, strict=False)
        report.dropped = sorted(k for k in state if k not in used)
    else:
        loadable = _fitting(own, state)
        model.load_state_dict(loadable, strict=False)
        report.dropped = sorted(k for k in state if k not in loadable)
    if not loadable:
        raise CheckpointError(f"none of the {len(state)} tensors of {path} fit {type(model).__name__} (names and shapes); "
                              "is it a checkpoint of this architecture and size?")
    report.loaded = [k for k in own if k in loadable]
    report.new = [k for k in own if k not in loadable]
    return report
