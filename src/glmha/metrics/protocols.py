"""The official evaluation protocols of Restormer, MST and MST++, one per test set.

Each protocol scores one restored image against its ground truth exactly as the official
evaluation script of that test set does, starting from the arrays that script reads:

========================  ===================================  ==========================================
protocol                  official script                      restored image as scored
========================  ===================================  ==========================================
``deraining``             ``Deraining/evaluate_PSNR_SSIM.m``   8-bit PNG written by ``Deraining/test.py``
``gopro_hide``            ``evaluate_gopro_hide.m``            8-bit PNG written by ``Motion_Deblurring/test.py``
``realblur``              ``evaluate_realblur.py``             8-bit PNG written by ``Motion_Deblurring/test.py``
``sidd``                  ``Denoising/evaluate_sidd.m``        float32 ``Idenoised.mat`` (clamped, not rounded)
``dnd``                   ``test_real_denoising_dnd.py``       submission files, scored online (no metric here)
``dpdd``                  ``test_*_defocus_deblur.py``         float32 output (clamped, not rounded)
``gaussian_denoising``    ``evaluate_gaussian_*_denoising.py`` 8-bit PNG written by ``test_gaussian_*_denoising.py``
``cassi``                 ``Cal_quality_assessment.m`` (MST)   float32 ``Test_result.mat`` ``pred`` / ``truth``
``ntire2022``             MST++ ``test_develop_code``          float32 cube
========================  ===================================  ==========================================

Arrays are numpy, laid out as the official scripts hold them: images ``H x W x C`` (or
``H x W``), cubes ``H x W x bands``. The MATLAB built-ins the scripts call are written here
from MathWorks' documentation (:func:`rgb2ycbcr_y`, :func:`matlab_psnr`,
:func:`matlab_ssim`, :func:`im2uint8`), Wang et al.'s reference SSIM as :func:`ssim_wang`;
where an official script calls scikit-image or OpenCV, so does this module.
:data:`PROTOCOLS` maps each name to a :class:`Protocol`. See ``docs/protocols.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

# ----------------------------------------------------------------------------- MATLAB built-ins
# rgb2ycbcr's luma row for RGB in [0, 1] (ITU-R BT.601, Y in [16, 235]); for uint8 input MATLAB
# scales the row by 1/255 and keeps the offset 16, then rounds to uint8 (imlincomb).
_LUMA = (65.481, 128.553, 24.966)


def rgb2ycbcr_y(rgb: np.ndarray) -> np.ndarray:
    """Y channel of MATLAB's ``rgb2ycbcr`` for a uint8 ``H x W x 3`` image, as the uint8 MATLAB returns.

    MATLAB computes ``Y = (65.481/255) R + (128.553/255) G + (24.966/255) B + 16`` in double
    and rounds it half away from zero to uint8 (``imlincomb`` with a uint8 output).
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb2ycbcr_y takes a uint8 H x W x 3 image, got {rgb.dtype} {rgb.shape}")
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = (_LUMA[0] / 255) * r + (_LUMA[1] / 255) * g + (_LUMA[2] / 255) * b + 16.0
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


