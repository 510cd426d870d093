import hashlib
import io
import json
import os
import re
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import glmha
from glmha.cli import main
from glmha.experiments.distill import (ChoiceProgress, DistillInterrupted, analysis_crop, build_student, data_spec, default_task, distill,
                                       plan_choice)
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
    # the default student: per-layer ranks at rank ratio 0.5's MACs, reported per layer; a budget of
    # 0.6 ms is below any machine's estimate of even the cheapest choice, so it is made at its cheapest, and says so
    assert main([*args[:-2], "--output", str(tmp_path / "run3"), "--choice-minutes", "0.00001"]) == 0
    out, err = capsys.readouterr()
    assert "the least output change for" in out and "| encoder_level1.0.attn |" in out
    assert "Ranks chosen on 1 training crop of at most 64 px with 4 candidate ranks per layer" in out and "over the budget" in out
    assert "the full rank choice would take ~" in err and "--rank-ratio 0.5 skips it" in err
    assert "rank choice: teacher run" in err and "done in" in err
    saved = json.loads((tmp_path / "run3" / "student_ranks.json").read_text())
    assert saved["mode"] == "macs_saving" and set(saved["ranks"]) >= {"encoder_level1.0.attn", "refinement.0.attn"}


def test_spectral_students_learn_a_relative_distance(tmp_path):
    torch.manual_seed(0)
    teacher = glmha.create_model("mst_plus_plus", stage=1, n_feat=31).eval()
    data = {"type": "synthetic_rgb2hsi", "count": 2, "size": 32, "seed": 0}
    run = distill(teacher, tmp_path / "run", data, task="rgb_to_hsi", iterations=1, batch_size=1, patch_size=None,
                  device="cpu", progress=False, choice_budget_s=1e-3)
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


def test_the_rank_choice_is_sized_to_its_budget(teacher):
    from glmha.analysis.allocation import candidate_ratios, model_runs

    images = [torch.rand(1, 3, 200, 150) for _ in range(8)]
    per_pixel = 1e-6
    full = plan_choice(teacher, images, per_pixel, budget_s=None)
    assert (full.level, full.crops, full.side, full.candidates) == (0, 8, 128, 16) and not full.budgeted
    # the estimate: seconds per pixel x the crops' pixels (128 x 128 centres) x the teacher runs
    assert full.runs == model_runs(teacher, candidate_ratios(16)) and full.seconds == pytest.approx(per_pixel * 8 * 128 * 128 * full.runs)
    assert plan_choice(teacher, images, per_pixel, budget_s=full.seconds * 1.01).level == 0
    levels = [plan_choice(teacher, images, per_pixel, budget_s=full.seconds * f) for f in (0.9, 0.3, 0.05)]
    assert [p.level for p in levels] == sorted(p.level for p in levels) and all(p.budgeted and p.seconds <= p.budget_s for p in levels)
    cheapest = plan_choice(teacher, images, per_pixel, budget_s=1e-9)
    assert (cheapest.crops, cheapest.side, cheapest.candidates) == (1, 64, 4) and cheapest.seconds > cheapest.budget_s
    # two processes share the layers: each makes about half the runs
    half = plan_choice(teacher, images, per_pixel, budget_s=None, part=(1, 2))
    assert half.runs == model_runs(teacher, candidate_ratios(16), (1, 2)) < full.runs


def test_choice_progress_says_the_time_left():
    stream = io.StringIO()
    meter = ChoiceProgress(stream, interval=0)
    for done in (2, 3, 10):
        meter(done, 10)
    lines = stream.getvalue().splitlines()
    # the first report (after capturing and the references) starts the clock: no pace to tell yet
    assert len(lines) == 2 and re.fullmatch(r"rank choice: teacher run 3/10, ~\d+ s left", lines[0])
    assert re.fullmatch(r"rank choice: teacher run 10/10, done in \d+ s", lines[1])


