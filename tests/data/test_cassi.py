import numpy as np
import pytest
import torch

import glmha
from glmha.data.cassi import (
    CASSI, load_mask, mask_3d, mask_input, measure, measurement_input, normalize_real_measurement, random_mask,
    real_measurement, shift, shift_back, shot_noise,
)
from glmha.data.hyperspectral import write_mat


def test_measurement_is_sum_of_masked_shifted_bands():
    cube = torch.rand(2, 5, 6, 7)
    mask = random_mask(6, 7, seed=3)
    meas = measure(cube, mask_3d(mask, 5), step=2)
    assert meas.shape == (2, 6, 7 + 2 * 4)
    expected = torch.zeros(2, 6, 15)
    for c in range(5):  # written out pixel by pixel from the definition
        for j in range(7):
            expected[:, :, 2 * c + j] += cube[:, c, :, j] * mask[:, j]
    torch.testing.assert_close(meas, expected)


@pytest.mark.parametrize("bands,height,width,step", [(28, 8, 12, 2), (3, 5, 4, 1), (31, 4, 9, 3)])
def test_shift_then_shift_back_is_identity(bands, height, width, step):
    cube = torch.rand(1, bands, height, width)
    shifted = shift(cube, step)
    assert shifted.shape == (1, bands, height, width + step * (bands - 1))
    torch.testing.assert_close(shift_back(shifted, step=step), cube, rtol=0, atol=0)
    # the parts outside each band's window are zeros
    assert shifted.abs().sum() == pytest.approx(cube.abs().sum().item(), rel=1e-6)


def test_official_inputs_and_scaling():
    bands = 4
    cube = torch.rand(1, bands, 3, 5)
    mask3d = mask_3d(random_mask(3, 5, seed=1), bands)
    meas = measurement_input(cube, mask3d, "Y")
    torch.testing.assert_close(meas, measure(cube, mask3d))
    h = measurement_input(cube, mask3d, "H")
    assert h.shape == cube.shape
    # band c of H is the measurement's window at 2c, scaled by 2 / bands
    torch.testing.assert_close(h[0, 2], meas[0, :, 4:9] * 2 / bands)
    torch.testing.assert_close(measurement_input(cube, mask3d, "HM"), h * mask3d)

    phi = mask_input(mask3d, "Phi")
    torch.testing.assert_close(phi, shift(mask3d.unsqueeze(0)))
    phi2, phi_s = mask_input(mask3d, "Phi_PhiPhiT")
    torch.testing.assert_close(phi2, phi)
    # columns no band reaches have sum 0 -> 1; elsewhere the number of open (band, pixel) pairs
    expected = phi.square().sum(1)
    expected[expected == 0] = 1
    torch.testing.assert_close(phi_s, expected)
    torch.testing.assert_close(mask_input(mask3d, "Mask"), mask3d.unsqueeze(0))
    with pytest.raises(ValueError, match="measurement setting must be one of"):
        measurement_input(cube, mask3d, "X")
    with pytest.raises(ValueError, match="mask setting must be one of"):
        mask_input(mask3d, "Psi")


def test_random_mask_is_seeded_binary_any_size():
    a, b, c = random_mask(7, 11, seed=5), random_mask(7, 11, seed=5), random_mask(7, 11, seed=6)
    assert a.shape == (7, 11) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert random_mask(64, 64, density=0.25).mean().item() == pytest.approx(0.25, abs=0.05)


def test_load_mask_v5_v73_npy(tmp_path):
    mask = (np.random.default_rng(0).random((6, 9)) > 0.5).astype(np.float64)
    write_mat(tmp_path / "mask.mat", {"mask": mask}, version="5")
    write_mat(tmp_path / "mask73.mat", {"mask": mask}, version="7.3")
    np.save(tmp_path / "mask.npy", mask)
    for name in ("mask.mat", "mask73.mat", "mask.npy"):
        loaded = load_mask(tmp_path / name)
        assert loaded.dtype == torch.float32
        np.testing.assert_array_equal(loaded.numpy(), mask)
    with pytest.raises(KeyError, match="no variable 'Phi'"):
        load_mask(tmp_path / "mask.mat", key="Phi")


