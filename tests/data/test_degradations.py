"""Synthetic degradations: seeded, normalised kernels, the effect each one should have."""
import numpy as np
import pytest

from glmha.data import degradations as deg


@pytest.fixture(scope="module")
def photo():
    return deg.load_sample_photos(["astronaut.png"])[0][100:164, 200:264]


def test_sample_photos_ship_with_scikit_image():
    photos = deg.load_sample_photos()
    assert len(photos) == len(deg.SAMPLE_PHOTOS)
    assert all(p.dtype == np.float32 and p.ndim == 3 and p.shape[2] == 3 and 0 <= p.min() and p.max() <= 1 for p in photos)
    assert deg.load_sample_photos(["coffee.png"], grayscale=True)[0].shape[2] == 1


@pytest.mark.parametrize("make", [
    lambda img, rng: deg.add_rain(img, rng),
    lambda img, rng: deg.convolve(img, deg.camera_shake_kernel(rng)),
    lambda img, rng: deg.add_gaussian_noise(img, rng, (0, 50)),
    lambda img, rng: deg.add_sensor_noise(img, rng),
])
def test_seeded(photo, make):
    a = make(photo, np.random.default_rng(3))
    b = make(photo, np.random.default_rng(3))
    c = make(photo, np.random.default_rng(4))
    assert a.shape == photo.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_rain_only_brightens_and_follows_density(photo):
    light = deg.add_rain(photo, np.random.default_rng(0), density=0.001, length=10, angle=0)
    heavy = deg.add_rain(photo, np.random.default_rng(0), density=0.02, length=10, angle=0)
    assert (light >= photo - 1e-6).all() and (heavy >= photo - 1e-6).all()
    assert (heavy - photo).mean() > 2 * (light - photo).mean() > 0


def test_line_kernel_orientation():
    vertical = deg.line_kernel(9, 90)
    assert vertical.sum() == pytest.approx(1)
    assert vertical[:, 4].sum() > 0.95  # all mass in the centre column


def test_camera_shake_kernel_is_a_normalised_spread_psf():
    kernel = deg.camera_shake_kernel(np.random.default_rng(1), size=21)
    assert kernel.shape == (21, 21) and kernel.min() >= 0
    assert kernel.sum() == pytest.approx(1, abs=1e-5)
    assert (kernel > 1e-3).sum() > 10  # a trajectory, not a point


def test_disk_and_dual_pixel_halves():
    disk = deg.disk_kernel(3.0)
    assert disk.sum() == pytest.approx(1) and disk.shape == (7, 7)
    left, right = deg.dual_pixel_kernels(3.0)
    np.testing.assert_allclose((left + right) / 2, disk, atol=1e-6)  # the combined view is the full disk
    np.testing.assert_allclose(left, right[:, ::-1], atol=1e-6)  # mirror images
    assert left[:, 4:].sum() == 0 and right[:, :3].sum() == 0


def test_gaussian_noise_level(photo):
    noisy = deg.add_gaussian_noise(photo, np.random.default_rng(0), sigma=25)
    assert (noisy - photo).std() * 255 == pytest.approx(25, rel=0.05)
