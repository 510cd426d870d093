import math

import numpy as np
import pytest
import torch

from glmha.metrics.spectral import cassi_psnr, cassi_ssim, mrae, rmse, sam, spectral_metrics, spectral_psnr


def test_mrae_rmse_by_hand():
    target = torch.tensor([[[[1.0, 2.0], [4.0, 0.5]]]])
    pred = torch.tensor([[[[1.5, 1.0], [4.0, 1.0]]]])
    # |0.5|/1 + |1|/2 + 0 + |0.5|/0.5 = 0.5 + 0.5 + 0 + 1 = 2 -> mean 0.5
    assert mrae(pred, target).item() == pytest.approx(0.5)
    # squared errors 0.25, 1, 0, 0.25 -> mean 0.375
    assert rmse(pred, target).item() == pytest.approx(math.sqrt(0.375))
    assert math.isinf(mrae(pred, torch.zeros_like(target)).item())
    assert math.isfinite(mrae(pred, torch.zeros_like(target), eps=1e-3).item())


def test_spectral_psnr_clamps_and_averages_images():
    target = torch.zeros(2, 1, 2, 2)
    pred = torch.zeros(2, 1, 2, 2)
    pred[0, 0, 0, 0] = 0.2  # image 0: mse 0.04 / 4 = 0.01 -> 20 dB
    pred[1] = 3.0  # clamped to 1: mse 1 -> 0 dB
    per_image = spectral_psnr(pred, target, reduction="none")
    torch.testing.assert_close(per_image, torch.tensor([20.0, 0.0], dtype=torch.float64))
    assert spectral_psnr(pred, target).item() == pytest.approx(10.0)


def test_border_crop():
    target = torch.ones(1, 2, 6, 6)
    pred = target.clone()
    pred[..., 0, :] = 5.0  # only in the border
    assert rmse(pred, target, border=1).item() == 0.0
    assert rmse(pred, target).item() > 0
    with pytest.raises(ValueError, match="leaves nothing"):
        rmse(pred, target, border=3)


def test_sam_by_hand():
    target = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).repeat(1, 1, 1, 2)
    pred = torch.zeros(1, 2, 1, 2)
    pred[0, :, 0, 0] = torch.tensor([1.0, 1.0])  # 45 degrees from (1, 0)
    pred[0, :, 0, 1] = torch.tensor([3.0, 0.0])  # 0 degrees (scale does not matter)
    assert sam(pred, target, degrees=True).item() == pytest.approx(22.5)
    assert sam(pred, target).item() == pytest.approx(math.pi / 8)


def test_cassi_psnr_quantises_like_the_official_code():
    target = torch.zeros(2, 4, 4)  # C x H x W
    pred = torch.zeros(2, 4, 4)
    pred[0] = 1.0 / 256  # band 0: every value off by one level -> mse 1 -> 10 log10(255^2)
    pred[1] = 0.1 / 256  # band 1: rounds to 0 -> mse 0 -> inf; use a second case for the mean
    value = cassi_psnr(pred, target)
    assert math.isinf(value.item())
    pred[1, 0, 0] = 2.0 / 256  # band 1: one pixel off by 2 -> mse 4 / 16 = 0.25
    expected = (10 * math.log10(255**2) + 10 * math.log10(255**2 / 0.25)) / 2
    assert cassi_psnr(pred, target).item() == pytest.approx(expected)


def test_cassi_ssim_identical_constant_and_by_hand():
    x = torch.rand(3, 16, 16)
    assert cassi_ssim(x, x).item() == pytest.approx(1.0)
    # two constant images a and b: zero padding makes mu = a * s(p) where s(p) is the window
    # mass inside the image; variances and covariance follow from the same sums.
    a, b = 0.6, 0.2
    g = torch.exp(-torch.arange(-5, 6, dtype=torch.float64) ** 2 / (2 * 1.5**2))
    g = g / g.sum()
    inside = torch.stack([g[max(0, 5 - i):min(11, 5 - i + 8)].sum() for i in range(8)])  # 1-D mass, 8 px
    s = inside[:, None] * inside[None, :]
    mu_a, mu_b = a * s, b * s
    var_a, var_b, cov = a * a * s - mu_a**2, b * b * s - mu_b**2, a * b * s - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    got = cassi_ssim(torch.full((1, 8, 8), a, dtype=torch.float64), torch.full((1, 8, 8), b, dtype=torch.float64))
    assert got.item() == pytest.approx(ssim_map.mean().item(), rel=1e-9)


def test_accepts_numpy_and_reports_all():
    target = np.random.default_rng(0).random((3, 8, 8)) + 0.1
    pred = target * 1.1
    values = spectral_metrics(pred, target)
    assert values["mrae"] == pytest.approx(0.1)
    assert values["sam"] == pytest.approx(0.0, abs=1e-6)
    assert set(spectral_metrics(pred, target, task="cassi")) == {"psnr", "ssim", "sam"}
    with pytest.raises(ValueError, match="differ in shape"):
        rmse(pred, target[:2])
    with pytest.raises(ValueError, match="task must be"):
        spectral_metrics(pred, target, task="rgb")
