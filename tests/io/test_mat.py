"""MATLAB files: empty and truncated files (v5 and v7.3) and .npy arrays are refused in one line naming the file."""
import numpy as np
import pytest
import scipy.io

from glmha.data.cassi import load_mask
from glmha.data.hyperspectral import read_cube
from glmha.io.mat import read_mat, write_mat


@pytest.fixture
def damaged(tmp_path):
    (tmp_path / "empty.mat").write_bytes(b"")
    scipy.io.savemat(tmp_path / "v5.mat", {"mask": np.random.rand(64, 64)})
    write_mat(tmp_path / "v73.mat", {"mask": np.random.rand(64, 64)})
    for name in ("v5", "v73"):
        data = (tmp_path / f"{name}.mat").read_bytes()
        (tmp_path / f"{name}_truncated.mat").write_bytes(data[: len(data) // 2])
    np.save(tmp_path / "cube.npy", np.random.rand(28, 16, 16))
    data = (tmp_path / "cube.npy").read_bytes()
    (tmp_path / "cube_truncated.npy").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.npy").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("name", ["empty.mat", "v5_truncated.mat", "v73_truncated.mat"])
@pytest.mark.parametrize("reader", [lambda p: read_mat(p, "mask"), read_cube, load_mask])
def test_damaged_mat_files_are_refused_by_name(damaged, name, reader):
    with pytest.raises(ValueError, match=f"cannot read .*{name}") as info:
        reader(damaged / name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["empty.npy", "cube_truncated.npy"])
def test_damaged_npy_files_are_refused_by_name(damaged, name):
    with pytest.raises(ValueError, match=f"cannot read .*{name}"):
        read_cube(damaged / name)


def test_intact_files_still_read(damaged):
    assert read_mat(damaged / "v5.mat", "mask").shape == (64, 64)
    assert read_mat(damaged / "v73.mat", "mask").shape == (64, 64)