def im2uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's ``im2uint8`` of a floating-point array: ``x * 255`` rounded, saturated to [0, 255]."""
    return np.floor(np.clip(np.asarray(x, np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def img_as_ubyte(x: np.ndarray) -> np.ndarray:
    """scikit-image's ``img_as_ubyte`` of a float32 image in [0, 1], as the official test scripts save
    outputs: ``x * 255`` in float32, rounded half to even."""
    scaled = np.asarray(x, np.float32) * np.float32(255)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _dynamic_range(a: np.ndarray) -> float:
    # MATLAB's getrangefromclass: the class's range for integers, 1 for floating point
    if a.dtype == np.uint8:
        return 255.0
    if a.dtype == np.uint16:
        return 65535.0
    if np.issubdtype(a.dtype, np.floating):
        return 1.0
    raise ValueError(f"unsupported image type {a.dtype}; expected uint8, uint16 or floating point")


def _same_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"restored image {a.shape} and ground truth {b.shape} differ in size")
    if a.dtype != b.dtype:
        raise ValueError(f"restored image ({a.dtype}) and ground truth ({b.dtype}) differ in type")
    return a, b


def matlab_psnr(restored: np.ndarray, reference: np.ndarray) -> float:
    """MATLAB's ``psnr(A, ref)``: peak = the class's dynamic range, MSE over every element."""
    a, b = _same_pair(restored, reference)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(_dynamic_range(a) ** 2 / mse)) if mse > 0 else math.inf


def gaussian_taps(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian; its outer products are ``fspecial('gaussian')`` and MATLAB's SSIM kernels."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-(x**2) / (2 * sigma**2))
    return taps / taps.sum()


def _smooth(x: np.ndarray, axes: tuple[int, ...], mode: str) -> np.ndarray:
    taps = gaussian_taps()
    for axis in axes:
        x = ndimage.correlate1d(x, taps, axis=axis, mode=mode)
    return x


def _ssim_map(x: np.ndarray, y: np.ndarray, data_range: float, smooth: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = smooth(x), smooth(y)
    var_x = smooth(x * x) - mu_x**2
    var_y = smooth(y * y) - mu_y**2
    cov = smooth(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def matlab_ssim(restored: np.ndarray, reference: np.ndarray) -> float:
    """MATLAB's built-in ``ssim(A, ref)`` with its defaults.

    A 2-D image gives 2-D SSIM; a 3-D array (an ``H x W x 3`` image included) is a volume:
    an 11 x 11 x 11 Gaussian of sigma 1.5 with replicate padding, the same-size SSIM map
    averaged. ``L`` is the class's dynamic range (255 for uint8, 1 for single/double).
    """
    a, b = _same_pair(restored, reference)
    data_range = _dynamic_range(a)
    if a.ndim == 3 and a.shape[-1] == 1:
        a, b = a[..., 0], b[..., 0]  # MATLAB drops a trailing singleton dimension
    if a.ndim not in (2, 3):
        raise ValueError(f"ssim takes a 2-D image or a 3-D volume, got shape {a.shape}")
    axes = tuple(range(a.ndim))
    ssim_map = _ssim_map(a.astype(np.float64), b.astype(np.float64), data_range, lambda v: _smooth(v, axes, "nearest"))
    return float(ssim_map.mean())


def ssim_wang(restored: np.ndarray, reference: np.ndarray, data_range: float = 255.0) -> float:
    """Wang et al.'s reference ``ssim_index`` on a 2-D image: ``fspecial('gaussian', 11, 1.5)``,
    statistics only where the window fits ('valid'), ``K = [0.01, 0.03]``, the map's mean."""
    a, b = np.asarray(restored, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim_wang takes two 2-D images of one size, got {a.shape} and {b.shape}")
    if min(a.shape) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {a.shape[0]}x{a.shape[1]}")
    ssim_map = _ssim_map(a, b, data_range, lambda v: _smooth(v, (0, 1), "nearest")[5:-5, 5:-5])
    return float(ssim_map.mean())


# ----------------------------------------------------------------------------- the protocols
def _check_uint8(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"this protocol scores 8-bit images; the {what} is {image.dtype}")
    return image


def score_deraining(restored: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``evaluate_PSNR_SSIM.m``: colour images go to MATLAB's uint8 Y (rounded to 8 bit); PSNR
    with peak 255 and Wang's 'valid' SSIM on it."""
    restored, target = _check_uint8(restored, "restored image"), _check_uint8(target, "ground truth")
    to_y = (lambda im: rgb2ycbcr_y(im)) if restored.ndim == 3 and restored.shape[-1] == 3 else (lambda im: im.reshape(im.shape[:2]))
    y_restored, y_target = to_y(restored).astype(np.float64), to_y(target).astype(np.float64)
    rmse = math.sqrt(np.mean((y_restored - y_target) ** 2))
    psnr = 20 * math.log10(255 / rmse) if rmse > 0 else math.inf
    return {"psnr": psnr, "ssim": ssim_wang(y_restored, y_target, 255.0)}


def score_gopro_hide(restored: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``evaluate_gopro_hide.m``: MATLAB ``psnr`` and ``ssim`` on the uint8 RGB images (SSIM as a 3-D volume)."""
    restored, target = _check_uint8(restored, "restored image"), _check_uint8(target, "ground truth")
    return {"psnr": matlab_psnr(restored, target), "ssim": matlab_ssim(restored, target)}


def _realblur_align(deblurred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The alignment of ``evaluate_realblur.py`` (from Kohler et al.'s evaluation): intensity
    matching, then an ECC homography (100 iterations, Gaussian pre-filter of size 5) found on the
    grey images, the deblurred image warped onto the ground truth (bicubic, reflected border), and
    both images multiplied by the mask of pixels the warp covers. float32 throughout, as there."""
    import cv2

    scaled = (np.sum(gt * deblurred) / np.sum(deblurred * deblurred)) * deblurred
    warp = np.eye(3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 0)
    _, warp = cv2.findTransformECC(cv2.cvtColor(gt, cv2.COLOR_RGB2GRAY), cv2.cvtColor(scaled, cv2.COLOR_RGB2GRAY),
                                   warp, cv2.MOTION_HOMOGRAPHY, criteria, None, 5)
    size = (gt.shape[1], gt.shape[0])
    aligned = cv2.warpPerspective(scaled, warp, size, flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
    covered = cv2.warpPerspective(np.ones_like(scaled, dtype=np.float32), warp, size,
                                  flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return aligned * covered, gt * covered, covered


def score_realblur(restored: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``evaluate_realblur.py``: align the restored image to the ground truth (:func:`_realblur_align`),
    then PSNR over the covered pixels and SSIM (scikit-image, Gaussian weights, the map masked,
    5-pixel border dropped, averaged per channel over covered pixels, then over channels)."""
    from skimage.metrics import structural_similarity

    restored, target = _check_uint8(restored, "restored image"), _check_uint8(target, "ground truth")
    # C order as the script's imread gives: the float32 sums of the intensity matching depend on the
    # memory order, and ECC is sensitive enough for that to move the score
    deblurred = np.ascontiguousarray(restored).astype(np.float32) / 255.0
    gt = np.ascontiguousarray(target).astype(np.float32) / 255.0
    aligned, gt, covered = _realblur_align(deblurred, gt)
    err = np.sum((gt - aligned) ** 2, dtype=np.float64) / np.sum(covered)
    psnr = 10 * math.log10(1.0 / err) if err > 0 else math.inf
    _, ssim_map = structural_similarity(gt.astype(np.float64), aligned.astype(np.float64), channel_axis=2, gaussian_weights=True,
                                        use_sample_covariance=False, data_range=1.0, full=True)
    pad = 5  # the window radius scikit-image uses for sigma 1.5: int(3.5 * 1.5 + 0.5)
    masked = (ssim_map * covered)[pad:-pad, pad:-pad]
    per_channel = masked.sum(axis=(0, 1)) / covered[pad:-pad, pad:-pad].sum(axis=(0, 1))
    return {"psnr": float(psnr), "ssim": float(np.mean(per_channel))}


def score_sidd(restored: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``evaluate_sidd.m``: the float32 denoised block (clamped to [0, 1], not rounded) against
    ``im2single`` of the uint8 ground truth; MATLAB ``psnr`` and 3-D ``ssim`` with range 1."""
    target = np.asarray(target)
    if target.dtype == np.uint8:
        target = target.astype(np.float32) / np.float32(255)
    restored = np.asarray(restored, np.float32)
    return {"psnr": matlab_psnr(restored, target.astype(np.float32)), "ssim": matlab_ssim(restored, target.astype(np.float32))}


def score_dpdd(restored: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """The DPDD test scripts: PSNR ``10 log10(1 / MSE)`` (100 for identical images), scikit-image's
    default SSIM (7 x 7 uniform window, sample covariance, data range 1, mean over channels) and
    the mean absolute error, on the float output against the float ground truth."""
    from skimage.metrics import structural_similarity

    restored, target = np.asarray(restored, np.float64), np.asarray(target, np.float64)
    if restored.shape != target.shape:
        raise ValueError(f"restored image {restored.shape} and ground truth {target.shape} differ in size")
    mse = np.mean((target - restored) ** 2)
    psnr = 10 * math.log10(1 / mse) if mse > 0 else 100.0
    channel_axis = 2 if restored.ndim == 3 else None
    ssim = structural_similarity(target, restored, data_range=1, channel_axis=channel_axis)
    return {"psnr": psnr, "ssim": float(ssim), "mae": float(np.mean(np.abs(target - restored)))}


def score_gaussian_denoising(restored: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``evaluate_gaussian_{color,gray}_denoising.py``: PSNR with peak 255 over every pixel and
    channel of the 8-bit images (the official scripts compute no SSIM)."""
    restored, target = _check_uint8(restored, "restored image"), _check_uint8(target, "ground truth")
    mse = np.mean((restored.astype(np.float64) - target.astype(np.float64)) ** 2)
    return {"psnr": 20 * math.log10(255.0 / math.sqrt(mse)) if mse > 0 else math.inf}


def score_cassi(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """CASSI reconstruction of one scene (``H x W x bands``), both official protocols:

    - ``psnr``, ``ssim``: the paper's tables, ``Cal_quality_assessment.m``: the prediction
      clamped to [0, 1], both cubes through ``im2uint8``, then per band PSNR with peak 255 and
      Wang's 'valid' SSIM with L = 255, averaged over the bands.
    - ``psnr_train_log``, ``ssim_train_log``: what MST prints while training
      (``torch_psnr``/``torch_ssim``): cubes quantised as ``round(x * 256)`` for a per-band PSNR
      with peak 255; SSIM with an 11 x 11 Gaussian, zero padding and range 1 on the raw values.
    """
    from .spectral import cassi_psnr, cassi_ssim

    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"CASSI protocol takes two H x W x bands cubes of one size, got {pred.shape} and {truth.shape}")
    est, gt = im2uint8(np.clip(pred, 0.0, 1.0)).astype(np.float64), im2uint8(truth).astype(np.float64)
    bands = range(pred.shape[-1])
    psnr = np.mean([10 * math.log10(255.0**2 / np.mean((gt[..., c] - est[..., c]) ** 2)) for c in bands])
    ssim = np.mean([ssim_wang(gt[..., c], est[..., c], 255.0) for c in bands])
    as_chw = lambda cube: np.ascontiguousarray(cube.transpose(2, 0, 1))  # noqa: E731
    return {
        "psnr": float(psnr), "ssim": float(ssim),
        "psnr_train_log": float(cassi_psnr(as_chw(pred), as_chw(truth))),
        "ssim_train_log": float(cassi_ssim(as_chw(pred), as_chw(truth))),
    }


def score_ntire2022(pred: np.ndarray, target: np.ndarray, border: int = 128) -> dict[str, float]:
    """MST++ on NTIRE 2022: MRAE, RMSE and PSNR of the cubes (``H x W x bands``) after cropping
    ``border`` pixels on every side, as the official test code (:mod:`glmha.metrics.spectral`)."""
    from .spectral import mrae, rmse, spectral_psnr

    pred, target = (np.ascontiguousarray(np.asarray(a, np.float64).transpose(2, 0, 1)) for a in (pred, target))
    return {"mrae": float(mrae(pred, target, border)), "rmse": float(rmse(pred, target, border)),
            "psnr": float(spectral_psnr(pred, target, border))}


def _dnd_has_no_ground_truth(*_args) -> dict[str, float]:
    raise ValueError("DND has no public ground truth: its submission files are scored by the benchmark's server")


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Protocol:
    """One official evaluation protocol.

    ``restored`` is the form the official test script stores a restored image in before it
    is scored (``"uint8"``: ``img_as_ubyte`` of the clamped output; ``"float"``: the clamped
    float32 output; ``"raw"``: the output as it is, CASSI and MST++); ``target`` the form the
    official evaluation reads the ground truth in (``"uint8"`` or ``"float"``).
    """

    name: str
    script: str
    restored: str
    target: str
    metrics: tuple[str, ...]
    score: Callable[..., dict[str, float]]


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("deraining", "Restormer Deraining/evaluate_PSNR_SSIM.m", "uint8", "uint8", ("psnr", "ssim"), score_deraining),
        Protocol("gopro_hide", "Restormer Motion_Deblurring/evaluate_gopro_hide.m", "uint8", "uint8", ("psnr", "ssim"), score_gopro_hide),
        Protocol("realblur", "Restormer Motion_Deblurring/evaluate_realblur.py", "uint8", "uint8", ("psnr", "ssim"), score_realblur),
        Protocol("sidd", "Restormer Denoising/evaluate_sidd.m", "float", "uint8", ("psnr", "ssim"), score_sidd),
        Protocol("dnd", "Restormer Denoising/test_real_denoising_dnd.py (submission files, scored online)", "float", "none", (),
                 _dnd_has_no_ground_truth),
        Protocol("dpdd", "Restormer Defocus_Deblurring/test_{single_image,dual_pixel}_defocus_deblur.py", "float", "float",
                 ("psnr", "ssim", "mae"), score_dpdd),
        Protocol("gaussian_denoising", "Restormer Denoising/evaluate_gaussian_{color,gray}_denoising.py", "uint8", "uint8",
                 ("psnr",), score_gaussian_denoising),
        Protocol("cassi", "MST simulation/test_code/Quality_Metrics/Cal_quality_assessment.m (and train_code/utils.py)", "raw", "float",
                 ("psnr", "ssim", "psnr_train_log", "ssim_train_log"), score_cassi),
        Protocol("ntire2022", "MST++ test_develop_code (Loss_MRAE, Loss_RMSE, Loss_PSNR)", "raw", "float",
                 ("mrae", "rmse", "psnr"), score_ntire2022),
    )
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; a ValueError lists the known ones."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; available: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def as_stored(protocol: Protocol, restored: np.ndarray) -> np.ndarray:
    """A float model output (``H x W x C``) in the form the protocol's test script keeps it."""
    restored = np.ascontiguousarray(restored, np.float32)
    if protocol.restored == "raw":
        return restored
    restored = np.clip(restored, 0.0, 1.0)
    return img_as_ubyte(restored) if protocol.restored == "uint8" else restored


def as_read(protocol: Protocol, target: np.ndarray) -> np.ndarray:
    """A float ground truth in [0, 1] (decoded from an 8-bit file when the protocol reads uint8) in
    the form the protocol's evaluation reads it."""
    target = np.ascontiguousarray(target, np.float32)
    if protocol.target == "uint8":
        return np.clip(np.rint(target.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return target
