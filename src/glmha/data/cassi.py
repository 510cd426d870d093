"""The CASSI forward model (coded aperture snapshot spectral imaging), as MST's simulation uses it.

A scene is a cube ``B x C x H x W`` (C bands). Single-disperser CASSI multiplies every band by
the same 2-D coded aperture ``mask`` (``H x W``, 0/1), disperses band ``c`` by ``step * c``
pixels along the width (``step = 2`` in the official simulation) and sums the bands on the
detector: the measurement is ``B x H x (W + step * (C - 1))``.

The network inputs of the official MST code are produced from a cube and the mask:

- measurement settings (:func:`measurement_input`): ``"H"`` = :func:`shift_back` of
  ``measurement / C * 2`` (each band gets the window of the measurement its dispersion
  covers; the scaling keeps it near the cube's range), ``"HM"`` = ``H`` times the 3-D mask,
  ``"Y"`` = the raw measurement;
- mask settings (:func:`mask_input`): ``"Phi"`` = the shifted 3-D mask
  ``B x C x H x (W + step * (C - 1))``, ``"Phi_PhiPhiT"`` = (``Phi``, ``sum_c Phi^2`` with its
  zeros replaced by 1), ``"Mask"`` = the unshifted 3-D mask.

Everything works for any spatial size, band count and step; with the official 256 x 256 mask
and 28 bands the measurement is 256 x 310. MST takes ``"H"`` and ``"Phi"``.

Real data (the official MST ``real/`` code): the camera's coded aperture is 660 x 660 and its
measurements 660 x 714. For training, :func:`real_measurement` simulates what that camera
records: the measurement of a cube, scaled by ``gain * 2 / bands`` (``gain`` 1.2), then
binomial shot noise (:func:`shot_noise`, quantum efficiency 0.4, 2048 grey levels). A
recorded measurement is fed to the network as :func:`normalize_real_measurement` makes it:
clipped to [0, 1], then scaled so that its maximum is 0.8. The real-data MST takes that
measurement alone (:class:`glmha.models.mst_real.RealMST`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .hyperspectral import read_mat

__all__ = [
    "CASSI",
    "MASK_SETTINGS",
    "MEASUREMENT_SETTINGS",
    "REAL_BIT_DEPTH",
    "REAL_GAIN",
    "REAL_QUANTUM_EFFICIENCY",
    "load_mask",
    "mask_3d",
    "mask_input",
    "measure",
    "measurement_input",
    "normalize_real_measurement",
    "random_mask",
    "real_measurement",
    "shift",
    "shift_back",
    "shot_noise",
]

MEASUREMENT_SETTINGS = ("H", "HM", "Y")
MASK_SETTINGS = ("Phi", "Phi_PhiPhiT", "Mask")
# The sensor model of the official real-data training code.
REAL_GAIN = 1.2
REAL_QUANTUM_EFFICIENCY = 0.4
REAL_BIT_DEPTH = 2048
REAL_PEAK = 0.8  # the maximum of a normalised real measurement


def load_mask(path: str | os.PathLike, key: str = "mask") -> torch.Tensor:
    """Read a coded aperture (``H x W`` float32 tensor) from a MATLAB ``.mat`` file (v5 or v7.3) or ``.npy``.

    The official simulation mask is ``TSA_simu_data/mask.mat``, key ``mask``, 256 x 256.
    Integer and logical masks are converted to float as they are (0/1 apertures); complex
    values, structs, NaN or Inf, and an all-zero mask (no light passes) are errors.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        from ..io.images import check_regular_file

        path = check_regular_file(path, "mask file")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"cannot read {path} as a .npy array: {(str(err).strip() or type(err).__name__).splitlines()[0]}") from None
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{path}: unsupported mask type {array.dtype}; expected real numbers")
    else:
        array = read_mat(path, key)
    if array.ndim != 2:
        raise ValueError(f"{path}: the coded aperture {key!r} must be 2-D (H x W), got shape {array.shape}")
    array = np.array(array, dtype=np.float32)  # a copy: .npy masks are memory-mapped
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: the coded aperture holds {int((~np.isfinite(array)).sum())} NaN or infinite value(s)")
    if not array.any():
        raise ValueError(f"{path}: the coded aperture is all zeros (no light passes it)")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1 + 1e-6:  # a transmittance: 0 (blocked) to 1 (open)
        hint = "; divide a 0..255 mask by 255" if high > 1 else ""
        raise ValueError(f"{path}: the coded aperture holds values from {low:g} to {high:g}; a mask is a transmittance "
                         f"in [0, 1]{hint}")
    return torch.from_numpy(np.ascontiguousarray(array))


