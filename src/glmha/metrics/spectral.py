"""Spectral reconstruction metrics, defined exactly as the official MST++ and MST code computes them.

Inputs are torch tensors (or arrays) ``B x C x H x W`` or ``C x H x W`` with values nominally
in [0, 1]; everything is computed in float64. Each metric is computed per image and, with
``reduction="mean"`` (default), averaged over the batch, which is how the official scripts
average over test images; ``reduction="none"`` returns the ``B`` per-image values.

RGB-to-HSI (MST++ / NTIRE 2022 challenge code), optionally after cropping ``border`` pixels
on every side (the official test script uses 128):

- :func:`mrae`: mean over all values of ``|pred - target| / target`` (no epsilon, as
  official: a zero in the target gives inf; pass ``eps`` to guard against it).
- :func:`rmse`: ``sqrt(mean((pred - target)^2))``.
- :func:`spectral_psnr`: both images clamped to [0, 1], ``10 log10(1 / mean((pred - target)^2))``.

CASSI simulation (MST):

- :func:`cassi_psnr`: both cubes quantised as ``round(x * 256)``, then per band
  ``10 log10(255^2 / mean((pred_c - target_c)^2))``, averaged over the bands. (The official
  code scales by 256 and uses a peak of 255; kept for comparable numbers.)
- :func:`cassi_ssim`: SSIM of every band with an 11 x 11 Gaussian window (sigma 1.5),
  zero padding of 5 ("same" size maps, so the border windows see zeros), constants
  ``C1 = 0.01^2``, ``C2 = 0.03^2`` (data range 1, no quantisation), averaged over all bands
  and pixels.

And :func:`sam`, the spectral angle mapper: the mean over pixels of the angle between the
predicted and the true spectrum, ``arccos(<p, t> / (|p| |t|))``, in radians (degrees with
``degrees=True``). Standard PSNR and SSIM are in :mod:`glmha.metrics.image`.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["cassi_psnr", "cassi_ssim", "mrae", "rmse", "sam", "spectral_metrics", "spectral_psnr"]


def _pair(pred, target, border: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    pred = torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred).detach().to(torch.float64)
    target = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target).detach().to(torch.float64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.dim() == 3:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if pred.dim() != 4:
        raise ValueError(f"expected C x H x W or B x C x H x W, got shape {tuple(pred.shape)}")
    if border:
        h, w = pred.shape[-2:]
        if 2 * border >= min(h, w):
            raise ValueError(f"border {border} leaves nothing of a {h}x{w} image")
        pred = pred[..., border:-border, border:-border]
        target = target[..., border:-border, border:-border]
    return pred, target.to(pred.device)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def mrae(pred, target, border: int = 0, eps: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Mean relative absolute error ``mean(|pred - target| / (target + eps))`` (MST++ ``Loss_MRAE``)."""
    pred, target = _pair(pred, target, border)
    return _reduce(((pred - target).abs() / (target + eps)).flatten(1).mean(1), reduction)


def rmse(pred, target, border: int = 0, reduction: str = "mean") -> torch.Tensor:
    """Root mean square error ``sqrt(mean((pred - target)^2))`` (MST++ ``Loss_RMSE``)."""
    pred, target = _pair(pred, target, border)
    return _reduce((pred - target).square().flatten(1).mean(1).sqrt(), reduction)


def spectral_psnr(pred, target, border: int = 0, reduction: str = "mean") -> torch.Tensor:
    """PSNR of the MST++ challenge code: clamp both to [0, 1], ``10 log10(1 / MSE)`` per image (``Loss_PSNR``)."""
    pred, target = _pair(pred, target, border)
    mse = (pred.clamp(0, 1) - target.clamp(0, 1)).square().flatten(1).mean(1)
    return _reduce(10 * torch.log10(1.0 / mse), reduction)


def sam(pred, target, degrees: bool = False, eps: float = 1e-12, border: int = 0, reduction: str = "mean") -> torch.Tensor:
    """Spectral angle mapper: mean over pixels of ``arccos(<p, t> / (|p| |t|))`` (radians, or degrees)."""
    pred, target = _pair(pred, target, border)
    cosine = (pred * target).sum(1) / (pred.norm(dim=1) * target.norm(dim=1)).clamp_min(eps)
    angle = torch.arccos(cosine.clamp(-1.0, 1.0)).flatten(1).mean(1)
    return _reduce(torch.rad2deg(angle) if degrees else angle, reduction)


def cassi_psnr(pred, target, reduction: str = "mean") -> torch.Tensor:
    """MST simulation PSNR: quantise as ``round(x * 256)``, per-band ``10 log10(255^2 / MSE)``, mean over bands."""
    pred, target = _pair(pred, target)
    pred, target = (pred * 256).round(), (target * 256).round()
    mse = (pred - target).square().flatten(2).mean(2)  # B x C
    return _reduce((10 * torch.log10(255.0**2 / mse)).mean(1), reduction)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def cassi_ssim(pred, target, reduction: str = "mean") -> torch.Tensor:
    """MST simulation SSIM: per band, 11x11 Gaussian (sigma 1.5), zero padding 5, C1 = 0.01^2, C2 = 0.03^2; mean over bands and pixels."""
    pred, target = _pair(pred, target)
    channels = pred.shape[1]
    window = _gaussian_window().to(pred.device).expand(channels, 1, 11, 11)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, padding=5, groups=channels)

    mu_p, mu_t = blur(pred), blur(target)
    var_p = blur(pred * pred) - mu_p.square()
    var_t = blur(target * target) - mu_t.square()
    cov = blur(pred * target) - mu_p * mu_t
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p.square() + mu_t.square() + c1) * (var_p + var_t + c2))
    return _reduce(ssim_map.flatten(1).mean(1), reduction)


def spectral_metrics(pred, target, task: str = "rgb2hsi", border: int = 0) -> dict[str, float]:
    """All metrics of a task as plain floats: ``"rgb2hsi"`` (MRAE, RMSE, PSNR, SAM) or ``"cassi"`` (PSNR, SSIM, SAM)."""
    if task == "rgb2hsi":
        return {
            "mrae": float(mrae(pred, target, border)),
            "rmse": float(rmse(pred, target, border)),
            "psnr": float(spectral_psnr(pred, target, border)),
            "sam": float(sam(pred, target, border=border)),
        }
    if task == "cassi":
        if border:
            raise ValueError("the CASSI metrics are computed on the whole cube; border must be 0")
        return {"psnr": float(cassi_psnr(pred, target)), "ssim": float(cassi_ssim(pred, target)), "sam": float(sam(pred, target))}
    raise ValueError(f"task must be 'rgb2hsi' or 'cassi', got {task!r}")
