import numpy as np
import pytest
import torch

import glmha
from glmha.data.cassi import (
    CASSI, load_mask, mask_3d, mask_input, measure, measurement_input, random_mask, shift, shift_back,
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
