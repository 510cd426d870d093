"""The official evaluation protocols against reference computations written from their definitions.

Each reference below is computed in float64 straight from the definition (explicit kernels,
explicit padding, explicit loops), independently of the implementation under test.
"""
import math

import numpy as np
import pytest
from scipy import signal

from glmha.metrics import protocols as P


def _images(seed=0, shape=(40, 46, 3), noise=12):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, shape)
    smooth = signal.convolve(base.astype(float), np.ones((5, 5, 1)) / 25, mode="same")
    target = np.clip(smooth, 0, 255).astype(np.uint8)
    restored = np.clip(smooth + rng.normal(0, noise, shape), 0, 255).astype(np.uint8)
    return restored, target


def _gauss(size=11, sigma=1.5):
    x = np.arange(size) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_from_stats(mx, my, vx, vy, cxy, data_range):
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def _ssim_valid_2d(a, b, data_range=255.0):
    """Wang et al.: fspecial('gaussian', 11, 1.5), filter2(..., 'valid'), mean of the map."""
    w = np.outer(_gauss(), _gauss())
    f = lambda x: signal.correlate2d(x, w, mode="valid")  # noqa: E731
    a, b = a.astype(float), b.astype(float)
    mx, my = f(a), f(b)
    return _ssim_from_stats(mx, my, f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my, data_range).mean()


def _ssim_matlab_3d(a, b, data_range):
    """MATLAB ssim on a volume: an explicit 11x11x11 Gaussian, replicate padding, 'same' size, mean."""
    g = _gauss()
    w = g[:, None, None] * g[None, :, None] * g[None, None, :]

    def f(x):
        padded = np.pad(x, 5, mode="edge")
        return signal.correlate(padded, w, mode="valid")

    a, b = a.astype(float), b.astype(float)
    mx, my = f(a), f(b)
    return _ssim_from_stats(mx, my, f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my, data_range).mean()


def _matlab_y(rgb):
    r, g, b = (rgb[..., i].astype(float) for i in range(3))
    return np.floor(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255 + 0.5)


# ----------------------------------------------------------------------------- MATLAB built-ins
def test_rgb2ycbcr_y_is_matlabs_uint8_y():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (50, 60, 3)).astype(np.uint8)
    y = P.rgb2ycbcr_y(rgb)
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, _matlab_y(rgb))
    grey = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    # grey levels map to 16 + 219 v / 255, rounded: 0 -> 16, 255 -> 235
    np.testing.assert_array_equal(P.rgb2ycbcr_y(grey)[0], np.floor(16 + 219 * np.arange(256) / 255 + 0.5))


def test_im2uint8_and_img_as_ubyte_rounding():
    x = np.array([0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 1.0, 1.2, -0.1])
    np.testing.assert_array_equal(P.im2uint8(x), [0, 1, 2, 3, 255, 255, 0])  # MATLAB: half away from zero, saturating
    exact_halves = (np.arange(10, dtype=np.float32) + np.float32(0.5)) / np.float32(255)
    ours = P.img_as_ubyte(exact_halves)
    expected = np.rint(exact_halves * np.float32(255))  # round half to even in float32
    np.testing.assert_array_equal(ours, expected)


def test_matlab_ssim_volume_of_rgb_uint8():
    restored, target = _images(2, (20, 23, 3))
    assert P.matlab_ssim(restored, target) == pytest.approx(_ssim_matlab_3d(restored, target, 255.0), abs=1e-10)


def test_matlab_ssim_2d_and_single_precision_range():
    restored, target = _images(3, (24, 21, 1))
    two_d = P.matlab_ssim(restored[..., 0], target[..., 0])
    g = np.outer(_gauss(), _gauss())
    f = lambda x: signal.correlate2d(np.pad(x, 5, mode="edge"), g, mode="valid")  # noqa: E731
    a, b = restored[..., 0].astype(float), target[..., 0].astype(float)
    mx, my = f(a), f(b)
    expected = _ssim_from_stats(mx, my, f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my, 255.0).mean()
    assert two_d == pytest.approx(expected, abs=1e-10)
    # H x W x 1 is 2-D for MATLAB (trailing singleton dropped)
    assert P.matlab_ssim(restored, target) == pytest.approx(expected, abs=1e-10)
    # float images: L = 1
    fa, fb = restored.astype(np.float32) / 255, target.astype(np.float32) / 255
    assert P.matlab_ssim(fa, fb) == pytest.approx(expected, abs=1e-6)


