"""Built-in hyperspectral scenes that need no download, made from measured spectra and real photographs.

A scene (:func:`synthetic_scene`) is built from data shipped inside installed packages:

1. **Layout.** A colour photograph bundled with scikit-image (``SCENE_PHOTOS``) is picked,
   a random square window of 40-100 % of its short side is cut, randomly flipped, and
   resized to ``height x width``. SLIC superpixels (``skimage.segmentation.slic``) split it
   into about ``regions`` areas that follow the photo's structure.
2. **Materials.** Every area gets a reflectance that is a random convex mix of two measured
   reflectance spectra from colour-science's ColorChecker sets (``colour.SDS_COLOURCHECKERS``:
   BabelColor average, N. Ohta, ISO 17321-1, PMC; 102 spectra), linearly interpolated to
   the band centres. The one-hot area maps are blurred with a Gaussian (``sigma=1.5`` px) and
   renormalised, so neighbouring materials mix over a few pixels at their borders.
3. **Texture and shading.** The reflectance of each pixel is multiplied by the photo's
   luminance (``skimage.color.rgb2gray``), mapped to ``[0.15, 1]``: the real photograph's
   shading and texture.
4. **Light.** The product is lit by a measured illuminant from ``colour.SDS_ILLUMINANTS``
   (``ILLUMINANTS``: daylight, tungsten, fluorescent, LED), normalised to a peak of 1 over
   the bands; the cube is scaled so its maximum is a random exposure in ``[0.6, 1]``.
5. **RGB** (:func:`render_rgb`): each pixel's spectrum is projected on a measured camera
   sensitivity (``colour.MSDS_CAMERA_SENSITIVITIES``: Nikon 5100 or Sigma SD Merrill) with
   each channel's curve normalised to unit sum over the bands (an equal-energy white of
   value v gives RGB (v, v, v)), or on the CIE 1931 2-degree observer (XYZ with Y
   normalised the same way) followed by the XYZ-to-linear-sRGB matrix; clipped to [0, 1]
   and quantised to 8 bits like the JPEG inputs of NTIRE 2022.

Band sets: :data:`RGB2HSI_WAVELENGTHS` (31 bands, 400-700 nm every 10 nm, as NTIRE 2022) and
:data:`CASSI_WAVELENGTHS` (the 28 band centres of the CAVE/KAIST CASSI simulation,
453.3-648.1 nm). Everything is seeded: the same seed gives the same scene on any machine.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "CAMERA_RESPONSES",
    "CASSI_WAVELENGTHS",
    "ILLUMINANTS",
    "RGB2HSI_WAVELENGTHS",
    "REFLECTANCE_SETS",
    "SCENE_PHOTOS",
    "SyntheticHSI",
    "camera_response",
    "illuminant_spectrum",
    "reflectance_library",
    "render_rgb",
    "synthetic_scene",
]

RGB2HSI_WAVELENGTHS = tuple(float(w) for w in range(400, 701, 10))
CASSI_WAVELENGTHS = (
    453.3, 457.6, 462.1, 466.8, 471.6, 476.5, 481.6, 486.9, 492.4, 498.0, 503.9, 509.9, 516.2, 522.7,
    529.5, 536.5, 543.8, 551.4, 558.6, 567.5, 575.3, 584.3, 594.4, 604.2, 614.4, 625.1, 636.3, 648.1,
)
REFLECTANCE_SETS = ("BabelColor Average", "ColorChecker N Ohta", "ISO 17321-1", "PMC")
ILLUMINANTS = ("D65", "D50", "A", "FL2", "FL7", "FL11", "LED-B3", "LED-BH1", "LED-V2")
CAMERA_RESPONSES = {"nikon_5100": "Nikon 5100 (NPL)", "sigma_sd_merrill": "Sigma SDMerill (NPL)", "cie_1931": None}
SCENE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "ihc.png", "hubble_deep_field.jpg")


def _wavelengths(wavelengths: Sequence[float]) -> np.ndarray:
    wl = np.asarray(wavelengths, dtype=np.float64)
    if wl.ndim != 1 or wl.size < 2 or np.any(np.diff(wl) <= 0):
        raise ValueError("wavelengths must be an increasing sequence of at least 2 band centres (nm)")
    if wl[0] < 400 or wl[-1] > 700:
        raise ValueError(f"wavelengths must lie in 400-700 nm (the range every reflectance set covers), got {wl[0]}-{wl[-1]}")
    return wl


def _sample(distribution, wavelengths: np.ndarray, outside: float | None = None) -> np.ndarray:
    # Linear interpolation of a colour-science (multi-)spectral distribution at the band centres.
    domain = np.asarray(distribution.wavelengths, dtype=np.float64)
    values = np.asarray(distribution.values, dtype=np.float64)
    if values.ndim == 1:
        return np.interp(wavelengths, domain, values, left=outside, right=outside)
    return np.stack([np.interp(wavelengths, domain, v, left=outside, right=outside) for v in values.T])


@lru_cache(maxsize=8)
def _reflectances(wavelengths: tuple[float, ...]) -> tuple[tuple[str, ...], np.ndarray]:
    import colour

    names, spectra = [], []
    for set_name in REFLECTANCE_SETS:
        for patch, sd in colour.SDS_COLOURCHECKERS[set_name].items():
            names.append(f"{set_name}: {patch}")
            spectra.append(_sample(sd, np.asarray(wavelengths)))
    return tuple(names), np.clip(np.stack(spectra), 0.0, 1.0)


def reflectance_library(wavelengths: Sequence[float] = RGB2HSI_WAVELENGTHS) -> tuple[list[str], np.ndarray]:
    """Names and ``N x C`` reflectances (in [0, 1]) of every measured ColorChecker patch, at the band centres."""
    names, spectra = _reflectances(tuple(float(w) for w in _wavelengths(wavelengths)))
    return list(names), spectra.copy()


def illuminant_spectrum(name: str, wavelengths: Sequence[float] = RGB2HSI_WAVELENGTHS) -> np.ndarray:
    """A colour-science illuminant's relative power at the band centres, normalised to a peak of 1."""
    import colour

    if name not in colour.SDS_ILLUMINANTS:
        raise ValueError(f"unknown illuminant {name!r}; e.g. {list(ILLUMINANTS)}")
    power = _sample(colour.SDS_ILLUMINANTS[name], _wavelengths(wavelengths))
    return power / power.max()