def random_mask(height: int, width: int, seed: int = 0, density: float = 0.5) -> torch.Tensor:
    """A seeded random binary coded aperture, ``H x W`` float32, each pixel open with probability ``density``."""
    if height < 1 or width < 1:
        raise ValueError(f"mask size must be positive, got {height}x{width}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(height, width, generator=generator) < density).float()


def mask_3d(mask: torch.Tensor, bands: int, batch: int | None = None) -> torch.Tensor:
    """Repeat a 2-D mask over the bands: ``bands x H x W``, or ``batch x bands x H x W`` when ``batch`` is given."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be a 2-D H x W coded aperture, got shape {tuple(mask.shape)}")
    out = mask.unsqueeze(0).expand(bands, -1, -1)
    return out if batch is None else out.unsqueeze(0).expand(batch, -1, -1, -1)


def _check_cube(cube: torch.Tensor, what: str = "cube") -> None:
    if not isinstance(cube, torch.Tensor) or cube.dim() != 4:
        shape = tuple(cube.shape) if isinstance(cube, torch.Tensor) else type(cube).__name__
        raise ValueError(f"{what} must be a B x C x H x W tensor, got {shape}")


def shift(cube: torch.Tensor, step: int = 2) -> torch.Tensor:
    """Disperse: band ``c`` of ``B x C x H x W`` moves ``step * c`` columns right into ``B x C x H x (W + step (C-1))`` (zeros elsewhere)."""
    _check_cube(cube)
    b, c, h, w = cube.shape
    out = cube.new_zeros(b, c, h, w + step * (c - 1))
    for band in range(c):
        out[:, band, :, step * band:step * band + w] = cube[:, band]
    return out


def shift_back(x: torch.Tensor, bands: int | None = None, step: int = 2) -> torch.Tensor:
    """Undo the dispersion: band ``c`` is read from columns ``step * c .. step * c + W``.

    ``x`` is either a shifted cube ``B x C x H x W'`` (band ``c`` read from its own plane:
    the exact inverse of :func:`shift`) or a measurement ``B x H x W'`` with ``bands`` given
    (every band read from the same measurement, as the official ``shift_back``). The output is
    ``B x C x H x (W' - step (C-1))``.
    """
    if x.dim() == 3:
        if bands is None:
            raise ValueError("shift_back of a B x H x W' measurement needs the number of bands")
        x = x.unsqueeze(1).expand(-1, bands, -1, -1)
    _check_cube(x, "shifted input")
    c, full_width = x.shape[1], x.shape[-1]
    if bands is not None and bands != c:
        raise ValueError(f"the shifted cube has {c} bands, not {bands}")
    width = full_width - step * (c - 1)
    if width < 1:
        raise ValueError(f"a {full_width}-column input cannot hold {c} bands dispersed by {step} px")
    return torch.stack([x[:, band, :, step * band:step * band + width] for band in range(c)], dim=1)


def measure(cube: torch.Tensor, mask3d: torch.Tensor, step: int = 2) -> torch.Tensor:
    """The CASSI measurement ``sum_c shift(mask3d * cube)_c``: ``B x H x (W + step (C-1))``.

    ``mask3d`` is ``C x H x W`` or ``B x C x H x W`` (from :func:`mask_3d`).
    """
    _check_cube(cube)
    if mask3d.shape[-3:] != cube.shape[-3:]:
        raise ValueError(f"3-D mask {tuple(mask3d.shape)} does not match the cube {tuple(cube.shape)} (C x H x W)")
    return shift(cube * mask3d, step).sum(dim=1)


def measurement_input(cube: torch.Tensor, mask3d: torch.Tensor, setting: str = "H", step: int = 2) -> torch.Tensor:
    """The official network input of a cube: ``"H"``, ``"HM"`` (``B x C x H x W``) or ``"Y"`` (``B x H x W'``)."""
    if setting not in MEASUREMENT_SETTINGS:
        raise ValueError(f"measurement setting must be one of {MEASUREMENT_SETTINGS}, got {setting!r}")
    meas = measure(cube, mask3d, step)
    if setting == "Y":
        return meas
    bands = cube.shape[1]
    h = shift_back(meas / bands * 2, bands=bands, step=step)
    return h * mask3d if setting == "HM" else h


def mask_input(mask3d: torch.Tensor, setting: str = "Phi", step: int = 2) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The official mask input: ``"Phi"`` (shifted 3-D mask), ``"Phi_PhiPhiT"`` (``Phi`` and ``sum_c Phi^2``, zeros set to 1) or ``"Mask"``."""
    if setting not in MASK_SETTINGS:
        raise ValueError(f"mask setting must be one of {MASK_SETTINGS}, got {setting!r}")
    if mask3d.dim() == 3:
        mask3d = mask3d.unsqueeze(0)
    if setting == "Mask":
        return mask3d
    phi = shift(mask3d, step)
    if setting == "Phi":
        return phi
    phi_s = phi.square().sum(dim=1)
    return phi, torch.where(phi_s == 0, torch.ones_like(phi_s), phi_s)


def shot_noise(
    signal: torch.Tensor,
    quantum_efficiency: float = REAL_QUANTUM_EFFICIENCY,
    bit_depth: int = REAL_BIT_DEPTH,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Photon shot noise of a detector with ``bit_depth`` grey levels per unit signal.

    ``signal`` (>= 0, in units of the full scale) stands for ``n = floor(signal * bit_depth /
    quantum_efficiency)`` photons; each is detected with probability ``quantum_efficiency``,
    and the count is read out as ``count / bit_depth``. So the result has mean
    ``n * qe / bit_depth`` (``signal`` up to one grey level) and variance
    ``n * qe * (1 - qe) / bit_depth**2``. Drawn from ``generator`` on the signal's device.
    """
    if not 0.0 < quantum_efficiency <= 1.0:
        raise ValueError(f"quantum_efficiency must be in (0, 1], got {quantum_efficiency}")
    if bit_depth < 1:
        raise ValueError(f"bit_depth must be positive, got {bit_depth}")
    if bool((signal < 0).any()):
        raise ValueError("shot noise needs a non-negative signal")
    photons = torch.floor(signal.double() * bit_depth / quantum_efficiency)
    counts = torch.binomial(photons, torch.full_like(photons, quantum_efficiency), generator=generator)
    return (counts / bit_depth).to(signal.dtype)


def real_measurement(
    cube: torch.Tensor,
    mask: torch.Tensor,
    step: int = 2,
    gain: float = REAL_GAIN,
    quantum_efficiency: float = REAL_QUANTUM_EFFICIENCY,
    bit_depth: int = REAL_BIT_DEPTH,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The noisy measurement the real-data MST trains on: ``B x H x (W + step (C-1))``.

    ``measure(cube, mask) / C * 2 * gain`` with :func:`shot_noise`, as the official real-data
    training code simulates its camera. ``cube`` is ``B x C x H x W``, ``mask`` the ``H x W``
    coded aperture (or a ``B x H x W`` stack, one per sample).
    """
    _check_cube(cube)
    bands = cube.shape[1]
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3 or tuple(mask.shape[-2:]) != tuple(cube.shape[-2:]) or mask.shape[0] not in (1, cube.shape[0]):
        raise ValueError(f"the coded aperture {tuple(mask.shape)} does not match the cube {tuple(cube.shape)} (H x W)")
    # In float64, as the official numpy code, so that the photon counts are floored alike.
    meas = measure(cube.double(), mask.unsqueeze(1).expand(-1, bands, -1, -1).double(), step)
    return shot_noise(meas / bands * 2 * gain, quantum_efficiency, bit_depth, generator).to(cube.dtype)


def normalize_real_measurement(meas: torch.Tensor, peak: float = REAL_PEAK) -> torch.Tensor:
    """A recorded measurement as the official real-data test code feeds it: clipped to [0, 1], then scaled to maximum ``peak``."""
    meas = meas.clamp(0, 1)
    top = meas.amax()
    if not bool(top > 0):
        raise ValueError("the measurement is zero everywhere (after clipping to [0, 1]); nothing to reconstruct")
    return meas / top * peak


class CASSI(nn.Module):
    """A CASSI system with a fixed coded aperture: ``cassi(cube)`` is the measurement.

    The mask is a buffer, so ``.to(device)`` moves it. :meth:`inputs` gives the pair an MST
    model takes (``model(*cassi.inputs(cube))``).
    """

    def __init__(self, mask: torch.Tensor, bands: int = 28, step: int = 2):
        super().__init__()
        if mask.dim() != 2:
            raise ValueError(f"mask must be a 2-D H x W coded aperture, got shape {tuple(mask.shape)}")
        self.register_buffer("mask", mask.float())
        self.bands = bands
        self.step = step

    @property
    def mask3d(self) -> torch.Tensor:
        return mask_3d(self.mask, self.bands)

    def _check(self, cube: torch.Tensor) -> None:
        _check_cube(cube)
        if tuple(cube.shape[1:]) != (self.bands, *self.mask.shape):
            raise ValueError(
                f"this CASSI system images {self.bands} bands of {self.mask.shape[0]}x{self.mask.shape[1]}, "
                f"got a cube of shape {tuple(cube.shape)}"
            )

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        self._check(cube)
        return measure(cube, self.mask3d, self.step)

    def inputs(
        self, cube: torch.Tensor, input_setting: str = "H", mask_setting: str = "Phi"
    ) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """``(measurement input, mask input)`` for a batch of cubes, the mask input expanded to the batch."""
        self._check(cube)
        mask3d = self.mask3d.to(cube.dtype)
        meas = measurement_input(cube, mask3d, input_setting, self.step)
        masks = mask_input(mask3d, mask_setting, self.step)
        if isinstance(masks, tuple):
            return meas, tuple(m.expand(cube.shape[0], *m.shape[1:]) for m in masks)
        return meas, masks.expand(cube.shape[0], *masks.shape[1:])
