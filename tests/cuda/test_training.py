"""Training on the device: the trainer with bf16/fp16 autocast and an exact resume, `glmha train`
under torchrun, `glmha distill` and `glmha study --budget tiny`, each a few iterations.

torchrun: ``glmha.engine.distributed.init_distributed`` joins a process group (NCCL on CUDA, gloo on
the CPU) only when ``WORLD_SIZE > 1``; with ``--nproc_per_node 1`` the trainer runs the torchrun
environment without a group. Two processes need two GPUs for NCCL (one GPU per rank), so the
two-process run is done on machines with two GPUs or more (gloo's, on the CPU, in tests/engine).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import glmha
from glmha.cli import main
from glmha.engine import train

from .conftest import DEVICE_ENV, TINY

pytestmark = pytest.mark.cuda

ROOT = Path(__file__).resolve().parents[2]
DERAIN = ROOT / "configs" / "restormer" / "deraining_csa.yaml"
QUIET = ["train.progress=false", "train.tensorboard=false"]


@pytest.fixture()
def _restore_determinism():
    # train.deterministic=true switches deterministic algorithms on for the process: switch back after
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark = saved[2]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_training_and_exact_resume(precision, device, tmp_path, _restore_determinism):
    if precision == "fp16" and device.type != "cuda":
        pytest.skip("the trainer refuses fp16 on the CPU (tests/engine/test_recipes.py checks that)")
    # deterministic algorithms: on a GPU, cuDNN's default backward kernels may sum in another
    # order from run to run, and Adam turns tiny differences into steps of the learning rate
    overrides = QUIET + [f"train.precision={precision}", "train.deterministic=true"]
    whole = train(DERAIN, overrides, variant="smoke", output_dir=tmp_path / "whole", device=device)
    first = train(DERAIN, overrides, variant="smoke", output_dir=tmp_path / "sliced", max_steps=3, device=device)
    assert first.iteration == 3 and not first.finished
    resumed = train(DERAIN, overrides, variant="smoke", output_dir=tmp_path / "sliced", device=device)
    assert resumed.finished and resumed.iteration == whole.iteration == 6
    assert all(np.isfinite(v) for v in resumed.metrics.values())
    a, b = load_file(str(whole.weights)), load_file(str(resumed.weights))
    atol = 0 if device.type == "cpu" else 1e-5  # a GPU may still pick other kernels after the restart
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=key)


def glmha_command() -> str:
    found = Path(sys.executable).with_name("glmha")
    return str(found) if found.exists() else shutil.which("glmha") or pytest.fail("the glmha command is not installed")


def torchrun_train(nproc: int, device: torch.device, output: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "--no-python", glmha_command(), "train", str(DERAIN), "--smoke", "--device", device.type,
               "--output-dir", str(output), *QUIET, "train.precision=bf16"]
    env = dict(os.environ, OMP_NUM_THREADS="1", **{DEVICE_ENV: device.type})
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_one_process(device, tmp_path):
    run = torchrun_train(1, device, tmp_path / "run")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"device {device.type}" in log


def test_torchrun_two_processes(device, tmp_path):
    if device.type == "cpu":
        pytest.skip("gloo's two-process training is checked on the CPU by tests/engine/test_train.py")
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL needs one GPU per process; this machine has one")
    run = torchrun_train(2, device, tmp_path / "run")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_distill_command_on_device(device, tmp_path, capsys):
    torch.manual_seed(0)
    teacher = glmha.create_model("restormer", **TINY["restormer"]).eval()
    glmha.save_model(teacher, tmp_path / "teacher.safetensors")
    args = ["distill", "--teacher", str(tmp_path / "teacher.safetensors"), "--inputs", "builtin", "--test", "builtin",
            "--output", str(tmp_path / "run"), "--iterations", "2", "--batch-size", "2", "--patch-size", "16",
            "--builtin-images", "3", "--rank-ratio", "0.5", "--device", device.type]
    assert main(args) == 0
    assert "Student against teacher: PSNR" in capsys.readouterr().out
    student = glmha.load_model(tmp_path / "run", verbose=False)
    assert student.spec.attention == "glmha"


def test_study_tiny_on_device(device, tmp_path):
    args = ["study", "--budget", "tiny", "--tasks", "deraining", "--variants", "csa", "glmha", "--seeds", "1",
            "--test-images", "2", "--device", device.type, "--output", str(tmp_path / "study")]
    assert main(args) == 0
    payload = json.loads((tmp_path / "study" / "study.json").read_text())
    rows = {row["variant"]: row for row in payload["rows"]}
    assert set(rows) == {"csa", "glmha"} and rows["glmha"]["macs"] < rows["csa"]["macs"]
