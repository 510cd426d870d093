import json

import numpy as np
import pytest
import torch
from PIL import Image

import glmha
from glmha.cli import main
from glmha.experiments.distill import analysis_crop, build_student, data_spec, default_task, distill
from glmha.engine.tasks import DistillationTask, build_dataset
from glmha.models.checkpoint import load_model

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2]}
BUILTIN = {"type": "synthetic", "task": "deraining", "num_images": 3, "image_size": 32, "seed": 0}


@pytest.fixture()
def teacher():
    torch.manual_seed(0)
    return glmha.create_model("restormer", **TINY).eval()


def test_the_student_is_the_teacher_with_svd_glmha(teacher):
    student, choice = build_student(teacher, [], rank_ratio=0.5)
    assert choice == {"mode": "rank_ratio", "rank_ratio": 0.5}
    kinds = {type(m).__name__ for m in student.modules()}
    assert "GLMHA" in kinds and "MDTA" not in kinds
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    # everything but the attention's key/value path is the teacher's, untouched
    assert all(torch.equal(v, student_state[k]) for k, v in teacher_state.items() if ".attn." not in k)
    assert {type(m).__name__ for m in teacher.modules()} >= {"MDTA"}
    layers = {n for n, m in teacher.named_modules() if type(m).__name__ == "MDTA"}
    per_layer, choice = build_student(teacher, [torch.rand(1, 3, 32, 32)], share=0.9)
    assert choice["mode"] == "share" and set(choice["ranks"]) == layers
    with pytest.raises(ValueError, match="one of rank_ratio, share and macs_saving"):
        build_student(teacher, [torch.rand(1, 3, 32, 32)], rank_ratio=0.5, share=0.9)


def test_the_default_student_costs_what_rank_ratio_half_costs(teacher):
    inputs = [torch.rand(1, 3, 32, 32) for _ in range(2)]
    student, choice = build_student(teacher, inputs)
    uniform, _ = build_student(teacher, [], rank_ratio=0.5)
    macs = {name: glmha.profile(model, inputs[0]).macs for name, model in (("teacher", teacher), ("student", student), ("uniform", uniform))}
    assert choice["mode"] == "macs_saving" and choice["macs_saving"] == pytest.approx(1 - macs["uniform"] / macs["teacher"])
    assert macs["student"] <= macs["uniform"]  # at least the uniform saving
    assert {n: m.rank for n, m in student.named_modules() if type(m).__name__ == "GLMHA"} == choice["ranks"]
    # the teacher's output on the inputs changes less than with the same rank everywhere
    with torch.no_grad():
        errors = {name: sum(float((model.eval()(x) - teacher(x)).square().mean()) for x in inputs) for name, model in
                  (("student", student), ("uniform", uniform))}
    assert errors["student"] < errors["uniform"]


def test_distillation_targets_are_the_teachers_outputs(teacher):
    task = DistillationTask("deraining", teacher)
    batch = {"input": torch.rand(2, 3, 24, 20), "target": torch.rand(2, 3, 24, 20)}
    prepared = task.prepare_batch(batch)
    with torch.no_grad():
        expected = glmha.inference.restoration.restore(teacher, batch["input"])
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
    assert report["loss"] == "l1" and report["student"]["mode"] == "rank_ratio"
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
    assert main([*args[:-2], "--macs-saving", "1.5"]) == 1
    assert "--macs-saving must be in (0, 1), got 1.5" in capsys.readouterr().err
    # the default student: per-layer ranks at rank ratio 0.5's MACs, reported per layer
    assert main([*args[:-2], "--output", str(tmp_path / "run3")]) == 0
    out = capsys.readouterr().out
    assert "the least output change for" in out and "| encoder_level1.0.attn |" in out
    saved = json.loads((tmp_path / "run3" / "student_ranks.json").read_text())
    assert saved["mode"] == "macs_saving" and set(saved["ranks"]) >= {"encoder_level1.0.attn", "refinement.0.attn"}


def test_spectral_students_learn_a_relative_distance(tmp_path):
    torch.manual_seed(0)
    teacher = glmha.create_model("mst_plus_plus", stage=1, n_feat=31).eval()
    data = {"type": "synthetic_rgb2hsi", "count": 2, "size": 32, "seed": 0}
    run = distill(teacher, tmp_path / "run", data, task="rgb_to_hsi", iterations=1, batch_size=1, patch_size=None,
                  device="cpu", progress=False)
    # MRAE is relative: the ranks are chosen, and the student taught, relative to the teacher's output
    assert run.summary["loss"] == "relative_l1" and run.summary["student"]["relative"] is True


def test_analysis_inputs_are_central_crops_the_network_takes():
    image = torch.arange(300 * 203, dtype=torch.float32).reshape(1, 1, 300, 203)
    crop = analysis_crop(image, 8)
    assert crop.shape[-2:] == (128, 128)
    assert torch.equal(crop, image[..., 86:214, 37:165])
    assert analysis_crop(image[..., :50, :21], 8).shape[-2:] == (48, 16)
    with pytest.raises(ValueError, match="smaller than the network's size multiple 8"):
        analysis_crop(image[..., :5, :40], 8)