def camera_response(name: str = "nikon_5100", wavelengths: Sequence[float] = RGB2HSI_WAVELENGTHS) -> np.ndarray:
    """``3 x C`` matrix taking a spectrum at the band centres to RGB (see the module doc for the normalisation)."""
    import colour

    if name not in CAMERA_RESPONSES:
        raise ValueError(f"unknown camera response {name!r}; available: {sorted(CAMERA_RESPONSES)}")
    wl = _wavelengths(wavelengths)
    if name == "cie_1931":
        cmfs = _sample(colour.MSDS_CMFS["CIE 1931 2 Degree Standard Observer"], wl, outside=0.0)
        to_xyz = cmfs / cmfs[1].sum()
        to_rgb = np.asarray(colour.models.RGB_COLOURSPACE_sRGB.matrix_XYZ_to_RGB, dtype=np.float64)
        return np.einsum("ij,jc->ic", to_rgb, to_xyz)  # einsum, not BLAS: the same sums on every CPU
    sensitivity = _sample(colour.MSDS_CAMERA_SENSITIVITIES[CAMERA_RESPONSES[name]], wl, outside=0.0)
    return sensitivity / sensitivity.sum(axis=1, keepdims=True)


def render_rgb(cube: np.ndarray | torch.Tensor, wavelengths: Sequence[float] = RGB2HSI_WAVELENGTHS,
               response: str = "nikon_5100", bits: int | None = 8) -> np.ndarray:
    """RGB image ``3 x H x W`` (float32 in [0, 1]) of a ``C x H x W`` cube through a camera response.

    ``bits`` quantises the result (8: like a JPEG source); ``None`` keeps it continuous.
    """
    cube = np.asarray(cube, dtype=np.float64)
    matrix = camera_response(response, wavelengths)
    if cube.ndim != 3 or cube.shape[0] != matrix.shape[1]:
        raise ValueError(f"cube must be C x H x W with C = {matrix.shape[1]} bands, got shape {cube.shape}")
    rgb = np.clip(np.einsum("kc,chw->khw", matrix, cube), 0.0, 1.0)
    if bits is not None:
        levels = 2**bits - 1
        rgb = np.round(rgb * levels) / levels
    return rgb.astype(np.float32)


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data
    from skimage.io import imread

    path = Path(skimage.data.__file__).parent / name
    if not path.is_file():
        raise FileNotFoundError(f"scikit-image sample photo not found: {path}")
    return imread(path)[..., :3].astype(np.float32) / 255.0


def _layout_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    from skimage.transform import resize

    photo = _photo(SCENE_PHOTOS[rng.integers(len(SCENE_PHOTOS))])
    side = int(min(photo.shape[:2]) * rng.uniform(0.4, 1.0))
    top = rng.integers(photo.shape[0] - side + 1)
    left = rng.integers(photo.shape[1] - side + 1)
    window = photo[top:top + side, left:left + side]
    if rng.random() < 0.5:
        window = window[:, ::-1]
    if rng.random() < 0.5:
        window = window[::-1]
    return resize(window, (height, width), anti_aliasing=True).astype(np.float32)


