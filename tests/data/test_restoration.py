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
    assert item["target"].shape == (3, 16, 16) and item["name"] == "0002_02"  # the official PNG names
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


def test_image_smaller_than_crop_is_reflect_padded_like_opencv(rain_folder):
    """The official loaders pad with cv2.copyMakeBorder(..., BORDER_REFLECT) at the bottom/right, then crop."""
    import cv2

    data = PairedImageFolder(rain_folder, patch_size=128)
    full = PairedImageFolder(rain_folder)[0]
    item = data[(0, 0)]
    assert item["target"].shape == (3, 128, 128)
    target = np.ascontiguousarray(full["target"].numpy().transpose(1, 2, 0))
    padded = cv2.copyMakeBorder(target, 0, 80, 0, 80, cv2.BORDER_REFLECT)  # 48 -> 128: reflected more than once
    np.testing.assert_array_equal(item["target"].numpy().transpose(1, 2, 0), padded)


def test_mat_without_key(tmp_path):
    savemat(tmp_path / "blocks.mat", {"something": np.zeros((1, 1, 4, 4, 3), np.uint8)})
    with pytest.raises(DatasetError, match=r"blocks\.mat has no variable 'ValidationGtBlocksSrgb'; it holds \['something'\]"):
        read_mat_array(tmp_path / "blocks.mat", "ValidationGtBlocksSrgb")
    with pytest.raises(DatasetError, match="no such file"):
        read_mat_array(tmp_path / "none.mat", "x")


def test_sixteen_bit_images(tmp_path):
    """bit_depth=16 keeps 16-bit files; the default 8-bit read sees their high byte, as OpenCV's colour read."""
    import png

    image = np.random.default_rng(0).integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    with open(tmp_path / "dp.png", "wb") as f:
        png.Writer(7, 6, bitdepth=16, greyscale=False).write(f, image.reshape(6, -1))
    np.testing.assert_allclose(read_image(tmp_path / "dp.png", bit_depth=16), image / 65535.0, atol=1e-7)
    np.testing.assert_allclose(read_image(tmp_path / "dp.png"), (image >> 8) / 255.0, atol=1e-7)
    grey = (np.arange(16 * 16).reshape(16, 16) * 250).astype(np.uint16)
    imsave(tmp_path / "a.png", grey, check_contrast=False)
    np.testing.assert_allclose(read_image(tmp_path / "a.png", grayscale=True, bit_depth=16)[..., 0], grey / 65535.0, atol=1e-6)


def test_grey_read_converts_colour_like_the_official_code(tmp_path):
    """cv2.IMREAD_GRAYSCALE of a colour PNG: libpng's conversion, (9797 R + 19234 G + 3737 B) >> 15."""
    rgb = np.random.default_rng(1).integers(0, 256, (20, 24, 3)).astype(np.uint8)
    imsave(tmp_path / "c.png", rgb, check_contrast=False)
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    expected = (9797 * r + 19234 * g + 3737 * b) >> 15
    np.testing.assert_array_equal(np.rint(read_image(tmp_path / "c.png", grayscale=True)[..., 0] * 255), expected)


def test_official_gaussian_test_noise(tmp_path):
    """Each test image gets np.random.seed(0); img += np.random.normal(0, sigma / 255, img.shape) on float32."""
    root = write_synthetic_folder(tmp_path / "Kodak", "gaussian_denoising", num_images=2, image_size=24)
    data = NoisyImageFolder(root, sigma=25)
    for index in range(2):
        clean = np.float32(imread_rgb(data.files[index])) / 255.0
        np.random.seed(seed=0)
        clean += np.random.normal(0, 25 / 255.0, clean.shape)
        np.testing.assert_array_equal(data[index]["input"].numpy().transpose(1, 2, 0), clean)
    with pytest.raises(DatasetError, match="one noise level"):
        NoisyImageFolder(root, sigma=[0, 50])[0]


def imread_rgb(path):
    from skimage.io import imread

    return imread(path)[..., :3]


def test_natural_order_and_dpdd_groups(tmp_path):
    root = tmp_path / "DPDD"
    for folder in ("inputC", "target"):
        (root / folder).mkdir(parents=True)
        for name in ("img10", "img2", "img1"):
            imsave(root / folder / f"{name}.png", np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    np.save(root / "indoor_labels.npy", np.array([1, 3]))
    np.save(root / "outdoor_labels.npy", np.array([2]))
    data = PairedImageFolder(root, input_dirs="inputC", groups={"indoor": "indoor_labels.npy", "outdoor": "outdoor_labels.npy"})
    assert [p[0].stem for p in data.files] == ["img1", "img2", "img10"]
    assert data.groups == {"indoor": [0, 2], "outdoor": [1]}
    np.save(root / "bad.npy", np.array([4]))
    with pytest.raises(DatasetError, match="1-based image indices between 1 and 3"):
        PairedImageFolder(root, input_dirs="inputC", groups={"x": "bad.npy"})


def test_dnd_images_in_the_benchmark_layout(tmp_path):
    """info.mat (v7.3) holds per image a reference to 4 x 20 boxes (top, left, bottom, right; 1-based, inclusive)."""
    import h5py

    from glmha.data.restoration import DNDImages

    rng = np.random.default_rng(2)
    (tmp_path / "images_srgb").mkdir()
    images, boxes = [], []
    for i in range(2):
        image = rng.random((40, 50, 3)).astype(np.float32)
        images.append(image)
        with h5py.File(tmp_path / "images_srgb" / f"{i + 1:04d}.mat", "w") as f:
            f["InoisySRGB"] = image.T  # MATLAB column-major
        tops, lefts = rng.integers(1, 20, 20), rng.integers(1, 30, 20)
        boxes.append(np.stack([tops, lefts, tops + 15, lefts + 15]).astype(np.float64))  # 16 x 16 patches
    with h5py.File(tmp_path / "info.mat", "w") as f:
        group = f.create_group("info")
        refs = []
        for i, b in enumerate(boxes):
            refs.append(group.create_dataset(f"boxes{i}", data=b).ref)
        group.create_dataset("boundingboxes", data=np.array([refs], dtype=h5py.ref_dtype))
    data = DNDImages(tmp_path)
    item = data[1]
    assert len(data) == 2 and item["name"] == "0002" and item["input"].shape == (20, 3, 16, 16)
    top, left = int(boxes[1][0, 3]), int(boxes[1][1, 3])
    np.testing.assert_array_equal(item["input"][3].numpy().transpose(1, 2, 0), images[1][top - 1:top + 15, left - 1:left + 15])
