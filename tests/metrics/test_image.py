"""Image metrics against scikit-image's reference implementations."""
import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from glmha.metrics.image import gaussian_window, psnr, rgb_to_y, ssim


def _pair(seed=0, shape=(3, 40, 52)):
    rng = np.random.default_rng(seed)
    target = rng.random(shape)
    pred = np.clip(target + rng.normal(0, 0.05, shape), 0, 1)
    return pred, target


def test_y_channel_matches_skimage_rgb2ycbcr():
    pred, _ = _pair()
    ours = rgb_to_y(torch.from_numpy(pred))[0, 0].numpy()
    reference = rgb2ycbcr(pred.transpose(1, 2, 0))[..., 0]  # MATLAB convention, 16..235
    np.testing.assert_allclose(ours, reference, atol=1e-10)


def test_psnr_rgb_and_y_match_skimage():
    pred, target = _pair(1)
    ours = psnr(torch.from_numpy(pred), torch.from_numpy(target)).item()
    assert ours == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=1.0), abs=1e-9)
    y_p, y_t = (rgb2ycbcr(a.transpose(1, 2, 0))[..., 0] for a in (pred, target))
    ours_y = psnr(torch.from_numpy(pred), torch.from_numpy(target), y_channel=True).item()
    assert ours_y == pytest.approx(peak_signal_noise_ratio(y_t, y_p, data_range=255), abs=1e-9)


def _skimage_ssim(a, b, data_range, channel_axis=None):
    return structural_similarity(
        a, b, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        channel_axis=channel_axis,
    )


def test_ssim_rgb_and_y_match_skimage():
    pred, target = _pair(2)
    ours = ssim(torch.from_numpy(pred), torch.from_numpy(target)).item()
    reference = _skimage_ssim(pred.transpose(1, 2, 0), target.transpose(1, 2, 0), 1.0, channel_axis=2)
    assert ours == pytest.approx(reference, abs=1e-9)
    y_p, y_t = (rgb2ycbcr(a.transpose(1, 2, 0))[..., 0] for a in (pred, target))
    ours_y = ssim(torch.from_numpy(pred), torch.from_numpy(target), y_channel=True).item()
    assert ours_y == pytest.approx(_skimage_ssim(y_p, y_t, 255.0), abs=1e-9)


def test_batch_crop_border_and_window():
    pred, target = _pair(3, (2, 3, 30, 30))
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    values = psnr(p, t, crop_border=4)
    assert values.shape == (2,)
    assert values[1].item() == pytest.approx(peak_signal_noise_ratio(target[1, :, 4:-4, 4:-4], pred[1, :, 4:-4, 4:-4], data_range=1.0))
    assert gaussian_window().sum().item() == pytest.approx(1.0)
    assert ssim(t, t).tolist() == pytest.approx([1.0, 1.0])
    assert torch.isinf(psnr(t, t)).all()


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="3 channels"):
        psnr(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), y_channel=True)
