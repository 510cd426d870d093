"""Restoration datasets in the official layouts, the synthetic versions, and the errors users see."""
import numpy as np
import pytest
import torch
from scipy.io import savemat
from skimage.io import imsave

from glmha.data.restoration import (
    SYNTHETIC_TASKS, DatasetError, NoisyImageFolder, PairedImageFolder, SIDDBlocks, SyntheticPairs,
    read_image, read_mat_array, write_synthetic_folder,
)


@pytest.fixture(scope="module")
def rain_folder(tmp_path_factory):
    return write_synthetic_folder(tmp_path_factory.mktemp("Rain13K"), "deraining", num_images=3, image_size=48)


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_synthetic_tasks(task):
    data = SyntheticPairs(task, num_images=2, image_size=48, patch_size=32, augment=True, seed=5)
    item = data[(1, 7)]
    channels = 6 if task.startswith("dual_pixel") else 3
    assert item["input"].shape == (channels, 32, 32) and item["target"].shape == (3, 32, 32)
    assert not torch.equal(item["input"][:3], item["target"])
    again = SyntheticPairs(task, num_images=2, image_size=48, patch_size=32, augment=True, seed=5)[(1, 7)]
    assert torch.equal(item["input"], again["input"]) and torch.equal(item["target"], again["target"])
    assert not torch.equal(data[(1, 8)]["target"], item["target"])  # another sample, another crop


def test_grayscale_and_blind_noise():
    data = SyntheticPairs("gaussian_denoising", num_images=1, image_size=48, grayscale=True, sigma=[0, 50])
    item = data[0]
    assert item["input"].shape == (1, 48, 48)
    assert torch.equal(item["input"], data[0]["input"])  # evaluation items are fixed


def test_paired_folder_in_official_layout(rain_folder):
    data = PairedImageFolder(rain_folder, patch_size=32, augment=True)
    assert len(data) == 3 and data.name(0).endswith("input/0000.png")
    item = data[(0, 0)]
    assert item["input"].shape == (3, 32, 32)
    full = PairedImageFolder(rain_folder)[2]
    assert full["target"].shape == (3, 48, 48)


def test_crops_and_flips_keep_pairs_aligned(tmp_path, rain_folder):
    import shutil

    root = tmp_path / "same"
    shutil.copytree(rain_folder / "target", root / "input")
    shutil.copytree(rain_folder / "target", root / "target")
    data = PairedImageFolder(root, patch_size=24, augment=True)
    crops = [data[(0, n)] for n in range(12)]
    assert all(torch.equal(c["input"], c["target"]) for c in crops)
    assert len({c["target"].sum().item() for c in crops}) > 6  # different crops / modes


def test_geometric_modes_are_the_eight_symmetries():
    from glmha.data.restoration import augment_geometric

    a = np.arange(9).reshape(3, 3)
    assert len({augment_geometric([a], m)[0].tobytes() for m in range(8)}) == 8


def test_dual_pixel_folder_stacks_six_channels(tmp_path):
    root = write_synthetic_folder(tmp_path / "DPDD", "dual_pixel_defocus_deblurring", num_images=2, image_size=32)
    assert {p.name for p in root.iterdir()} == {"inputC", "inputL", "inputR", "target"}
    dual = PairedImageFolder(root, input_dirs=["inputL", "inputR"])
    assert dual[0]["input"].shape == (6, 32, 32)
    assert PairedImageFolder(root, input_dirs="inputC")[0]["input"].shape == (3, 32, 32)


def test_noisy_folder_fixed_test_noise(tmp_path):
    root = write_synthetic_folder(tmp_path / "CBSD68", "gaussian_denoising", num_images=2, image_size=32)
    data = NoisyImageFolder(root, sigma=50)
    a, b = data[0], data[0]
    assert torch.equal(a["input"], b["input"])
    assert (a["input"] - a["target"]).std() * 255 == pytest.approx(50, rel=0.15)
    grey = NoisyImageFolder(root, sigma=15, grayscale=True)[1]
    assert grey["input"].shape == (1, 32, 32)


def test_sidd_blocks(tmp_path):
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    savemat(tmp_path / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": gt})
    savemat(tmp_path / "ValidationNoisyBlocksSrgb.mat", {"ValidationNoisyBlocksSrgb": gt[::-1].copy()})
    data = SIDDBlocks(tmp_path / "ValidationNoisyBlocksSrgb.mat", tmp_path / "ValidationGtBlocksSrgb.mat")
    assert len(data) == 6
    item = data[4]
    assert item["target"].shape == (3, 16, 16)
    np.testing.assert_allclose(item["target"].numpy().transpose(1, 2, 0), gt[1, 1] / 255.0, atol=1e-6)


# ----------------------------------------------------------------------------- errors name the file
def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found: .*Rain13K"):
        PairedImageFolder(tmp_path / "Rain13K")
    (tmp_path / "Rain13K" / "input").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images .* in .*Rain13K/input"):
        PairedImageFolder(tmp_path / "Rain13K")
    imsave(tmp_path / "Rain13K" / "input" / "a.png", np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    with pytest.raises(DatasetError, match="dataset folder not found: .*Rain13K/target"):
        PairedImageFolder(tmp_path / "Rain13K")


def test_unmatched_names(tmp_path, rain_folder):
    import shutil

    root = tmp_path / "pairs"
    shutil.copytree(rain_folder, root)
    (root / "target" / "0001.png").rename(root / "target" / "0001_gt.png")
    with pytest.raises(DatasetError, match=r"input .*no partner.*0001\.png"):
        PairedImageFolder(root)


def test_unreadable_image(tmp_path, rain_folder):
    import shutil

    root = tmp_path / "pairs"
    shutil.copytree(rain_folder, root)
    (root / "input" / "0002.png").write_bytes(b"not a png")
    data = PairedImageFolder(root)
    with pytest.raises(DatasetError, match=r"cannot read image .*input/0002\.png"):
        data[2]


def test_image_smaller_than_crop(rain_folder):
    with pytest.raises(DatasetError, match=r"0000\.png is 48x48, smaller than the 64x64 training crop"):
        PairedImageFolder(rain_folder, patch_size=64)[(0, 0)]


def test_mat_without_key(tmp_path):
    savemat(tmp_path / "blocks.mat", {"something": np.zeros((1, 1, 4, 4, 3), np.uint8)})
    with pytest.raises(DatasetError, match=r"blocks\.mat has no array 'ValidationGtBlocksSrgb'; it holds \['something'\]"):
        read_mat_array(tmp_path / "blocks.mat", "ValidationGtBlocksSrgb")
    with pytest.raises(DatasetError, match="file not found"):
        read_mat_array(tmp_path / "none.mat", "x")


def test_sixteen_bit_images(tmp_path):
    image = (np.arange(16 * 16).reshape(16, 16) * 250).astype(np.uint16)
    imsave(tmp_path / "a.png", image, check_contrast=False)
    np.testing.assert_allclose(read_image(tmp_path / "a.png", grayscale=True)[..., 0], image / 65535.0, atol=1e-6)


def test_sixteen_bit_rgb_png_keeps_its_precision(tmp_path):
    import png

    image = np.random.default_rng(0).integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    with open(tmp_path / "dp.png", "wb") as f:
        png.Writer(7, 6, bitdepth=16, greyscale=False).write(f, image.reshape(6, -1))
    np.testing.assert_allclose(read_image(tmp_path / "dp.png"), image / 65535.0, atol=1e-7)
