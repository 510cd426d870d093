"""glmha study's options of where runs go: one clear line for each bad value, before anything trains."""
import sys

import pytest
import torch

from glmha.cli import main
from glmha.experiments.study_jobs import cpu_count

SMALL = ["--budget", "tiny", "--tasks", "deraining", "--seeds", "1"]


def error_of(args, capsys) -> str:
    assert main(["study", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("glmha study: error: ") and "\n" not in err
    return err.removeprefix("glmha study: error: ")


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "--jobs must be at least 1, got 0"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--device", "cpu", "--devices", "cpu", "cpu"], "give --device or --devices, not both"),
    (["--jobs", "1", "--devices", "cpu", "cpu"], "2 devices but 1 run at a time: run 2 at once (--jobs 2) to use them all"),
    (["--devices", "gpu:1"], "--devices 'gpu:1' is not a device"),
    (["--no-wait"], "--no-wait needs --executor slurm or --executor local"),
    (["--slurm-partition", "gpu"], "--slurm-partition applies to Slurm jobs: add --executor slurm"),
    (["--time-limit", "30"], "--time-limit applies to jobs: add --executor slurm or --executor local"),
    (["--executor", "slurm", "--slurm", "qos"], "--slurm takes KEY=VALUE (an sbatch option without its dashes, e.g. qos=high), got 'qos'"),
    (["--executor", "slurm", "--slurm", "=high"], "--slurm takes KEY=VALUE"),
    (["--executor", "slurm", "--gpus-per-job", "-1"], "--gpus-per-job must be 0 or more, got -1"),
    (["--executor", "local", "--time-limit", "0"], "--time-limit must be at least 1 minute, got 0"),
    (["--executor", "slurm", "--devices", "cpu"], "--devices chooses devices of this machine; Slurm jobs get theirs with --gpus-per-job"),
])
def test_bad_options_are_one_line(args, message, tmp_path, capsys):
    assert error_of([*SMALL, *args, "--output", str(tmp_path / "study")], capsys).startswith(message)
    assert not (tmp_path / "study").exists()  # refused before the study folder was made


def test_a_device_this_machine_lacks(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    message = error_of([*SMALL, "--jobs", "2", "--devices", "cuda:0", "cuda:5", "--output", str(tmp_path)], capsys)
    assert message == "--devices cuda:5: this machine has 2 CUDA device(s), numbered from 0"


def test_executors_without_submitit_say_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    for executor in ("slurm", "local"):
        message = error_of([*SMALL, "--executor", executor, "--output", str(tmp_path / "study")], capsys)
        assert message == "--executor needs submitit, which is not installed: pip install 'glmha[cluster]'"
    assert not (tmp_path / "study").exists()


def test_more_threads_than_cores_is_a_warning(tmp_path, capsys):
    cores = cpu_count()
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")  # the study stops there, after the checks of its options: nothing trains
    assert main(["study", *SMALL, "--threads", str(cores + 1), "--output", str(not_a_folder)]) == 1
    err = capsys.readouterr().err
    assert f"glmha study: warning: --threads {cores + 1} is more than the {cores} cores this process may use" in err
    assert main(["study", *SMALL, "--jobs", "2", "--threads", str(cores), "--output", str(not_a_folder)]) == 1
    err = capsys.readouterr().err
    assert f"glmha study: warning: 2 runs at once x {cores} threads = {2 * cores} threads on {cores} cores" in err
    if cores >= 2:  # by default the runs share the cores out
        assert main(["study", *SMALL, "--jobs", "2", "--output", str(not_a_folder)]) == 1
        assert "warning" not in capsys.readouterr().err
