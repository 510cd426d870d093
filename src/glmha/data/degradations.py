"""Synthetic degradations of clean photographs, for demos, tests and smoke training.

Every function takes a clean ``H x W x C`` float32 image in ``[0, 1]`` and a
``numpy.random.Generator``; the same generator state gives the same output. The photographs
are the colour images shipped inside scikit-image (no download).

- :func:`add_rain` - rain streaks: sparse drops smeared along a line of random angle and
  length, blended over the image with a screen blend (rain only brightens).
- :func:`camera_shake_kernel` - motion blur from a random camera trajectory (a random walk
  with inertia), rasterised with bilinear splatting.
- :func:`disk_kernel` / :func:`dual_pixel_kernels` - defocus blur as an anti-aliased disk,
  and its left/right halves, the point-spread functions of the two dual-pixel views.
- :func:`add_gaussian_noise` - additive white Gaussian noise, sigma on the 0..255 scale.
- :func:`add_sensor_noise` - signal-dependent (Poisson-Gaussian) noise, a stand-in for
  real camera noise (SIDD-style pairs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

# Colour photographs shipped inside scikit-image's wheel (read from its data folder, never fetched).
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png")


def load_sample_photos(names: Sequence[str] = SAMPLE_PHOTOS, grayscale: bool = False) -> list[np.ndarray]:
    """The scikit-image sample photographs as float32 ``H x W x C`` arrays in ``[0, 1]``."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.io import imread

    folder = Path(skimage.data.__file__).parent
    photos = []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"scikit-image sample photo not found: {path}")
        image = imread(path)[..., :3].astype(np.float32) / 255.0
        if grayscale:
            image = rgb2gray(image).astype(np.float32)[..., None]
        photos.append(image)
    return photos


def _value(spec: float | Sequence[float], rng: np.random.Generator) -> float:
    """A fixed number, or a uniform draw from a ``[low, high]`` range."""
    if isinstance(spec, (int, float)):
        return float(spec)
    low, high = spec
    return float(rng.uniform(low, high))


def line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """Normalised kernel of a straight line of ``length`` pixels at ``angle_deg`` (0 = horizontal)."""
    size = int(np.ceil(length)) | 1  # odd, so the line is centred
    kernel = np.zeros((size, size), np.float32)
    theta = np.deg2rad(angle_deg)
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * size):
        _splat(kernel, size // 2 - t * np.sin(theta), size // 2 + t * np.cos(theta))
    return kernel / kernel.sum()


def _splat(grid: np.ndarray, row: float, col: float, weight: float = 1.0) -> None:
    # Bilinear splat of one point: the trajectory stays smooth at sub-pixel positions.
    r0, c0 = int(np.floor(row)), int(np.floor(col))
    fr, fc = row - r0, col - c0
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            r, c = r0 + dr, c0 + dc
            if 0 <= r < grid.shape[0] and 0 <= c < grid.shape[1]:
                grid[r, c] += weight * wr * wc


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve every channel with ``kernel`` (reflected borders)."""
    return np.stack([ndimage.convolve(image[..., c], kernel, mode="reflect") for c in range(image.shape[-1])], -1)


def add_rain(
    image: np.ndarray,
    rng: np.random.Generator,
    density: float | Sequence[float] = (0.002, 0.01),
    angle: float | Sequence[float] = (-30.0, 30.0),
    length: float | Sequence[float] = (8.0, 24.0),
    brightness: float | Sequence[float] = (0.6, 0.9),
) -> np.ndarray:
    """Add rain streaks: a fraction ``density`` of pixels start a drop, smeared along a line of
    ``length`` pixels at ``angle`` degrees from vertical. Each argument is a value or a range."""
    h, w = image.shape[:2]
    drops = (rng.random((h, w)) < _value(density, rng)).astype(np.float32)
    drops *= rng.uniform(0.5, 1.0, (h, w)).astype(np.float32)  # drops differ in strength
    streak_length = _value(length, rng)
    streaks = ndimage.convolve(drops, line_kernel(streak_length, 90.0 + _value(angle, rng)), mode="wrap")
    # The kernel sums to one: rescale so a streak's core reaches ``brightness``.
    streaks = np.clip(streaks * streak_length * _value(brightness, rng), 0, 1)[..., None]
    return (1 - (1 - image) * (1 - streaks)).astype(np.float32)


def camera_shake_kernel(
    rng: np.random.Generator,
    size: int = 21,
    steps: int = 64,
    inertia: float = 0.8,
    extent: float | Sequence[float] = (0.5, 1.0),
) -> np.ndarray:
    """Blur kernel of a random camera trajectory: a random walk whose velocity keeps
    ``inertia`` of its previous value, scaled to span ``extent`` of the ``size`` x ``size`` kernel."""
    velocity = rng.normal(size=2)
    points = np.zeros((steps, 2))
    for i in range(1, steps):
        velocity = inertia * velocity + (1 - inertia) * rng.normal(size=2) * 2
        points[i] = points[i - 1] + velocity
    points -= points.mean(0)
    span = np.abs(points).max()
    points *= (size - 1) / 2 * _value(extent, rng) / max(span, 1e-6)
    kernel = np.zeros((size, size), np.float32)
    for row, col in points + (size - 1) / 2:
        _splat(kernel, row, col)
    return kernel / kernel.sum()


def disk_kernel(radius: float) -> np.ndarray:
    """Normalised anti-aliased disk of ``radius`` pixels (defocus point-spread function)."""
    half = int(np.ceil(radius))
    fine = 8  # supersampling per pixel for the anti-aliased edge
    coords = (np.arange(-half * fine, (half + 1) * fine) - (fine - 1) / 2) / fine
    inside = (coords[:, None] ** 2 + coords[None, :] ** 2 <= radius**2).astype(np.float32)
    kernel = inside.reshape(2 * half + 1, fine, 2 * half + 1, fine).mean((1, 3))
    return kernel / kernel.sum()


def dual_pixel_kernels(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Left and right halves of the defocus disk: the PSFs of a dual-pixel sensor's two views.

    Each half keeps the columns on its side (the centre column split evenly); the mean of the
    two views equals the full disk blur (the combined image a normal sensor records).
    """
    disk = disk_kernel(radius)
    centre = disk.shape[1] // 2
    left, right = disk.copy(), disk.copy()
    left[:, centre + 1 :] = 0
    right[:, :centre] = 0
    left[:, centre] *= 0.5
    right[:, centre] *= 0.5
    return left / left.sum(), right / right.sum()


def add_gaussian_noise(image: np.ndarray, rng: np.random.Generator, sigma: float | Sequence[float] = 25.0) -> np.ndarray:
    """Additive white Gaussian noise of standard deviation ``sigma`` / 255 (not clipped, as the
    Gaussian denoising benchmarks); a ``[low, high]`` range draws sigma per image (blind)."""
    return (image + rng.normal(0.0, _value(sigma, rng) / 255.0, image.shape)).astype(np.float32)


def add_sensor_noise(
    image: np.ndarray,
    rng: np.random.Generator,
    shot: float | Sequence[float] = (0.002, 0.02),
    read: float | Sequence[float] = (0.002, 0.01),
) -> np.ndarray:
    """Signal-dependent noise of variance ``shot * x + read**2`` (Poisson-Gaussian), clipped to [0, 1]."""
    variance = _value(shot, rng) * image + _value(read, rng) ** 2
    return np.clip(image + rng.normal(size=image.shape) * np.sqrt(variance), 0, 1).astype(np.float32)
