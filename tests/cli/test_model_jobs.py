"""Each command checks that the model does its job before reading any input, and names the command that runs it."""
from pathlib import Path

import pytest
import torch
import yaml

import glmha
from glmha.cli import main
from glmha.models.jobs import CASSI, IMAGE, REAL_CASSI, RGB_TO_HSI, model_job

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    torch.manual_seed(0)
    return {
        "restormer": glmha.save_model(glmha.create_model("restormer", **TINY), root / "restormer.safetensors"),
        "mst_plus_plus": glmha.save_model(glmha.create_model("mst_plus_plus", stage=1), root / "mst_plus_plus.safetensors"),
        "mst_s": glmha.save_model(glmha.create_model("mst_s", num_blocks=[1, 1, 1]), root / "mst_s.safetensors"),
    }


def test_model_jobs():
    assert model_job(glmha.create_model("restormer", **TINY)) == IMAGE
    assert model_job(glmha.create_model("restormer", **TINY, inp_channels=6, dual_pixel_task=True)) == IMAGE
    assert model_job(glmha.optimize(glmha.create_model("mst_plus_plus", stage=1), compile=False)) == RGB_TO_HSI
    assert model_job(glmha.create_model("mst_s", num_blocks=[1, 1, 1])) == CASSI
    assert model_job(glmha.create_model("mst_s_real", stage=1, num_blocks=[1, 1])) == REAL_CASSI


@pytest.mark.parametrize("model, use", [("mst_plus_plus", "use glmha reconstruct, not glmha restore"),
                                        ("mst_s", "use glmha reconstruct --mask MASK, not glmha restore")])
def test_restore_refuses_spectral_models_before_reading_images(files, tmp_path, capsys, model, use):
    out = tmp_path / "out"
    assert main(["restore", str(tmp_path / "no-such-photo.jpg"), "--checkpoint", str(files[model]), "--output", str(out)]) == 1
    line = _one_line(capsys)
    assert line.startswith(f"glmha restore: error: {model} (csa) reconstructs spectral cubes") and line.endswith(use)
    assert not out.exists()


def test_reconstruct_refuses_image_models_before_reading_inputs(files, tmp_path, capsys):
    out = tmp_path / "cubes"
    assert main(["reconstruct", str(tmp_path / "no-such-photo.png"), "--checkpoint", str(files["restormer"]), "--output", str(out)]) == 1
    assert _one_line(capsys) == ("glmha reconstruct: error: restormer (csa) restores images (image to image); "
                                 "use glmha restore, not glmha reconstruct")
    assert not out.exists()


def test_evaluate_refuses_a_run_of_another_task(files, tmp_path, capsys):
    run = tmp_path / "derain_run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "deraining", "model": {"name": "restormer", **TINY}}))
    glmha.save_model(glmha.create_model("restormer", **TINY), run / "model.safetensors")
    out = tmp_path / "eval"
    config = CONFIGS / "restormer" / "gaussian_denoising_color_blind_csa.yaml"
    assert main(["evaluate", str(config), "--smoke", "--checkpoint", str(run), "--output-dir", str(out)]) == 1
    line = _one_line(capsys)
    assert line.startswith(f"glmha evaluate: error: {run / 'model.safetensors'} was trained for deraining ({run / 'config.yaml'}), "
                           "but the config evaluates gaussian_denoising; evaluate it with a deraining config")
    assert not out.exists() or not any(out.iterdir())  # nothing evaluated, nothing written


def test_evaluate_refuses_a_model_of_another_kind(files, tmp_path, capsys):
    config = CONFIGS / "mst_plus_plus" / "ntire2022_csa.yaml"
    assert main(["evaluate", str(config), "--smoke", "--checkpoint", str(files["restormer"]), "--output-dir", str(tmp_path / "e")]) == 1
    assert _one_line(capsys) == (
        f"glmha evaluate: error: {files['restormer']} holds a restormer model, which restores images (image to image), but the "
        "config evaluates rgb_to_hsi; evaluate it with a config of task defocus_deblurring, deraining, gaussian_denoising, "
        "motion_deblurring or real_denoising")


def test_evaluate_recognises_an_official_file_without_record(tmp_path, capsys):
    official = tmp_path / "mst_plus_plus.pth"
    torch.save(glmha.create_model("mst_plus_plus").state_dict(), official)  # the official layout, no record
    config = CONFIGS / "restormer" / "deraining_csa.yaml"
    assert main(["evaluate", str(config), "--smoke", "--checkpoint", str(official), "--output-dir", str(tmp_path / "e")]) == 1
    line = _one_line(capsys)
    assert "holds a mst_plus_plus model (official file layout), which reconstructs spectral cubes from RGB images" in line
    assert line.endswith("evaluate it with a config of task rgb_to_hsi")