def test_a_distill_folder_references_its_teacher_and_keeps_only_the_student(tmp_path, teacher):
    glmha.save_model(teacher, tmp_path / "teacher.safetensors")
    options = dict(task="deraining", rank_ratio=0.5, iterations=2, batch_size=2, patch_size=16, seed=1, device="cpu", progress=False)
    first = distill(tmp_path / "teacher.safetensors", tmp_path / "run", BUILTIN, **options)
    names = {p.name for p in (tmp_path / "run").iterdir()} - {".glmha-folder.json", ".lock"}
    assert names == {"config.yaml", "train.log", "distill_config.json", "distill_run.json", "student_ranks.json", "model.safetensors",
                     "distill.md", "distill.json"}  # no teacher copy, no warm start, no checkpoint
    record = json.loads((tmp_path / "run" / "distill_run.json").read_text())["teacher"]
    assert record["path"] == str((tmp_path / "teacher.safetensors").resolve())
    assert record["sha256"] == hashlib.sha256((tmp_path / "teacher.safetensors").read_bytes()).hexdigest()
    assert "| parameters |" in first.report.read_text() and "(a training crop)" in first.report.read_text()
    # a finished run is not trained again; the same command rewrites its report (here with a test set)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    again = distill(tmp_path / "teacher.safetensors", tmp_path / "run", BUILTIN, BUILTIN | {"seed": 5}, **options)
    assert again.summary["iterations"] == 2 and (tmp_path / "run" / "model.safetensors").read_bytes() == before
    assert "Student against teacher: PSNR" in again.report.read_text()
    with pytest.raises(ValueError, match=r"other settings \(differing: optimizer.lr"):
        distill(tmp_path / "teacher.safetensors", tmp_path / "run", BUILTIN, **{**options, "lr": 1e-3})
    with pytest.raises(ValueError, match=r"differing: the rank choice"):
        distill(tmp_path / "teacher.safetensors", tmp_path / "run", BUILTIN, **{**options, "rank_ratio": 0.25})
    torch.manual_seed(1)
    glmha.save_model(glmha.create_model("restormer", **TINY), tmp_path / "teacher.safetensors")  # another teacher, same path
    with pytest.raises(ValueError, match="was distilled from another teacher"):
        distill(tmp_path / "teacher.safetensors", tmp_path / "run", BUILTIN, **options)


def test_ctrl_c_says_what_was_interrupted_and_kept(tmp_path, teacher, monkeypatch, capsys):
    glmha.save_model(teacher, tmp_path / "teacher.safetensors")
    args = ["distill", "--teacher", str(tmp_path / "teacher.safetensors"), "--inputs", "builtin", "--output", str(tmp_path / "run"),
            "--iterations", "4", "--batch-size", "2", "--patch-size", "16", "--builtin-images", "3", "--rank-ratio", "0.5"]
    assert main([*args[:5], "--output", str(tmp_path / "whole"), *args[7:]]) == 0
    capsys.readouterr()
    original = DistillationTask.prepare_batch
    calls = []

    def press_ctrl_c_in_the_second_step(self, batch):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the trainer finishes the step and writes a checkpoint
        return original(self, batch)

    monkeypatch.setattr(DistillationTask, "prepare_batch", press_ctrl_c_in_the_second_step)
    assert main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("glmha distill: interrupted while training the student; kept the checkpoint of iteration 2 of 4: "
                       "the same command resumes from it")
    monkeypatch.setattr(DistillationTask, "prepare_batch", original)
    # the same command continues, to the uninterrupted run's student; the teacher may have moved (same SHA-256)
    os.replace(tmp_path / "teacher.safetensors", tmp_path / "moved.safetensors")
    assert main([args[0], "--teacher", str(tmp_path / "moved.safetensors"), *args[3:]]) == 0
    assert "despite a changed config: task.teacher" in (tmp_path / "run" / "train.log").read_text()
    a, b = load_model(tmp_path / "whole", verbose=False).state_dict(), load_model(tmp_path / "run", verbose=False).state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items())

    def interrupted_choice(model, inputs, macs_saving, ratios, distance, *, progress, part, gather):
        progress(2, 40)
        progress(3, 40)
        raise KeyboardInterrupt

    monkeypatch.setattr("glmha.analysis.allocation.allocate_ranks", interrupted_choice)
    with pytest.raises(DistillInterrupted) as stop:
        distill(tmp_path / "moved.safetensors", tmp_path / "choice", BUILTIN, task="deraining", device="cpu", progress=False)
    assert str(stop.value).startswith("interrupted while choosing the student's ranks (") and stop.value.exit_code == 130
    assert "kept nothing of the choice (it had reached teacher run 3 of 40)" in str(stop.value)
    assert not (tmp_path / "choice" / "student_init.safetensors").exists()