def test_matlab_psnr_peak_follows_the_class():
    restored, target = _images(4)
    mse = np.mean((restored.astype(float) - target.astype(float)) ** 2)
    assert P.matlab_psnr(restored, target) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-12)
    assert P.matlab_psnr(restored.astype(np.float32) / 255, target.astype(np.float32) / 255) == pytest.approx(
        10 * math.log10(255**2 / mse), abs=1e-4)
    assert P.matlab_psnr(target, target) == math.inf
    with pytest.raises(ValueError, match="differ in type"):
        P.matlab_psnr(restored, target.astype(np.float32))


def test_ssim_wang_is_the_valid_gaussian_ssim():
    restored, target = _images(5, (30, 33, 1))
    a, b = restored[..., 0], target[..., 0]
    assert P.ssim_wang(a, b) == pytest.approx(_ssim_valid_2d(a, b), abs=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        P.ssim_wang(a[:10], b[:10])


# ----------------------------------------------------------------------------- protocols
def test_deraining_protocol_uses_rounded_y():
    restored, target = _images(6)
    scores = P.score_deraining(restored, target)
    y_r, y_t = _matlab_y(restored), _matlab_y(target)
    rmse = math.sqrt(np.mean((y_r - y_t) ** 2))
    assert scores["psnr"] == pytest.approx(20 * math.log10(255 / rmse), abs=1e-10)
    assert scores["ssim"] == pytest.approx(_ssim_valid_2d(y_r, y_t), abs=1e-12)
    # the unrounded Y gives a different number: the rounding is part of the protocol
    unrounded = lambda im: 16 + (65.481 * im[..., 0] + 128.553 * im[..., 1] + 24.966 * im[..., 2]) / 255  # noqa: E731
    rmse_float = math.sqrt(np.mean((unrounded(restored.astype(float)) - unrounded(target.astype(float))) ** 2))
    assert abs(20 * math.log10(255 / rmse_float) - scores["psnr"]) > 1e-3


def test_gopro_hide_protocol_is_rgb_psnr_and_volume_ssim():
    restored, target = _images(7, (22, 26, 3))
    scores = P.score_gopro_hide(restored, target)
    mse = np.mean((restored.astype(float) - target.astype(float)) ** 2)
    assert scores["psnr"] == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-10)
    assert scores["ssim"] == pytest.approx(_ssim_matlab_3d(restored, target, 255.0), abs=1e-10)
    per_channel_mean = np.mean([P.ssim_wang(restored[..., c], target[..., c]) for c in range(3)])
    assert abs(scores["ssim"] - per_channel_mean) > 1e-3  # not the per-channel average


def test_sidd_protocol_scores_the_float_output():
    rng = np.random.default_rng(8)
    target = rng.integers(0, 256, (20, 20, 3)).astype(np.uint8)
    restored = np.clip(target / 255 + rng.normal(0, 0.03, target.shape), 0, 1).astype(np.float32)
    scores = P.score_sidd(restored, target)
    gt = target.astype(np.float32) / np.float32(255)
    mse = np.mean((restored.astype(float) - gt.astype(float)) ** 2)
    assert scores["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-9)
    assert scores["ssim"] == pytest.approx(_ssim_matlab_3d(restored.astype(float), gt.astype(float), 1.0), abs=1e-9)


def _skimage_default_ssim_reference(a, b):
    """7x7 uniform window, sample covariance (N / (N - 1)), C = (K L)^2 with L = 1, 3-pixel border cropped."""
    w = np.ones((7, 7)) / 49
    f = lambda x: signal.correlate2d(x, w, mode="valid")  # noqa: E731
    values = []
    for c in range(a.shape[-1]):
        x, y = a[..., c].astype(float), b[..., c].astype(float)
        mx, my = f(x), f(y)
        n = 49 / 48
        values.append(_ssim_from_stats(mx, my, n * (f(x * x) - mx**2), n * (f(y * y) - my**2), n * (f(x * y) - mx * my), 1.0).mean())
    return np.mean(values)


def test_dpdd_protocol():
    rng = np.random.default_rng(9)
    target = rng.random((24, 30, 3)).astype(np.float32)
    restored = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1).astype(np.float32)
    scores = P.score_dpdd(restored, target)
    d = restored.astype(float) - target.astype(float)
    assert scores["psnr"] == pytest.approx(10 * math.log10(1 / np.mean(d**2)), abs=1e-6)
    assert scores["mae"] == pytest.approx(np.mean(np.abs(d)), abs=1e-9)
    assert scores["ssim"] == pytest.approx(_skimage_default_ssim_reference(target, restored), abs=1e-9)
    assert P.score_dpdd(target, target)["psnr"] == 100.0  # the official scripts return 100 for identical images


