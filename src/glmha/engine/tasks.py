"""What differs between the papers' tasks: datasets, how a batch feeds the model, loss, metrics.

A task object has:

- ``forward(model, batch)``: the training forward pass (model inputs from the batch);
- ``predict(model, batch)``: the evaluation forward pass (whole images, padded to the
  model's size multiple);
- ``metrics(pred, batch)``: the paper's metrics for each image of the batch, a dict of
  name -> tensor of shape ``B``;
- ``primary_metric`` and ``higher_is_better``: what "best" means during validation.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..data import restoration
from ..inference import restore
from ..metrics import image as image_metrics

DATASET_TYPES: dict[str, Callable[..., torch.utils.data.Dataset]] = {
    "paired_folder": restoration.PairedImageFolder,
    "noisy_folder": restoration.NoisyImageFolder,
    "sidd_blocks": restoration.SIDDBlocks,
    "synthetic": restoration.SyntheticPairs,
}


def build_dataset(spec: Mapping[str, Any]) -> torch.utils.data.Dataset:
    """Dataset from a config entry: ``type`` picks the class, the other keys are its arguments."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in DATASET_TYPES:
        raise ValueError(f"dataset type {kind!r} unknown; available: {sorted(DATASET_TYPES)}")
    try:
        return DATASET_TYPES[kind](**spec)
    except TypeError as err:
        raise ValueError(f"dataset type {kind!r}: {err}") from None


# ----------------------------------------------------------------------------- losses
def mrae_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean relative absolute error |pred - target| / target (MST++'s loss; target > 0)."""
    return ((pred - target).abs() / target).mean()


def rmse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root of the mean squared error (MST's loss)."""
    return F.mse_loss(pred, target).sqrt()


def charbonnier_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return ((pred - target).pow(2) + eps**2).sqrt().mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": F.l1_loss,
    "mse": F.mse_loss,
    "rmse": rmse_loss,
    "mrae": mrae_loss,
    "charbonnier": charbonnier_loss,
}


# ----------------------------------------------------------------------------- tasks
class RestorationTask:
    """Image in, image out; PSNR/SSIM on RGB or on MATLAB's Y channel.

    Evaluation clips the output to [0, 1] and rounds it to 8 bits, as the official scripts
    that save PNGs and measure them.
    """

    primary_metric = "psnr"
    higher_is_better = True

    def __init__(self, name: str, y_channel: bool):
        self.name = name
        self.y_channel = y_channel

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["input"])

    def predict(self, model: nn.Module, batch: Mapping[str, torch.Tensor], tile: int | None = None) -> torch.Tensor:
        return restore(model, batch["input"], tile=tile)

    def metrics(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor], quantize: bool = True) -> dict[str, torch.Tensor]:
        target = batch["target"].to(pred.device)
        pred = pred.clamp(0, 1)
        if quantize:
            pred = (pred * 255).round() / 255
        y = self.y_channel and pred.shape[1] == 3
        return {
            "psnr": image_metrics.psnr(pred, target, y_channel=y),
            "ssim": image_metrics.ssim(pred, target, y_channel=y),
        }


TASKS: dict[str, Any] = {
    "deraining": RestorationTask("deraining", y_channel=True),
    "motion_deblurring": RestorationTask("motion_deblurring", y_channel=False),
    "defocus_deblurring": RestorationTask("defocus_deblurring", y_channel=False),
    "gaussian_denoising": RestorationTask("gaussian_denoising", y_channel=False),
    "real_denoising": RestorationTask("real_denoising", y_channel=False),
}


def get_task(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(TASKS)}")
    return TASKS[name]
