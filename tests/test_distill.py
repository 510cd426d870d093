import json

import numpy as np
import pytest
import torch
from PIL import Image

import glmha
from glmha.cli import main
from glmha.distill import build_student, data_spec, default_task, distill
from glmha.engine.tasks import DistillationTask, build_dataset
from glmha.checkpoint import load_model

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2]}
BUILTIN = {"type": "synthetic", "task": "deraining", "num_images": 3, "image_size": 32, "seed": 0}


@pytest.fixture()
def teacher():
    torch.manual_seed(0)
    return glmha.create_model("restormer", **TINY).eval()


def test_the_student_is_the_teacher_with_svd_glmha(teacher):
    student, ranks = build_student(teacher, [], rank_ratio=0.5)
    assert ranks is None
    kinds = {type(m).__name__ for m in student.modules()}
    assert "GLMHA" in kinds and "MDTA" not in kinds
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    # everything but the attention's key/value path is the teacher's, untouched
    assert all(torch.equal(v, student_state[k]) for k, v in teacher_state.items() if ".attn." not in k)
    assert {type(m).__name__ for m in teacher.modules()} >= {"MDTA"}
    per_layer, ranks = build_student(teacher, [torch.rand(1, 3, 32, 32)], share=0.9)
    assert ranks and set(ranks) == {n for n, m in teacher.named_modules() if type(m).__name__ == "MDTA"}


def test_distillation_targets_are_the_teachers_outputs(teacher):
    task = DistillationTask("deraining", teacher)
    batch = {"input": torch.rand(2, 3, 24, 20), "target": torch.rand(2, 3, 24, 20)}
    prepared = task.prepare_batch(batch)
    with torch.no_grad():
        expected = glmha.inference.restore(teacher, batch["input"])
    assert torch.allclose(prepared["target"], expected, atol=1e-6)
    assert torch.equal(prepared["ground_truth"], batch["target"])
    pred = prepared["target"] + 0.01
    scores = task.metrics(pred, prepared)
    assert torch.allclose(scores["psnr_to_teacher"], torch.full((2,), 40.0, dtype=torch.float64), atol=1e-4)  # 10 log10(1 / 1e-4)
    assert "psnr" in scores and "ssim" in scores  # the ground truth's metrics, through the deraining protocol


def test_feature_term_is_zero_for_the_teacher_itself(teacher):
    task = DistillationTask("deraining", teacher, feature_weight=1.0)
    batch = task.prepare_batch({"input": torch.rand(1, 3, 32, 32)})
    assert len(task._teacher_features) == 8  # encoder levels 1-3, latent, decoder levels 3-1, refinement
    with torch.no_grad():
        task.forward(teacher, batch)
    assert float(task.extra_loss()) == pytest.approx(0.0, abs=1e-7)


def test_distill_resumes_exactly(tmp_path, teacher):
    options = dict(task="deraining", rank_ratio=0.5, iterations=4, batch_size=2, patch_size=16, lr=1e-3, seed=1, device="cpu", progress=False)
    whole = distill(teacher, tmp_path / "whole", BUILTIN, BUILTIN | {"seed": 5}, **options)
    distill(teacher, tmp_path / "sliced", BUILTIN, BUILTIN | {"seed": 5}, max_steps=2, **options)
    sliced = distill(teacher, tmp_path / "sliced", BUILTIN, BUILTIN | {"seed": 5}, **options)
    assert sliced.summary["iterations"] == 4 and sliced.summary["finished"]
    a, b = load_model(whole.student, verbose=False), load_model(sliced.student, verbose=False)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    report = json.loads((tmp_path / "whole" / "distill.json").read_text())
    assert report["params"]["student"] < report["params"]["teacher"] and report["macs"]["student"] < report["macs"]["teacher"]
    assert {"psnr_to_teacher", "psnr", "teacher_psnr"} <= set(report["metrics"])
    # the student file describes itself: a GLMHA Restormer
    assert a.spec.attention == "glmha" and type(a).__name__ == "Restormer"


def test_data_spec_folders(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "paired" / "input").mkdir(parents=True)
    (tmp_path / "paired" / "target").mkdir()
    (tmp_path / "plain").mkdir()
    pixels = rng.integers(30, 200, (20, 24, 3), dtype=np.uint8)
    for folder in ("paired/input", "paired/target", "plain"):
        Image.fromarray(pixels).save(tmp_path / folder / "a.png")
    assert data_spec("deraining", tmp_path / "paired")["type"] == "paired_folder"
    spec = data_spec("deraining", tmp_path / "plain")
    item = build_dataset(spec)[0]
    assert torch.allclose(item["input"], torch.from_numpy(pixels.transpose(2, 0, 1) / 255).float(), atol=1e-7)
    item = build_dataset(data_spec("rgb_to_hsi", tmp_path / "plain"))[0]  # min-max normalised, as MST++ reads RGB
    expected = (pixels.astype(np.float64) - pixels.min()) / (pixels.max() - pixels.min())
    assert torch.allclose(item["input"].double(), torch.from_numpy(expected.transpose(2, 0, 1)), atol=1e-6)
    assert data_spec("rgb_to_hsi", "builtin")["type"] == "synthetic_rgb2hsi"
    with pytest.raises(ValueError, match="no built-in inputs"):
        data_spec("cassi", "builtin")
    with pytest.raises(ValueError, match="a folder of images"):
        data_spec("deraining", tmp_path / "missing")


def test_default_task_follows_preset_and_architecture(teacher):
    assert default_task(teacher) == "deraining"
    assert default_task(glmha.create_model("mst_plus_plus", stage=1)) == "rgb_to_hsi"
    with pytest.raises(ValueError, match="Restormer and MST\\+\\+"):
        default_task(glmha.create_model("mst_s", stage=1, num_blocks=[1, 1]))


def test_distill_command(tmp_path, teacher, capsys):
    glmha.save_model(teacher, tmp_path / "teacher.safetensors")
    args = ["distill", "--teacher", str(tmp_path / "teacher.safetensors"), "--inputs", "builtin", "--test", "builtin",
            "--output", str(tmp_path / "run"), "--iterations", "2", "--batch-size", "2", "--patch-size", "16",
            "--builtin-images", "3", "--rank-ratio", "0.5"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Student against teacher: PSNR" in out and "| parameters |" in out
    assert load_model(tmp_path / "run", verbose=False).spec.attention == "glmha"
    assert main([*args[:3], "--inputs", str(tmp_path / "nothing"), "--output", str(tmp_path / "run2")]) == 1
    assert "inputs must be 'builtin' or a folder of images" in capsys.readouterr().err
    assert main([*args, "--iterations", "0"]) == 1
    assert "--iterations must be a positive integer" in capsys.readouterr().err
