"""Ctrl-C and SIGTERM: one line saying what was interrupted and what was kept, exit code 130 / 143,
no traceback, and no partial file left under an output's name."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import glmha
import glmha.cli
from glmha.cli import main
from glmha.cli.common import Interrupted


def _interrupting(monkeypatch, command: str, raised: BaseException) -> None:
    def run(args):
        raise raised

    monkeypatch.setattr(glmha.cli.COMMANDS[command], "run", run)


def test_ctrl_c_prints_what_the_command_kept(monkeypatch, capsys):
    _interrupting(monkeypatch, "complexity", KeyboardInterrupt())
    assert main(["complexity"]) == 130
    err = capsys.readouterr().err
    assert err == f"glmha complexity: interrupted; {glmha.cli.complexity.INTERRUPTED}\n"


def test_the_kept_text_is_formatted_with_the_arguments(monkeypatch, capsys):
    _interrupting(monkeypatch, "score", Interrupted("", 143))
    assert main(["score", "deraining", "--restored", "r/"]) == 143
    assert capsys.readouterr().err == "glmha score: interrupted; nothing was written (--output is written whole, at the end)\n"
    _interrupting(monkeypatch, "rank", KeyboardInterrupt())
    assert main(["rank", "--output", "spectra"]) == 130
    assert "the files written so far in spectra are whole" in capsys.readouterr().err


def test_an_interrupt_with_its_own_account_keeps_it(monkeypatch, capsys):
    from glmha.engine import TrainingInterrupted

    _interrupting(monkeypatch, "train", TrainingInterrupted("stopped by SIGTERM at iteration 3 of 6, after writing its checkpoint", 143))
    assert main(["train", "config.yaml"]) == 143
    assert capsys.readouterr().err == "glmha train: stopped by SIGTERM at iteration 3 of 6, after writing its checkpoint\n"


def test_the_demo_does_not_pass_on_the_trainers_resume_advice(monkeypatch, capsys):
    import glmha.experiments.demo
    from glmha.engine import TrainingInterrupted

    def run_demo(*args, **kwargs):
        raise TrainingInterrupted("stopped by SIGTERM at iteration 3 of 6, after writing its checkpoint; run the same command "
                                  "again to resume", 143)

    monkeypatch.setattr(glmha.experiments.demo, "run_demo", run_demo)
    assert main(["demo", "--output", "report"]) == 143  # a rerun starts the demo's runs afresh: its own account
    assert capsys.readouterr().err == f"glmha demo: interrupted; {glmha.cli.demo.INTERRUPTED.format(output='report')}\n"


def test_sigterm_is_an_interrupt_while_a_command_runs(monkeypatch, capsys):
    def run(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not interrupt")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(glmha.cli.COMMANDS["complexity"], "run", run)
    started = time.monotonic()
    assert main(["complexity"]) == 143
    assert time.monotonic() - started < 4
    assert capsys.readouterr().err.startswith("glmha complexity: interrupted; nothing was written")
    assert signal.getsignal(signal.SIGTERM) is before  # restored for the caller


IMAGES = 60


@pytest.fixture(scope="module")
def restore_job(tmp_path_factory):
    """A tiny Restormer and enough images that restoring them takes seconds."""
    import cv2

    root = tmp_path_factory.mktemp("interrupt")
    torch.manual_seed(0)
    model = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    checkpoint = glmha.save_model(model, root / "tiny.safetensors")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        cv2.imwrite(str(images / f"{i:03d}.png"), rng.integers(0, 256, (160, 160, 3), dtype=np.uint8))
    return checkpoint, images


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_restore_stopped_by_a_signal(restore_job, tmp_path, sig, code):
    import cv2

    checkpoint, images = restore_job
    out = tmp_path / "out"
    command = [sys.executable, "-m", "glmha.cli", "restore", str(images), "--checkpoint", str(checkpoint), "--output", str(out),
               "--tile", "none"]
    # a shell's background jobs (nohup, `make test &`) start with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: the command gets the default disposition, as in a terminal
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (out.is_dir() and any(out.glob("*.png"))) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # signal once restoring is under way: one output written
    assert process.poll() is None, process.communicate()
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code
    assert "Traceback" not in err
    said = [line for line in re.split(r"[\r\n]", err) if line.strip() and not line.startswith("restoring:")]  # less the progress bar
    assert said == [f"glmha restore: interrupted; {glmha.cli.restore.INTERRUPTED.format(output=out)}"]
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith(".glmha-folder"))
    assert written and len(written) < IMAGES
    for name in written:  # only whole PNGs: no temporary file, no claim, no partial image
        assert name.endswith(".png") and not name.startswith(".")
        assert cv2.imread(str(out / name)).shape == (160, 160, 3)
