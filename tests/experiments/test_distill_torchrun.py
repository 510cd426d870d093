"""`glmha distill` under torchrun: 2 gloo processes on the CPU compute what one process computes with the
same global batch (the rank choice shared between them, the teacher's outputs on each one's half); a run
interrupted in one process resumes under torchrun with the same command; Ctrl-C stops a torchrun run with
a checkpoint and one line.

The two-process run is the multi-node command of docs/training.md on one machine: two torchrun agents
(``--nnodes 2 --nproc_per_node 1``) meet through the c10d rendezvous at a local endpoint.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import glmha
from glmha.cli import main
from glmha.experiments.distill import data_spec, distill

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2]}
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "glmha.cli", *args]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)


def torchrun_two_nodes(args: list[str]) -> list[subprocess.CompletedProcess]:
    """``torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint HOST:PORT`` once per "node", here both local."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
               "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "distill-test", "-m", "glmha.cli", *args]
    nodes = [subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = []
    for node in nodes:
        out, err = node.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(command, node.returncode, out, err))
    return done


def assert_same_student(a, b) -> None:
    # float rounding: gloo sums the two halves' gradients in another order than one process sums the batch,
    # and Adam's steps (about lr = 2e-4 each) turn rounding-level gradients into differences of ~1e-6
    first, second = load_file(str(a)), load_file(str(b))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_processes_equal_one_and_resume_its_run(tmp_path):
    torch.manual_seed(0)
    glmha.save_model(glmha.create_model("restormer", **TINY).eval(), tmp_path / "teacher.safetensors")
    # the default student (per-layer ranks), at the cheapest choice whatever this machine's speed: a tiny budget
    args = ["distill", "--teacher", str(tmp_path / "teacher.safetensors"), "--inputs", "builtin", "--iterations", "4",
            "--batch-size", "4", "--patch-size", "16", "--builtin-images", "3", "--seed", "1",
            "--choice-minutes", "0.00001", "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "single"), "--test", "builtin"]) == 0
    single = json.loads((tmp_path / "single" / "distill.json").read_text())
    assert single["student"]["analysis"]["level"] == 7 and single["processes"] == 1

    nodes = torchrun_two_nodes([*args, "--output", str(tmp_path / "ddp"), "--test", "builtin"])
    for node in nodes:
        assert node.returncode == 0, node.stdout[-2000:] + node.stderr[-4000:]
    assert sum(node.stdout.count("student: ") for node in nodes) == 1  # rank 0 alone prints
    assert_same_student(tmp_path / "single" / "model.safetensors", tmp_path / "ddp" / "model.safetensors")
    report = json.loads((tmp_path / "ddp" / "distill.json").read_text())
    assert report["processes"] == 2 and report["batch_size"] == 4
    assert report["student"]["ranks"] == single["student"]["ranks"]  # the choice, shared between the processes
    assert abs(report["metrics"]["psnr_to_teacher"] - single["metrics"]["psnr_to_teacher"]) < 1e-3

    # one process stops after 2 of the 4 iterations; the torchrun command continues its run
    first = distill(tmp_path / "teacher.safetensors", tmp_path / "resumed", data_spec("deraining", "builtin", False, 3, seed=1),
                    task="deraining", iterations=4, batch_size=4, patch_size=16, seed=1, device="cpu",
                    choice_budget_s=0.00001 * 60, max_steps=2, progress=False)
    assert first.summary["iterations"] == 2 and not first.summary["finished"]
    resumed = torchrun([*args, "--output", str(tmp_path / "resumed")])
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    assert "(iteration 2 of 4)" in (tmp_path / "resumed" / "train.log").read_text()
    assert_same_student(tmp_path / "single" / "model.safetensors", tmp_path / "resumed" / "model.safetensors")
    # without --test the report still has the parameters and MACs of both models
    text = (tmp_path / "resumed" / "distill.md").read_text()
    assert "| parameters |" in text and "| GMACs |" in text and "(a training crop)" in text
    assert not (tmp_path / "resumed" / "checkpoints").exists() and not (tmp_path / "resumed" / "student_init.safetensors").exists()


def test_ctrl_c_stops_a_torchrun_run_with_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    glmha.save_model(glmha.create_model("restormer", **TINY).eval(), tmp_path / "teacher.safetensors")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "glmha.cli", "distill",
               "--teacher", str(tmp_path / "teacher.safetensors"), "--inputs", "builtin", "--output", str(tmp_path / "run"),
               "--iterations", "100000", "--batch-size", "4", "--patch-size", "16", "--builtin-images", "3", "--rank-ratio", "0.5",
               "--device", "cpu"]
    run = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "train.log"
    deadline = time.monotonic() + 240
    while not (log.is_file() and "iteration 1:" in log.read_text()):  # training has started
        if run.poll() is not None or time.monotonic() > deadline:
            run.kill()
            pytest.fail("torchrun ended or hung before training: " + run.communicate()[1][-3000:])
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)  # Ctrl-C reaches torchrun, which passes it on to each of its workers once
    _, err = run.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("glmha distill:")]
    assert len(lines) == 1, err[-3000:]  # rank 0 alone says it
    assert lines[0].startswith("glmha distill: interrupted while training the student; kept the checkpoint of iteration ")
    assert lines[0].endswith(" of 100000: the same command resumes from it")
    assert (tmp_path / "run" / "checkpoints" / "latest.json").is_file()