def test_cassi_module_feeds_mst_at_any_size():
    cassi = CASSI(random_mask(16, 24, seed=0), bands=28)
    cube = torch.rand(2, 28, 16, 24)
    assert cassi(cube).shape == (2, 16, 24 + 54)
    x, phi = cassi.inputs(cube)
    assert x.shape == (2, 28, 16, 24) and phi.shape == (2, 28, 16, 78)
    model = glmha.create_model("mst_s", num_blocks=[1, 1, 1]).eval()
    with torch.no_grad():
        assert model(x, phi).shape == cube.shape
    with pytest.raises(ValueError, match="images 28 bands of 16x24"):
        cassi(torch.rand(1, 28, 16, 16))


@pytest.mark.parametrize("signal", [0.01, 0.1234, 0.5, 1.7])
def test_shot_noise_mean_and_variance_are_binomial(signal):
    qe, bit, n_samples = 0.4, 2048, 200_000
    photons = np.floor(signal * bit / qe)  # the official (input * bit / QE).astype(int)
    mean, var = photons * qe / bit, photons * qe * (1 - qe) / bit**2  # Binomial(photons, qe) / bit
    noisy = shot_noise(torch.full((n_samples,), signal, dtype=torch.float64), qe, bit,
                       generator=torch.Generator().manual_seed(0)).numpy()
    # Read-out: whole counts over the bit depth.
    np.testing.assert_array_equal(noisy * bit, np.round(noisy * bit))
    # Sample mean within 5 standard errors sqrt(var / N) of the binomial mean; sample variance
    # within 5 standard errors of its own, var * sqrt(2 / (N - 1)) (a binomial with >= 20
    # expected counts has excess kurtosis below 0.1, negligible next to 2). With the fixed seed
    # the check is deterministic; for a fresh seed it would fail with probability ~1e-6.
    assert abs(noisy.mean() - mean) < 5 * np.sqrt(var / n_samples)
    assert abs(noisy.var(ddof=1) - var) < 5 * var * np.sqrt(2 / (n_samples - 1))
    # The check has the power to tell binomial from Poisson counts (variance photons * qe / bit**2).
    assert abs(noisy.var(ddof=1) - photons * qe / bit**2) > 20 * var * np.sqrt(2 / (n_samples - 1))


def test_shot_noise_is_seeded_and_checks_its_input():
    signal = torch.rand(6, 9)
    first = shot_noise(signal, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, shot_noise(signal, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(first, shot_noise(signal, generator=torch.Generator().manual_seed(4)))
    assert first.dtype == signal.dtype
    with pytest.raises(ValueError, match="non-negative"):
        shot_noise(-signal)
    with pytest.raises(ValueError, match="quantum_efficiency must be in"):
        shot_noise(signal, quantum_efficiency=1.5)


def test_real_measurement_scales_as_the_official_training():
    cube, mask = torch.rand(2, 28, 6, 8, dtype=torch.float64), random_mask(6, 8, seed=2).double()
    # A detector that sees every photon (quantum efficiency 1) leaves only the read-out:
    # floor(measurement / 28 * 2 * 1.2 * bit) / bit.
    clean = measure(cube, mask_3d(mask, 28, batch=2)) / 28 * 2 * 1.2
    out = real_measurement(cube, mask, quantum_efficiency=1.0, bit_depth=2048)
    assert out.shape == (2, 6, 8 + 54)
    torch.testing.assert_close(out, torch.floor(clean * 2048) / 2048, rtol=0, atol=1e-12)
    # one aperture per sample
    masks = torch.stack([mask, 1 - mask])
    both = real_measurement(cube, masks, quantum_efficiency=1.0)
    torch.testing.assert_close(both[1], real_measurement(cube[1:], 1 - mask, quantum_efficiency=1.0)[0])
    with pytest.raises(ValueError, match="does not match the cube"):
        real_measurement(cube, mask[:5])


def test_normalize_real_measurement_as_the_official_test():
    meas = torch.tensor([[-0.2, 0.3], [0.5, 1.4]])
    # clipped to [0, 1], then divided by its maximum and times 0.8
    torch.testing.assert_close(normalize_real_measurement(meas), torch.tensor([[0.0, 0.24], [0.4, 0.8]]))
    with pytest.raises(ValueError, match="zero everywhere"):
        normalize_real_measurement(-meas.abs())