# The luminance of the scene layout is written out so that no BLAS call takes part: BLAS
# kernels are chosen per CPU (AVX-512 kernels fuse the multiply-adds, AVX2 ones do not), and
# the built-in data must be the same on every machine. The 3-term dot product is the chain of
# fused multiply-adds the AVX-512 kernel computes, emulated in float64 (where a product of two
# float32 numbers is exact), so the scenes stay what they were on such machines.
_GREY = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray's luma weights


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """``skimage.color.rgb2gray`` of a float32 ``H x W x 3`` image as fma(b, w2, fma(g, w1, r w0)), without BLAS."""
    w = np.asarray(_GREY, dtype=np.float32).astype(np.float64)
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    acc = (r * w[0]).astype(np.float32).astype(np.float64)
    acc = (g * w[1] + acc).astype(np.float32).astype(np.float64)
    return (b * w[2] + acc).astype(np.float32)


def synthetic_scene(
    seed: int,
    height: int = 64,
    width: int = 64,
    wavelengths: Sequence[float] = RGB2HSI_WAVELENGTHS,
    regions: int = 24,
    illuminant: str | None = None,
) -> np.ndarray:
    """A seeded hyperspectral scene, float32 ``C x H x W`` in [0, 1] (how it is made: module doc)."""
    from scipy.ndimage import gaussian_filter
    from skimage.segmentation import slic

    if height < 8 or width < 8:
        raise ValueError(f"scenes need at least 8x8 pixels, got {height}x{width}")
    wl = _wavelengths(wavelengths)
    rng = np.random.default_rng(seed)
    photo = _layout_photo(rng, height, width)
    # SLIC's own Lab conversion is a BLAS product too; its last-bit differences across CPUs move
    # no superpixel border of the scenes the demo, the studies and the tests use (checked).
    labels = slic(photo, n_segments=regions, compactness=10.0, start_label=0, channel_axis=-1)
    n_areas = int(labels.max()) + 1

    _, library = _reflectances(tuple(float(w) for w in wl))
    pairs = rng.integers(len(library), size=(n_areas, 2))
    weights = rng.uniform(0.0, 1.0, size=(n_areas, 1))
    area_spectra = weights * library[pairs[:, 0]] + (1 - weights) * library[pairs[:, 1]]  # areas x C

    abundance = np.stack([gaussian_filter((labels == a).astype(np.float64), sigma=1.5) for a in range(n_areas)])
    abundance /= abundance.sum(axis=0, keepdims=True)
    reflectance = np.einsum("ac,ahw->chw", area_spectra, abundance)

    shading = _luminance(photo).astype(np.float64)
    shading = 0.15 + 0.85 * (shading - shading.min()) / max(float(np.ptp(shading)), 1e-6)
    light = illuminant_spectrum(illuminant or ILLUMINANTS[rng.integers(len(ILLUMINANTS))], wl)
    cube = reflectance * shading[None] * light[:, None, None]
    cube *= rng.uniform(0.6, 1.0) / cube.max()
    return cube.astype(np.float32)


class SyntheticHSI(Dataset):
    """A fixed, seeded set of synthetic scenes for training and tests, no download needed.

    ``task="rgb2hsi"``: items are ``(rgb 3 x H x W, cube 31 x H x W)`` (RGB through
    ``response``); ``task="cassi"``: items are 28-band cubes ``28 x H x W`` (feed them to
    :class:`glmha.data.cassi.CASSI`). Item ``i`` is scene ``seed + i``, generated on first
    access and cached.
    """

    def __init__(self, count: int = 16, size: int = 64, task: str = "rgb2hsi", seed: int = 0,
                 response: str = "nikon_5100"):
        if task not in ("rgb2hsi", "cassi"):
            raise ValueError(f"task must be 'rgb2hsi' or 'cassi', got {task!r}")
        if response not in CAMERA_RESPONSES:
            raise ValueError(f"unknown camera response {response!r}; available: {sorted(CAMERA_RESPONSES)}")
        self.count, self.size, self.task, self.seed, self.response = count, size, task, seed, response
        self.wavelengths = RGB2HSI_WAVELENGTHS if task == "rgb2hsi" else CASSI_WAVELENGTHS
        self._cache: dict[int, tuple[torch.Tensor, ...]] = {}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} scenes")
        if index not in self._cache:
            cube = synthetic_scene(self.seed + index, self.size, self.size, self.wavelengths)
            item: tuple[torch.Tensor, ...] = (torch.from_numpy(cube),)
            if self.task == "rgb2hsi":
                item = (torch.from_numpy(render_rgb(cube, self.wavelengths, self.response)), item[0])
            self._cache[index] = item
        item = self._cache[index]
        return item if len(item) > 1 else item[0]
