"""Training end to end on CPU: every smoke config trains, validates, checkpoints and resumes;
resume is exact; 2-process DDP (gloo) equals one process with the doubled batch; evaluation
follows the protocol and writes its tables; errors reach the user as one line."""
import os
import socket

import numpy as np
import pytest
import torch

from glmha.engine import evaluate, latest_checkpoint, train

from .conftest import CONFIGS, DERAIN, QUIET, same_weights


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("derain_full")
    return train(DERAIN, QUIET, variant="smoke", output_dir=out)


def test_resume_is_exact(uninterrupted, tmp_path):
    first = train(DERAIN, QUIET, variant="smoke", output_dir=tmp_path, max_steps=4)  # stops inside stage 2
    assert not first.finished and first.iteration == 4
    assert latest_checkpoint(tmp_path)[0].name == "iter_00000004.safetensors"
    second = train(DERAIN, QUIET, variant="smoke", output_dir=tmp_path)
    assert second.finished and second.iteration == 6
    same_weights(second.weights, uninterrupted.weights)
    assert second.history == uninterrupted.history  # validation at 3 (before the stop) and 6
    # a finished run is not trained again
    assert train(DERAIN, QUIET, variant="smoke", output_dir=tmp_path).iteration == 6


def test_run_folder_contents(uninterrupted):
    out = uninterrupted.output_dir
    assert (out / "config.yaml").is_file() and (out / "model.safetensors").is_file()
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["iter_00000003.safetensors", "iter_00000003.state.pt", "iter_00000006.safetensors",
                     "iter_00000006.state.pt", "latest.json"]
    assert [h["iteration"] for h in uninterrupted.history] == [3, 6]
    assert set(uninterrupted.metrics) == {"psnr", "ssim"} and np.isfinite(uninterrupted.metrics["psnr"])


SMOKE = ["motion_deblurring_csa", "defocus_deblurring_single_csa", "defocus_deblurring_dual_csa", "real_denoising_csa",
         "gaussian_denoising_color_blind_csa", "gaussian_denoising_gray_sigma25_csa", "deraining_glmha"]


@pytest.mark.parametrize("name", SMOKE)
def test_smoke_config_trains_validates_checkpoints_resumes(name, tmp_path):
    path = CONFIGS / "restormer" / f"{name}.yaml"
    first = train(path, QUIET, variant="smoke", output_dir=tmp_path, max_steps=3)
    assert first.iteration == 3 and [h["iteration"] for h in first.history] == [3]
    result = train(path, QUIET, variant="smoke", output_dir=tmp_path)
    assert result.finished and [h["iteration"] for h in result.history] == [3, 6]
    assert all(np.isfinite(v) for v in result.metrics.values())
    table = evaluate(path, result.weights, QUIET, variant="smoke", output_dir=tmp_path / "eval")
    assert table.csv_path.is_file() and "\n| set |" in table.markdown_path.read_text()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, output_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(DERAIN, QUIET, variant="smoke", output_dir=output_dir, device="cpu")


def test_ddp_two_processes_equal_one_process_with_double_batch(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    double = ["train.stages=[{iters: 2, patch_size: 32, batch_size: 4}, {iters: 2, patch_size: 40, batch_size: 4},"
              " {iters: 2, patch_size: 48, batch_size: 2}]"]
    single = train(DERAIN, QUIET + double, variant="smoke", output_dir=tmp_path / "single")
    same_weights(tmp_path / "ddp" / "model.safetensors", single.weights, atol=1e-5)


def test_evaluation_protocol_on_official_layout(uninterrupted, tmp_path):
    """Deraining: PSNR/SSIM on MATLAB's 8-bit Y of the 8-bit output, per set and averaged, checked with scikit-image."""
    from skimage.color import rgb2ycbcr
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from glmha.data.restoration import PairedImageFolder, write_synthetic_folder
    from glmha.engine import build_model, load_config
    from glmha import load_checkpoint, restore

    for i, name in enumerate(["Test100", "Rain100H"]):
        write_synthetic_folder(tmp_path / "Datasets" / "test" / name, "deraining", num_images=2, image_size=32, seed=i)
    overrides = QUIET + [f"data.test={{Test100: {{type: paired_folder, root: {tmp_path}/Datasets/test/Test100}},"
                                 f" Rain100H: {{type: paired_folder, root: {tmp_path}/Datasets/test/Rain100H}}}}"]
    result = evaluate(DERAIN, uninterrupted.weights, overrides, variant="smoke", output_dir=tmp_path / "eval")
    assert [r["set"] for r in result.summary] == ["Test100", "Rain100H", "average"]
    assert len(result.per_image) == 4

    model = load_checkpoint(build_model(load_config(DERAIN, variant="smoke")), uninterrupted.weights).eval()
    data = PairedImageFolder(tmp_path / "Datasets" / "test" / "Rain100H")
    psnrs, ssims = [], []
    for i in range(len(data)):
        item = data[i]
        out = restore(model, item["input"][None])[0].clamp(0, 1).numpy().transpose(1, 2, 0)
        out = np.round(out * 255) / 255
        y_out = np.floor(rgb2ycbcr(out)[..., 0] + 0.5)  # MATLAB's rgb2ycbcr returns uint8 for uint8 images
        y_ref = np.floor(rgb2ycbcr(item["target"].numpy().transpose(1, 2, 0).astype(np.float64))[..., 0] + 0.5)
        psnrs.append(peak_signal_noise_ratio(y_ref, y_out, data_range=255))
        ssims.append(structural_similarity(y_ref, y_out, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
    rain100h = result.summary[1]
    assert rain100h["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-4)
    assert rain100h["ssim"] == pytest.approx(np.mean(ssims), abs=1e-5)
    assert result.summary[2]["psnr"] == pytest.approx((result.summary[0]["psnr"] + rain100h["psnr"]) / 2)
    csv_text = result.csv_path.read_text().splitlines()
    assert csv_text[0] == "set,images,psnr,ssim" and len(csv_text) == 4
    assert "| Rain100H | 2 |" in result.markdown


def test_cli_train_and_evaluate(uninterrupted, tmp_path, capsys):
    from glmha.cli import main

    code = main(["evaluate", str(DERAIN), "--smoke", "--checkpoint", str(uninterrupted.weights), "--output-dir", str(tmp_path)])
    assert code == 0 and "| synthetic | 2 |" in capsys.readouterr().out
    code = main(["train", str(DERAIN), "train.progress=false", "data.train.root=" + str(tmp_path / "missing"), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "dataset folder not found" in err and "missing" in err and len(err.strip().splitlines()) == 1


def test_nan_loss_is_reported(tmp_path):
    with pytest.raises(FloatingPointError, match=r"training loss became (nan|inf) at iteration \d"):
        train(DERAIN, QUIET + ["optimizer.lr=1.0e+30", "train.grad_clip=null"], variant="smoke", output_dir=tmp_path)
