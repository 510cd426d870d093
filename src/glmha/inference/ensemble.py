"""Geometric self-ensemble: run a model on the 8 flips and rotations of an image and combine.

The transforms, their order and the reduction are those of MST++'s official prediction
script (``forward_ensemble``): for every combination of a flip of the width, a flip of the
height and a transpose (in that nesting, ``False`` first), the input is flipped along W,
then H, then transposed; the output is transformed back in the reverse order. ``"mean"``
averages the 8 outputs; ``"median"`` takes ``torch.median`` over them, which for an even
count is the lower of the two middle values, as in the official script. These 8 transforms
are the flips and rotations by 90 degrees that restoration papers use for their x8 ("+")
results. Costs 8 forwards.
"""
from __future__ import annotations

import itertools
from typing import Callable

import torch

from ..validation import InputError

ENSEMBLES = ("none", "mean", "median")


def _transform(x: torch.Tensor, flip_width: bool, flip_height: bool, transpose: bool) -> torch.Tensor:
    if flip_width:
        x = torch.flip(x, [3])
    if flip_height:
        x = torch.flip(x, [2])
    if transpose:
        x = torch.transpose(x, 2, 3)
    return x


def _inverse(y: torch.Tensor, flip_width: bool, flip_height: bool, transpose: bool) -> torch.Tensor:
    if transpose:
        y = torch.transpose(y, 2, 3)
    if flip_height:
        y = torch.flip(y, [2])
    if flip_width:
        y = torch.flip(y, [3])
    return y


def check_ensemble(ensemble: str, model: torch.nn.Module | None = None) -> None:
    """Refuse an unknown ``ensemble``, and an ensemble for ``model`` when it is a CASSI model (:func:`check_ensemble_model`)."""
    if ensemble not in ENSEMBLES:
        raise InputError(f"ensemble must be one of {list(ENSEMBLES)}, got {ensemble!r}")
    if ensemble != "none" and model is not None:
        check_ensemble_model(model)


def self_ensemble(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, ensemble: str = "mean") -> torch.Tensor:
    """Combine ``run`` over the 8 flips/transposes of the ``B x C x H x W`` batch ``x`` (``"mean"`` or ``"median"``).

    ``run`` maps an image to an output of the same height and width (it may pad and crop
    inside); ``ensemble="none"`` is one plain call.
    """
    check_ensemble(ensemble)
    if ensemble == "none":
        return run(x)
    outputs = [_inverse(run(_transform(x, *flags)), *flags) for flags in itertools.product((False, True), repeat=3)]
    stacked = torch.stack(outputs, 0)
    return stacked.mean(0) if ensemble == "mean" else stacked.median(0)[0]


def check_ensemble_model(model: torch.nn.Module) -> None:
    """Refuse CASSI models: their input is a measurement sheared along the width by the disperser, with its mask."""
    from ..models.mst import MST
    from ..models.mst_real import RealMST

    module = getattr(model, "module", model)  # glmha.optimize's wrapper
    if isinstance(module, RealMST) or (isinstance(module, MST) and module.mask_guided):
        raise InputError(
            "the self-ensemble is for image-to-image models: a CASSI measurement is sheared along its width by the "
            "disperser and comes with its mask, so flips and rotations do not commute with the model; use ensemble='none'"
        )
