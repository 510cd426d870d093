"""The spectral tasks: smoke configs train and resume, and the official protocols on tiny files
in the official layouts (NTIRE 2022 for MST++, CAVE/KAIST for MST)."""
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


@pytest.mark.parametrize("path", [MSTPP, MST_L, CONFIGS / "mst" / "mst_l_cassi_glmha.yaml"], ids=lambda p: p.stem)
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
