"""The spectral tasks: smoke configs train and resume, and the official protocols on tiny files
in the official layouts (NTIRE 2022 for MST++, CAVE/KAIST for MST, CAVE_512_28/KAIST_CVPR2021 and
the real mask for the real-data MST)."""
import numpy as np
import pytest
import torch
from PIL import Image

from glmha import load_checkpoint
from glmha.data.hyperspectral import write_mat
from glmha.engine import build_model, evaluate, load_config, train

from .conftest import CONFIGS, QUIET

MSTPP = CONFIGS / "mst_plus_plus" / "ntire2022_csa.yaml"
MST_L = CONFIGS / "mst" / "mst_l_cassi_csa.yaml"


@pytest.mark.parametrize("path", [MSTPP, MST_L, CONFIGS / "mst" / "mst_l_cassi_glmha.yaml", CONFIGS / "mst" / "mst_s_real_csa.yaml"],
                         ids=lambda p: p.stem)
def test_spectral_smoke_trains_and_resumes_exactly(path, tmp_path):
    full = train(path, QUIET, variant="smoke", output_dir=tmp_path / "full")
    train(path, QUIET, variant="smoke", output_dir=tmp_path / "sliced", max_steps=4)
    sliced = train(path, QUIET, variant="smoke", output_dir=tmp_path / "sliced")
    assert full.finished and sliced.finished and sliced.history == full.history
    a = load_checkpoint(build_model(load_config(path, variant="smoke")), full.weights)
    b = load_checkpoint(build_model(load_config(path, variant="smoke")), sliced.weights)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


@pytest.fixture(scope="module")
def arad_root(tmp_path_factory):
    """NTIRE 2022 layout: Train_Spec/*.mat (v7.3, key cube, H x W x 31), Train_RGB/*.jpg, split_txt/."""
    root = tmp_path_factory.mktemp("ARAD_1K")
    rng = np.random.default_rng(0)
    for folder in ("Train_Spec", "Train_RGB", "split_txt"):
        (root / folder).mkdir()
    names = [f"ARAD_1K_{i:04d}" for i in range(1, 4)]
    for name in names:
        cube = rng.uniform(0.05, 1.0, (40, 48, 31)).astype(np.float32)
        write_mat(root / "Train_Spec" / f"{name}.mat", {"cube": cube})
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "Train_RGB" / f"{name}.jpg", quality=95)
    (root / "split_txt" / "train_list.txt").write_text("\n".join(f"{n}.mat" for n in names[:2]) + "\n")
    (root / "split_txt" / "valid_list.txt").write_text(f"{names[2]}.mat\n")
    return root