def test_gaussian_denoising_protocol_is_psnr_only():
    restored, target = _images(10)
    mse = np.mean((restored.astype(float) - target.astype(float)) ** 2)
    assert P.score_gaussian_denoising(restored, target) == {"psnr": pytest.approx(20 * math.log10(255 / math.sqrt(mse)), abs=1e-10)}
    grey = P.score_gaussian_denoising(restored[..., :1], target[..., :1])
    assert set(grey) == {"psnr"}


def test_cassi_protocol_paper_and_training_log():
    rng = np.random.default_rng(11)
    truth = rng.random((24, 26, 4))
    pred = truth + rng.normal(0, 0.05, truth.shape)  # outside [0, 1] in places: the paper clamps, the log does not
    scores = P.score_cassi(pred, truth)
    gt = np.floor(np.clip(truth, 0, 1) * 255 + 0.5)
    est = np.floor(np.clip(pred, 0, 1) * 255 + 0.5)
    psnr = np.mean([10 * math.log10(255**2 / np.mean((gt[..., c] - est[..., c]) ** 2)) for c in range(4)])
    ssim = np.mean([_ssim_valid_2d(gt[..., c], est[..., c]) for c in range(4)])
    assert scores["psnr"] == pytest.approx(psnr, abs=1e-10)
    assert scores["ssim"] == pytest.approx(ssim, abs=1e-12)
    p256, t256 = np.round(pred * 256), np.round(truth * 256)
    log_psnr = np.mean([10 * math.log10(255**2 / np.mean((p256[..., c] - t256[..., c]) ** 2)) for c in range(4)])
    assert scores["psnr_train_log"] == pytest.approx(log_psnr, abs=1e-9)
    g = np.outer(_gauss(), _gauss())
    f = lambda x: signal.correlate2d(np.pad(x, 5), g, mode="valid")  # noqa: E731  zero padding, 'same' size
    maps = []
    for c in range(4):
        x, y = pred[..., c], truth[..., c]
        mx, my = f(x), f(y)
        maps.append(_ssim_from_stats(mx, my, f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my, 1.0))
    assert scores["ssim_train_log"] == pytest.approx(np.mean(maps), abs=1e-9)


def test_realblur_protocol_aligns_before_scoring():
    from skimage import data

    # a photograph: ECC needs real structure (on smooth noise, OpenCV 4.14's ECC settles on a
    # slightly scaled warp even for a pure gain change)
    target = np.ascontiguousarray(data.astronaut()[100:196, 150:278])
    assert P.score_realblur(target, target)["ssim"] == pytest.approx(1.0, abs=1e-6)
    shifted = np.roll(target, (2, -3), axis=(0, 1))
    aligned = P.score_realblur(shifted, target)
    mse_unaligned = np.mean((shifted.astype(float) / 255 - target.astype(float) / 255) ** 2)
    assert aligned["psnr"] > 10 * math.log10(1 / mse_unaligned) + 10  # the shift is undone
    # with a darker copy, the intensity matching removes the gain: near-identical scores
    darker = (target.astype(float) * 0.8).round().astype(np.uint8)
    assert P.score_realblur(darker, target)["ssim"] > 0.99


def test_protocol_forms_of_outputs_and_targets():
    deraining, sidd, cassi = P.get_protocol("deraining"), P.get_protocol("sidd"), P.get_protocol("cassi")
    out = np.array([[[-0.2, 0.5 / 255, 1.7]]], np.float32)
    np.testing.assert_array_equal(P.as_stored(deraining, out), [[[0, 0, 255]]])  # clamp, x255, half to even
    np.testing.assert_array_equal(P.as_stored(sidd, out), np.clip(out, 0, 1))
    np.testing.assert_array_equal(P.as_stored(cassi, out), out)  # raw
    assert P.as_read(deraining, np.float32([[[3 / 255]]])).dtype == np.uint8
    with pytest.raises(ValueError, match="unknown evaluation protocol 'nope'"):
        P.get_protocol("nope")
    with pytest.raises(ValueError, match="no public ground truth"):
        P.get_protocol("dnd").score(out, out)
    with pytest.raises(ValueError, match="8-bit images"):
        P.score_deraining(out, out)
