import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from glmha.data.hyperspectral import (
    ARAD1K, CASSIPatches, CubeFolder, SceneFiles, augment, load_cave_scenes, load_kaist_scenes, mosaic, read_cube, read_mat,
    read_rgb, read_split, write_mat,
)

H, W, BANDS = 20, 24, 31


def matlab_v73(path, name, array):
    """Write a v7.3 file by hand as MATLAB does: 512-byte header block, reversed dims, MATLAB_class."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset(name, data=array.T)  # .T reverses all dimensions
        f[name].attrs["MATLAB_class"] = np.bytes_("single")
    with open(path, "r+b") as f:
        text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Sun Nov 22 2026 HDF5 schema 1.00 ."
        f.write(text.ljust(116) + bytes(8) + b"\x00\x02IM")  # text, subsystem offset, version 2.0, endian


@pytest.fixture
def arad_root(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "Train_Spec").mkdir()
    (tmp_path / "Train_RGB").mkdir()
    (tmp_path / "split_txt").mkdir()
    cubes = {}
    for name in ("ARAD_1K_0001", "ARAD_1K_0002", "ARAD_1K_0901"):
        cube = rng.random((H, W, BANDS), dtype=np.float32)  # MATLAB order H x W x C
        matlab_v73(tmp_path / "Train_Spec" / f"{name}.mat", "cube", cube)
        rgb = (rng.random((H, W, 3)) * 255).astype(np.uint8)
        rgb[0, 0] = 0
        rgb[0, 1] = 255
        Image.fromarray(rgb).save(tmp_path / "Train_RGB" / f"{name}.jpg", quality=100)
        cubes[name] = cube
    (tmp_path / "split_txt" / "train_list.txt").write_text("ARAD_1K_0002\nARAD_1K_0001\n")
    (tmp_path / "split_txt" / "valid_list.txt").write_text("ARAD_1K_0901.mat\n")
    return tmp_path, cubes


def test_v73_round_trip_and_layout(tmp_path, arad_root):
    root, cubes = arad_root
    path = root / "Train_Spec" / "ARAD_1K_0001.mat"
    with h5py.File(path, "r") as f:
        assert f["cube"].shape == (BANDS, W, H)  # stored transposed, as NTIRE's 31 x 512 x 482
    with pytest.raises(NotImplementedError):
        scipy.io.loadmat(path)  # a real v7.3 file: scipy refuses it
    np.testing.assert_array_equal(read_mat(path, "cube"), cubes["ARAD_1K_0001"])
    np.testing.assert_array_equal(read_cube(path), cubes["ARAD_1K_0001"].transpose(2, 0, 1))
    # our writer produces the same layout
    write_mat(tmp_path / "ours.mat", {"cube": cubes["ARAD_1K_0001"]})
    with h5py.File(tmp_path / "ours.mat", "r") as f:
        assert f["cube"].shape == (BANDS, W, H) and f["cube"].attrs["MATLAB_class"] == b"single"
    assert (tmp_path / "ours.mat").read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    np.testing.assert_array_equal(read_mat(tmp_path / "ours.mat", "cube"), cubes["ARAD_1K_0001"])


def test_arad_patches_and_official_indexing(arad_root):
    root, cubes = arad_root
    data = ARAD1K(root, "train", crop_size=8, stride=4, augment=False)
    assert data.names == ["ARAD_1K_0001", "ARAD_1K_0002"]
    rows, cols = (H - 8) // 4 + 1, (W - 8) // 4 + 1
    assert len(data) == 2 * rows * cols
    index = rows * cols + 1 * cols + 2  # image 1, patch row 1, column 2
    rgb, cube = data[index]
    assert rgb.shape == (3, 8, 8) and cube.shape == (BANDS, 8, 8)
    expected = cubes["ARAD_1K_0002"].transpose(2, 0, 1)[:, 4:12, 8:16]
    np.testing.assert_array_equal(cube.numpy(), expected)
    full = read_rgb(root / "Train_RGB" / "ARAD_1K_0002.jpg")
    np.testing.assert_array_equal(rgb.numpy(), full[:, 4:12, 8:16])
    assert full.min() == 0.0 and full.max() == 1.0  # min-max normalised


def test_arad_validation_whole_images_and_augmentation(arad_root):
    root, cubes = arad_root
    valid = ARAD1K(root, "valid", crop_size=None)
    assert len(valid) == 1
    rgb, cube = valid[0]
    assert rgb.shape == (3, H, W)
    np.testing.assert_array_equal(cube.numpy(), cubes["ARAD_1K_0901"].transpose(2, 0, 1))
    augmented = ARAD1K(root, "train", crop_size=8, stride=4, augment=True)
    torch.manual_seed(1)
    rgb, cube = augmented[0]
    torch.manual_seed(1)
    rotations, flips = torch.randint(0, 4, (1,)).item(), torch.randint(0, 2, (2,)).tolist()
    plain_rgb, plain_cube = ARAD1K(root, "train", crop_size=8, stride=4, augment=False)[0]
    np.testing.assert_array_equal(cube.numpy(), augment(plain_cube.numpy(), rotations, *flips))
    np.testing.assert_array_equal(rgb.numpy(), augment(plain_rgb.numpy(), rotations, *flips))


def test_arad_errors_name_the_file(arad_root):
    root, _ = arad_root
    with pytest.raises(ValueError, match="ARAD_1K_0001.mat: the cube is 20x24, smaller than the crop size 32"):
        ARAD1K(root, "train", crop_size=32)
    (root / "Train_RGB" / "ARAD_1K_0002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="missing .*ARAD_1K_0002.jpg"):
        ARAD1K(root, "train")
    with pytest.raises(FileNotFoundError, match="no such split list"):
        ARAD1K(root, "test")


def test_augment_matches_rot90_and_flips():
    x = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    np.testing.assert_array_equal(augment(x, 1, False, False), np.rot90(x, 1, axes=(1, 2)))
    np.testing.assert_array_equal(augment(x, 0, True, False), x[:, :, ::-1])
    np.testing.assert_array_equal(augment(x, 2, False, True), np.rot90(x, 2, axes=(1, 2))[:, ::-1])


def test_cave_and_kaist_v5(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "cave").mkdir()
    (tmp_path / "kaist").mkdir()
    counts = rng.integers(0, 65535, (12, 10, 28)).astype(np.uint16)
    scipy.io.savemat(tmp_path / "cave" / "scene1.mat", {"img_expand": counts})
    scipy.io.savemat(tmp_path / "cave" / "scene2.mat", {"img": counts[:10]})
    scenes = load_cave_scenes(tmp_path / "cave")
    assert [s.shape for s in scenes] == [(28, 12, 10), (28, 10, 10)]
    np.testing.assert_allclose(scenes[0], counts.transpose(2, 0, 1) / 65536.0, rtol=1e-6)
    truth = rng.random((8, 8, 28))
    for i in (1, 2):
        scipy.io.savemat(tmp_path / "kaist" / f"scene{i:02d}.mat", {"img": truth * i / 2})
    kaist = load_kaist_scenes(tmp_path / "kaist")
    assert kaist.shape == (2, 28, 8, 8)
    np.testing.assert_allclose(kaist[1].numpy(), truth.transpose(2, 0, 1), rtol=1e-6)
    scipy.io.savemat(tmp_path / "cave" / "scene3.mat", {"hsi": counts})
    with pytest.raises(KeyError, match="scene3.mat has neither 'img_expand' nor 'img'"):
        load_cave_scenes(tmp_path / "cave")


def test_scene_files_read_windows_of_v5_and_v73(tmp_path):
    # CAVE_512_28 holds 16-bit counts (key data_slice, H x W x 28); KAIST_CVPR2021 values in [0, 1] (key HSI).
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 65536, (14, 18, 28)).astype(np.float64)
    (tmp_path / "v5").mkdir()
    (tmp_path / "v73").mkdir()
    scipy.io.savemat(tmp_path / "v5" / "scene01.mat", {"data_slice": counts})
    matlab_v73(tmp_path / "v73" / "scene01.mat", "data_slice", counts.astype(np.float32))
    old, new = SceneFiles(tmp_path / "v5", "data_slice", 1 / 65535), SceneFiles(tmp_path / "v73", "data_slice", 1 / 65535)
    assert old.shapes == new.shapes == [(28, 14, 18)] and len(old) == 1
    expected = counts.transpose(2, 0, 1)[:, 3:10, 5:17] / 65535.0
    for scenes in (old, new):
        window = scenes.window(0, 3, 5, 7, 12)
        assert window.shape == (28, 7, 12) and window.dtype == np.float64  # as the official real-data code holds its scenes
        np.testing.assert_allclose(window, expected, rtol=1e-6)
    # values outside [0, 1] are clipped, as the official loaders do
    hsi = rng.uniform(-0.5, 1.5, (6, 7, 28))
    (tmp_path / "kaist").mkdir()
    matlab_v73(tmp_path / "kaist" / "1.mat", "HSI", hsi.astype(np.float32))
    window = SceneFiles(tmp_path / "kaist", "HSI").window(0, 0, 0, 6, 7)
    np.testing.assert_allclose(window, np.clip(hsi, 0, 1).transpose(2, 0, 1), rtol=1e-6)
    with pytest.raises(ValueError, match="lies outside scene"):
        old.window(0, 10, 0, 7, 7)
    with pytest.raises(KeyError, match="no variable 'HSI'"):
        SceneFiles(tmp_path / "v73", "HSI")


def test_cassi_patches_crop_and_mosaic():
    scenes = [np.random.default_rng(i).random((4, 20, 20), dtype=np.float32) for i in range(2)]
    plain = CASSIPatches(scenes, crop_size=8, length=3, mosaic_probability=0.0, augment=False)
    patch = plain[0]
    assert patch.shape == (4, 8, 8) and len(plain) == 3
    # a plain crop is a window of one of the scenes
    found = any(
        np.array_equal(s[:, i:i + 8, j:j + 8], patch.numpy()) for s in scenes for i in range(13) for j in range(13)
    )
    assert found
    quarters = [np.full((1, 2, 2), v, dtype=np.float32) for v in range(4)]
    np.testing.assert_array_equal(mosaic(quarters)[0], [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    assert CASSIPatches(scenes, crop_size=8, mosaic_probability=1.0)[0].shape == (4, 8, 8)
    with pytest.raises(ValueError, match="at least 32x32"):
        CASSIPatches(scenes, crop_size=32)


def test_user_cubes_npy_and_mat(tmp_path):
    rng = np.random.default_rng(0)
    cube = rng.random((16, 16, 10), dtype=np.float32)
    np.save(tmp_path / "a.npy", cube)  # H x W x C
    np.save(tmp_path / "b.npy", cube.transpose(2, 0, 1))  # C x H x W, detected
    write_mat(tmp_path / "c.mat", {"rad": cube}, version="5")
    write_mat(tmp_path / "d.mat", {"whatever": cube}, version="7.3")  # the only variable
    data = CubeFolder(tmp_path, crop_size=8, stride=8)
    assert len(data) == 4 * 4
    for i in range(4):
        np.testing.assert_array_equal(data[i * 4 + 3].numpy(), cube.transpose(2, 0, 1)[:, 8:16, 8:16])
    with pytest.raises(ValueError, match="smaller than the crop size 32"):
        CubeFolder(tmp_path, crop_size=32)


def test_reader_errors_name_the_file(tmp_path):
    write_mat(tmp_path / "x.mat", {"a": np.zeros((2, 2, 2)), "b": np.zeros(3)}, version="5")
    with pytest.raises(KeyError, match=r"x.mat: no cube variable among \['a', 'b'\]"):
        read_cube(tmp_path / "x.mat")
    with pytest.raises(KeyError, match="x.mat has no variable 'cube'"):
        read_mat(tmp_path / "x.mat", "cube")
    (tmp_path / "bad.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match="cannot read .*bad.mat"):
        read_cube(tmp_path / "bad.mat", "cube")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        read_cube(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="must be 3-D"):
        read_cube(tmp_path / "x.mat", "b")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(ValueError, match="cannot read image .*bad.jpg"):
        read_rgb(tmp_path / "bad.jpg")
    (tmp_path / "list.txt").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_split(tmp_path / "list.txt")
