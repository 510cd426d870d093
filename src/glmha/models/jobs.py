"""What a model does (its job), read from the model itself, and the command that runs it.

The commands check the job before they read any input: an RGB-to-HSI model given to ``glmha
restore`` would otherwise fail deep inside the PNG writer, and an image model given to ``glmha
reconstruct`` would write a 3-band "cube".
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from .registry import ModelSpec

IMAGE = "image"  # image to image (Restormer, dual-pixel included)
RGB_TO_HSI = "rgb_to_hsi"  # an RGB image to a spectral cube (MST++)
CASSI = "cassi"  # a CASSI snapshot and its coded aperture to a cube (MST)
REAL_CASSI = "real_cassi"  # a real CASSI measurement to a cube (MST for real data)

DESCRIPTIONS = {
    IMAGE: "restores images (image to image)",
    RGB_TO_HSI: "reconstructs spectral cubes from RGB images",
    CASSI: "reconstructs spectral cubes from CASSI snapshots and their mask",
    REAL_CASSI: "reconstructs spectral cubes from real CASSI measurements",
}
# the command line that runs each job
COMMANDS = {
    IMAGE: "glmha restore",
    RGB_TO_HSI: "glmha reconstruct",
    CASSI: "glmha reconstruct --mask MASK",
    REAL_CASSI: "glmha reconstruct",
}


def model_job(model: nn.Module) -> str:
    """:data:`IMAGE`, :data:`RGB_TO_HSI`, :data:`CASSI` or :data:`REAL_CASSI`, from the model's class and channels."""
    from .mst_real import RealMST

    module = getattr(model, "module", model)  # glmha.optimize's wrapper
    if isinstance(module, RealMST):
        return REAL_CASSI
    if getattr(module, "mask_guided", False):
        return CASSI
    # PNG-shaped outputs (grey or colour) are images; more bands are a spectral cube
    return IMAGE if int(getattr(module, "out_channels", 3)) in (1, 3) else RGB_TO_HSI


def spec_job(spec: ModelSpec) -> str:
    """The job of the model a :class:`~glmha.models.registry.ModelSpec` builds (on the meta device: no memory, no weights)."""
    import torch

    with torch.device("meta"):
        return model_job(spec.build())