def test_mst_plus_plus_protocol_on_ntire_layout(arad_root, tmp_path):
    overrides = QUIET + [
        "task.border=8",
        f"data={{train: {{type: arad1k, root: {arad_root}, split: train, crop_size: 32, stride: 8, augment: true}},"
        f" val: {{type: arad1k, root: {arad_root}, split: valid, crop_size: null, augment: false}},"
        f" test: {{valid: {{type: arad1k, root: {arad_root}, split: valid, crop_size: null, augment: false}}}}}}",
    ]
    result = train(MSTPP, overrides, variant="smoke", output_dir=tmp_path / "run")
    assert result.finished
    table = evaluate(MSTPP, result.weights, overrides, variant="smoke", output_dir=tmp_path / "eval")
    assert [r["image"] for r in table.per_image] == ["ARAD_1K_0003"]

    # The same numbers by hand: MRAE / RMSE / PSNR (clamped) inside an 8-pixel border.
    from glmha.data.hyperspectral import ARAD1K
    from glmha import restore

    model = load_checkpoint(build_model(load_config(MSTPP, variant="smoke")), result.weights).eval()
    rgb, cube = ARAD1K(arad_root, split="valid", crop_size=None, augment=False)[0]
    pred = restore(model, rgb[None])[0].double().numpy()[:, 8:-8, 8:-8]
    target = cube.double().numpy()[:, 8:-8, 8:-8]
    row = table.summary[0]
    assert row["mrae"] == pytest.approx(np.mean(np.abs(pred - target) / target), rel=1e-6)
    assert row["rmse"] == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)), rel=1e-6)
    mse = np.mean((np.clip(pred, 0, 1) - np.clip(target, 0, 1)) ** 2)
    assert row["psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-6)


def test_mst_protocol_on_kaist_layout(tmp_path):
    """CAVE training cubes (v5, key img_expand, x 1/65536), KAIST Truth/scene*.mat (key img), mask.mat (key mask)."""
    rng = np.random.default_rng(1)
    (tmp_path / "cave_1024_28").mkdir()
    (tmp_path / "TSA_simu_data" / "Truth").mkdir(parents=True)
    for i in range(2):
        write_mat(tmp_path / "cave_1024_28" / f"scene{i + 1}.mat", {"img_expand": rng.integers(0, 65536, (40, 40, 28)).astype(np.uint16)}, version="5")
    for i in range(3):
        write_mat(tmp_path / "TSA_simu_data" / "Truth" / f"scene{i + 1:02d}.mat", {"img": rng.uniform(0, 1, (32, 32, 28))}, version="5")
    mask = (rng.uniform(size=(32, 32)) > 0.5).astype(np.float64)
    write_mat(tmp_path / "TSA_simu_data" / "mask.mat", {"mask": mask}, version="5")
    spec = f"{{type: kaist, root: {tmp_path}/TSA_simu_data/Truth, mask: {tmp_path}/TSA_simu_data/mask.mat}}"
    overrides = QUIET + [
        f"data={{train: {{type: cave, root: {tmp_path}/cave_1024_28, mask: {tmp_path}/TSA_simu_data/mask.mat, crop_size: 32, length: 10, batch_layout: [crop, mosaic]}},"
        f" val: {spec}, test: {{KAIST: {spec}}}}}",
    ]
    result = train(MST_L, overrides, variant="smoke", output_dir=tmp_path / "run")
    table = evaluate(MST_L, result.weights, overrides, variant="smoke", output_dir=tmp_path / "eval")
    assert [r["image"] for r in table.per_image] == ["scene01", "scene02", "scene03"]

    # Per-band PSNR by hand (MST: round(x * 256), peak 255, mean over the 28 bands), for scene 2.
    from glmha.engine.tasks import CASSITask

    model = load_checkpoint(build_model(load_config(MST_L, variant="smoke")), result.weights).eval()
    truth = torch.from_numpy(np.ascontiguousarray(
        __import__("scipy.io").io.loadmat(tmp_path / "TSA_simu_data" / "Truth" / "scene02.mat")["img"].transpose(2, 0, 1))).float()
    with torch.no_grad():
        pred = CASSITask().forward(model, {"target": truth[None], "mask": torch.from_numpy(mask).float()[None]})[0]
    p, t = (pred.double().numpy() * 256).round(), (truth.double().numpy() * 256).round()
    psnr = np.mean([10 * np.log10(255**2 / np.mean((p[c] - t[c]) ** 2)) for c in range(28)])
    assert table.per_image[1]["psnr_train_log"] == pytest.approx(psnr, abs=1e-4)


def test_spectral_errors_name_the_file(tmp_path):
    from glmha.data.restoration import DatasetError
    from glmha.engine import build_dataset

    with pytest.raises(DatasetError, match="dataset folder not found: .*nowhere"):
        build_dataset({"type": "kaist", "root": str(tmp_path / "nowhere"), "mask": "mask.mat"})
    (tmp_path / "Truth").mkdir()
    write_mat(tmp_path / "Truth" / "scene01.mat", {"cube": np.zeros((8, 8, 28))}, version="5")
    with pytest.raises(KeyError, match="scene01.mat"):
        build_dataset({"type": "kaist", "root": str(tmp_path / "Truth"), "mask": "mask.mat"})


# ----------------------------------------------------------------------------- real CASSI
MST_REAL = CONFIGS / "mst" / "mst_s_real_csa.yaml"


def _views(cube: np.ndarray) -> list[np.ndarray]:
    """The 16 results of the official augmentation (rotations x width flip x height flip)."""
    from glmha.data.hyperspectral import augment

    return [augment(cube, r, fw, fh) for r in range(4) for fw in (False, True) for fh in (False, True)]


def _find_window(image: np.ndarray, window: np.ndarray) -> tuple[int, int] | None:
    h, w = window.shape[-2:]
    for top in range(image.shape[-2] - h + 1):
        for left in range(image.shape[-1] - w + 1):
            if np.array_equal(image[..., top:top + h, left:left + w], window):
                return top, left
    return None


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    """CAVE_512_28/*.mat (v5, key data_slice, 16-bit counts), KAIST_CVPR2021/*.mat (v7.3, key HSI),
    TSA_real_data/mask.mat (v5, key mask; real-valued like the real aperture), TSA_simu_data/Truth."""
    root = tmp_path_factory.mktemp("datasets")
    rng = np.random.default_rng(5)
    for folder in ("CAVE_512_28", "KAIST_CVPR2021", "TSA_real_data", "TSA_simu_data/Truth"):
        (root / folder).mkdir(parents=True)
    for i in range(2):
        write_mat(root / "CAVE_512_28" / f"scene{i + 1:02d}.mat",
                  {"data_slice": rng.integers(0, 65536, (36, 40, 28)).astype(np.float64)}, version="5")
        write_mat(root / "KAIST_CVPR2021" / f"{i + 1}.mat", {"HSI": rng.uniform(-0.1, 1.1, (38, 44, 28)).astype(np.float32)})
    write_mat(root / "TSA_real_data" / "mask.mat", {"mask": rng.uniform(0, 1, (48, 48))}, version="5")
    for i in range(2):
        write_mat(root / "TSA_simu_data" / "Truth" / f"scene{i + 1:02d}.mat", {"img": rng.uniform(0, 1, (24, 24, 28))}, version="5")
    return root


def sio_data_slice(root, index):
    from scipy.io import loadmat

    return loadmat(sorted((root / "CAVE_512_28").glob("*.mat"))[index])["data_slice"]


def _real_training(root, **kwargs):
    from glmha.engine import build_dataset

    return build_dataset({"type": "real_cassi_train", "cave": str(root / "CAVE_512_28"), "kaist": str(root / "KAIST_CVPR2021"),
                          "mask": str(root / "TSA_real_data" / "mask.mat"), "crop_size": 32, "length": 20, **kwargs})


def _official_photons(label: np.ndarray, mask_3d: np.ndarray, gain: float = 1.2, bit: int = 2048, qe: float = 1.0) -> np.ndarray:
    """MST real/train_code/dataset.py, in its own numpy steps and order (H x W x 28, float64): the photon numbers."""
    size = label.shape[0]
    temp = mask_3d * label
    temp_shift = np.zeros((size, size + (28 - 1) * 2, 28))
    temp_shift[:, 0:size, :] = temp
    for t in range(28):
        temp_shift[:, :, t] = np.roll(temp_shift[:, :, t], 2 * t, axis=1)
    meas = np.sum(temp_shift, axis=2)
    return (meas / 28 * 2 * gain * bit / qe).astype(int)


def test_real_cassi_training_samples_as_the_official_pipeline(real_root):
    from glmha.data.cassi import load_mask
    from glmha.data.hyperspectral import SceneFiles

    cave = SceneFiles(real_root / "CAVE_512_28", "data_slice", 1 / 65535)
    kaist = SceneFiles(real_root / "KAIST_CVPR2021", "HSI")
    scenes = [cave.window(i, 0, 0, *cave.shapes[i][1:]) for i in range(2)] + [kaist.window(i, 0, 0, *kaist.shapes[i][1:]) for i in range(2)]
    assert all(scene.dtype == np.float64 for scene in scenes)  # as the official loaders hold them
    np.testing.assert_array_equal(scenes[0], np.clip(sio_data_slice(real_root, 0) / 65535.0, 0, 1).transpose(2, 0, 1))
    mask = load_mask(real_root / "TSA_real_data" / "mask.mat").numpy()
    # A detector that sees every photon (quantum efficiency 1) reads out exactly the photon
    # numbers the official code floors from its float64 measurement: compare every count.
    exact = _real_training(real_root, quantum_efficiency=1.0)
    sources, counts = set(), 0
    for n in range(6):
        item = exact[(n % 3, n)]
        target, aperture = item["target"].numpy(), item["mask"].numpy()
        assert item["input"].shape == (32, 32 + 54) and target.shape == (28, 32, 32) and aperture.shape == (32, 32)
        assert 0 <= target.min() and target.max() <= 1
        assert _find_window(mask, aperture) is not None  # a crop of the real aperture, not rotated
        found = [(s, view) for s, scene in enumerate(scenes) for view in _views(target)
                 if _find_window(scene.astype(np.float32), view) is not None]
        assert found, "the target is not a rotated/flipped crop of a training scene"
        s, view = found[0]
        sources.add(s // 2)
        top, left = _find_window(scenes[s].astype(np.float32), view)
        window = scenes[s][:, top:top + 32, left:left + 32]
        label = next(v for v in _views(window) if np.array_equal(v.astype(np.float32), target))  # the float64 target
        mask_3d = np.tile(aperture.astype(np.float64)[:, :, None], (1, 1, 28))
        photons = _official_photons(label.transpose(1, 2, 0), mask_3d)
        np.testing.assert_array_equal(item["input"].numpy().astype(np.float64) * 2048, photons)
        counts += photons.size
    assert counts == 6 * 32 * 86 and sources == {0, 1}  # both CAVE and KAIST are drawn

    noisy = _real_training(real_root)
    first = noisy[(4, 17)]
    assert first["input"].min() >= 0
    np.testing.assert_array_equal(first["input"].numpy() * 2048, np.round(first["input"].numpy() * 2048))
    again = noisy[(4, 17)]
    assert all(torch.equal(first[k], again[k]) for k in ("input", "target", "mask"))  # a function of (seed, item, sample)
    assert not torch.equal(first["input"], noisy[(4, 18)]["input"])
    assert not torch.equal(first["input"], _real_training(real_root, seed=1)[(4, 17)]["input"])


def test_real_cassi_defaults_and_errors(real_root):
    import inspect

    from glmha.data.restoration import DatasetError
    from glmha.engine import build_dataset
    from glmha.data.spectral_datasets import RealCASSITraining

    defaults = {k: p.default for k, p in inspect.signature(RealCASSITraining).parameters.items()}
    assert (defaults["crop_size"], defaults["length"], defaults["quantum_efficiency"], defaults["bit_depth"], defaults["gain"]) == (
        384, 20000 // (384 // 96) ** 2, 0.4, 2048, 1.2)
    assert _real_training(real_root, kaist=None)[(0, 0)]["target"].shape == (28, 32, 32)
    with pytest.raises(DatasetError, match="needs the CAVE or the KAIST scenes"):
        _real_training(real_root, cave=None, kaist=None)
    with pytest.raises(DatasetError, match="smaller than the crop size 40"):
        _real_training(real_root, crop_size=40)
    with pytest.raises(DatasetError, match="needs the camera's coded aperture"):
        _real_training(real_root, mask=None)
    small = {"type": "real_cassi_scenes", "root": str(real_root / "TSA_simu_data" / "Truth"), "mask": str(real_root / "small_mask.npy")}
    np.save(real_root / "small_mask.npy", np.ones((20, 30), np.float32))
    with pytest.raises(DatasetError, match=r"small_mask.npy \(20x30\) is smaller than the scenes \(24x24\)"):
        build_dataset(small)


def test_synthetic_real_cassi_builtin_data():
    from glmha.data.cassi import random_mask
    from glmha.engine import build_dataset

    data = build_dataset({"type": "synthetic_real_cassi", "count": 2, "size": 40, "crop_size": 24, "augment": True, "seed": 3})
    assert data.mask.shape == (660, 660) and torch.equal(data.mask, random_mask(660, 660, seed=0))
    item = data[(1, 5)]
    assert item["input"].shape == (24, 24 + 54) and item["target"].shape == (28, 24, 24)
    assert item["input"].min() >= 0 and 0 <= item["target"].min() and item["target"].max() <= 1
    assert _find_window(data.mask.numpy(), item["mask"].numpy()) is not None
    assert not torch.equal(item["input"], data[(1, 6)]["input"])
    whole = data[1]  # evaluation: the whole scene, fixed crop of the aperture and fixed noise
    assert whole["target"].shape == (28, 40, 40) and torch.equal(whole["input"], data[1]["input"])


def test_real_mst_protocol_on_real_layout(real_root, tmp_path):
    """Train on CAVE_512_28 + KAIST_CVPR2021 with the real mask; evaluate on scenes seen through it."""
    from glmha.engine import build_dataset
    from glmha.engine.tasks import RealCASSITask

    scenes = f"{{type: real_cassi_scenes, root: {real_root}/TSA_simu_data/Truth, mask: {real_root}/TSA_real_data/mask.mat}}"
    overrides = QUIET + [
        f"data={{train: {{type: real_cassi_train, cave: {real_root}/CAVE_512_28, kaist: {real_root}/KAIST_CVPR2021,"
        f" mask: {real_root}/TSA_real_data/mask.mat, crop_size: 32, length: 10}}, val: {scenes}, test: {{KAIST_real_mask: {scenes}}}}}",
    ]
    result = train(MST_REAL, overrides, variant="smoke", output_dir=tmp_path / "run")
    table = evaluate(MST_REAL, result.weights, overrides, variant="smoke", output_dir=tmp_path / "eval")
    assert [r["image"] for r in table.per_image] == ["scene01", "scene02"]

    # The model sees the noisy measurement alone; per-band PSNR by hand for scene 2.
    model = load_checkpoint(build_model(load_config(MST_REAL, variant="smoke")), result.weights).eval()
    item = build_dataset(load_config(MST_REAL, overrides, variant="smoke")["data"]["test"]["KAIST_real_mask"])[1]
    assert item["input"].shape == (24, 24 + 54)
    with torch.no_grad():
        pred = RealCASSITask().predict(model, {"input": item["input"][None]})[0]
        torch.testing.assert_close(pred, model(item["input"][None])[0])
    p, t = (pred.double().numpy() * 256).round(), (item["target"].double().numpy() * 256).round()
    psnr = np.mean([10 * np.log10(255**2 / np.mean((p[c] - t[c]) ** 2)) for c in range(28)])
    assert table.per_image[1]["psnr_train_log"] == pytest.approx(psnr, abs=1e-4)
    with pytest.raises(ValueError, match="tiled inference does not apply"):
        RealCASSITask().predict(model, {"input": item["input"][None]}, tile=16)
