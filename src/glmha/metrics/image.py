"""PSNR and SSIM as the restoration papers report them.

Images are ``B x C x H x W`` (or ``C x H x W``) tensors in ``[0, data_range]``. The Y-channel
variants convert RGB with MATLAB's ``rgb2ycbcr`` (ITU-R BT.601, Y in [16, 235] on a 0..255
scale) and measure on that 0..255 scale, as the official MATLAB scripts of Restormer do.
SSIM is Wang et al.'s: an 11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, the
statistics taken only where the window fits inside the image ('valid'), then averaged; a
colour image's SSIM is the mean over its channels. Everything runs in float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# MATLAB rgb2ycbcr for images in [0, 1]: Y = 16 + 65.481 R + 128.553 G + 24.966 B (0..255 scale).
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0


def _as_batch(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{what} must be C x H x W or B x C x H x W, got shape {tuple(x.shape)}")
    return x.to(torch.float64)


def _pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = _as_batch(pred, "prediction"), _as_batch(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return pred, target


def rgb_to_y(x: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Y channel of MATLAB's ``rgb2ycbcr`` on the 0..255 scale (``B x 1 x H x W``, float64)."""
    x = _as_batch(x, "image")
    if x.shape[1] != 3:
        raise ValueError(f"rgb_to_y needs 3 channels, got {x.shape[1]}")
    weights = x.new_tensor(_Y_WEIGHTS).view(1, 3, 1, 1)
    return (x / data_range * weights).sum(1, keepdim=True) + _Y_OFFSET


def _prepare(pred, target, data_range: float, y_channel: bool, crop_border: int):
    pred, target = _pair(pred, target)
    if y_channel:
        pred, target, data_range = rgb_to_y(pred, data_range), rgb_to_y(target, data_range), 255.0
    if crop_border:
        pred = pred[..., crop_border:-crop_border, crop_border:-crop_border]
        target = target[..., crop_border:-crop_border, crop_border:-crop_border]
    return pred, target, data_range


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    y_channel: bool = False,
    crop_border: int = 0,
) -> torch.Tensor:
    """PSNR in dB of each image of the batch (shape ``B``); infinite for identical images.

    ``y_channel=True`` measures on MATLAB's Y (deraining protocol); otherwise on all channels
    (GoPro / HIDE protocol). ``crop_border`` pixels are dropped on every side first.
    """
    pred, target, data_range = _prepare(pred, target, data_range, y_channel, crop_border)
    mse = (pred - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None) -> torch.Tensor:
    """Normalised ``size x size`` Gaussian window (MATLAB ``fspecial('gaussian', 11, 1.5)``)."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    y_channel: bool = False,
    crop_border: int = 0,
    window_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """SSIM of each image of the batch (shape ``B``), averaged over channels.

    ``y_channel=True`` measures on MATLAB's Y channel at the 0..255 scale.
    """
    pred, target, data_range = _prepare(pred, target, data_range, y_channel, crop_border)
    b, c, h, w = pred.shape
    if h < window_size or w < window_size:
        raise ValueError(f"SSIM needs images of at least {window_size}x{window_size}, got {h}x{w}")
    window = gaussian_window(window_size, sigma, pred.dtype, pred.device).expand(c, 1, window_size, window_size)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=c)  # 'valid': only where the window fits

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_p, mu_t = blur(pred), blur(target)
    var_p = blur(pred * pred) - mu_p**2
    var_t = blur(target * target) - mu_t**2
    cov = blur(pred * target) - mu_p * mu_t
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return ssim_map.flatten(1).mean(1)
