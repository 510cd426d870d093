"""A run folder's state (glmha.engine.run_state): checkpoints, pruning, the folder lock, resume rules,
a killed or signalled run restarting exactly, damaged or crafted checkpoint files refused in one line."""
import os

import pytest
import torch

from glmha.engine import latest_checkpoint, train

from .conftest import DERAIN, QUIET, same_weights


# A long constant-rate run with a checkpoint every 2 iterations: a process to stop from outside.
LONG = QUIET + ["train.stages=null", "train.total_iters=400", "train.batch_size=1", "train.patch_size=32",
                "train.checkpoint_every=2", "train.val_every=1000", "scheduler={name: ConstantLR, factor: 1.0}"]


def _start_training(out):
    """`glmha train` in a subprocess, returned once its checkpoint pointer names iteration 4 or later."""
    import json
    import subprocess
    import sys
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "glmha.cli", "train", "--smoke", "--output-dir", str(out), str(DERAIN), *LONG],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = out / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if pointer.is_file() and json.loads(pointer.read_text())["iteration"] >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    return proc


def _pointer_iteration(out):
    import json

    return json.loads((out / "checkpoints" / "latest.json").read_text())["iteration"]


def test_killed_run_restarts_from_its_last_checkpoint(tmp_path):
    """SIGKILL a `glmha train` process after its first checkpoints, then restart: it goes on from the newest."""
    import signal

    out = tmp_path / "run"
    proc = _start_training(out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = latest_checkpoint(out)
    done = _pointer_iteration(out)
    assert saved and done >= 4 and done % 2 == 0
    stale = out / "checkpoints" / f".{saved[0].name}.glmha-{proc.pid}-0badf00d.tmp"  # what a kill during a write leaves
    stale.write_bytes(b"partial")
    notes = out / ".notes.tmp"  # a user's file of a similar name is not the package's to remove
    notes.write_text("mine")
    resumed = train(DERAIN, LONG, variant="smoke", output_dir=out, max_steps=2)
    assert resumed.iteration == done + 2
    assert not stale.exists() and not [p for p in out.rglob("*.tmp") if p != notes]
    assert notes.read_text() == "mine"


def test_sigterm_writes_a_checkpoint_and_resume_is_bit_identical(tmp_path):
    """SIGTERM: the run writes a checkpoint at the iteration it is in, exits with 143, leaves no temporary
    file, and its continuation equals an uninterrupted run bit for bit."""
    import signal

    out = tmp_path / "run"
    proc = _start_training(out)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    err = proc.stderr.read().decode()
    assert "stopped by SIGTERM at iteration" in err and err.strip().splitlines()[-1].startswith("glmha train: ")
    stopped = _pointer_iteration(out)
    assert stopped >= 4 and not list(out.rglob("*.tmp"))
    assert f"at iteration {stopped} of 400" in err
    train(DERAIN, LONG, variant="smoke", output_dir=out, max_steps=3)
    reference = train(DERAIN, LONG, variant="smoke", output_dir=tmp_path / "reference", max_steps=stopped + 3)
    assert reference.iteration == stopped + 3
    same_weights(latest_checkpoint(out)[0], latest_checkpoint(tmp_path / "reference")[0])


def test_pruning_keeps_the_checkpoint_just_written(tmp_path):
    from glmha.engine.run_state import _save_checkpoint

    model = torch.nn.Linear(2, 2)
    for iteration in (10, 2):  # a leftover of a longer run numbered above the one written now
        _save_checkpoint(tmp_path, model, {"iteration": iteration}, keep=5)
    _save_checkpoint(tmp_path, model, {"iteration": 4}, keep=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "iter_00000004.safetensors", "iter_00000004.state.pt", "latest.json"]
    _save_checkpoint(tmp_path, model, {"iteration": 6}, keep=2)
    assert latest_checkpoint(tmp_path)[0].name == "iter_00000006.safetensors"
    assert len(list((tmp_path / "checkpoints").glob("*.safetensors"))) == 2


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    import fcntl

    from glmha.engine.run_state import LOCK_FILE, RunFolderError

    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / LOCK_FILE, "a+") as held:  # what a running `glmha train` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        with pytest.raises(RunFolderError, match=r"in use by another run \(process 4242\)"):
            train(DERAIN, QUIET, variant="smoke", output_dir=tmp_path, max_steps=1)
    assert train(DERAIN, QUIET, variant="smoke", output_dir=tmp_path, max_steps=1).iteration == 1  # released: usable


def test_resume_with_another_config_is_refused_unless_forced(stopped_run, tmp_path, capsys):
    from glmha.engine.run_state import RunFolderError, config_differences

    out = _copy_run(stopped_run, tmp_path)
    changed = QUIET + ["optimizer.lr=0.001", "model.attention_kwargs={}"]
    with pytest.raises(RunFolderError, match=r"differing: model.attention_kwargs, optimizer.lr\).*--resume force"):
        train(DERAIN, changed, variant="smoke", output_dir=out)
    capsys.readouterr()
    assert train(DERAIN, changed, variant="smoke", output_dir=out, resume="force", max_steps=1).iteration == 3
    line = capsys.readouterr().out.strip()
    assert line.startswith("resuming from ") and "iteration 2 of 6" in line and "optimizer.lr" in line
    # iteration counts and display settings may change
    assert config_differences({"train": {"total_iters": 6, "progress": True}, "seed": 1},
                              {"train": {"total_iters": 9, "progress": False}, "seed": 1}) == []


def test_resume_never_refuses_a_folder_with_checkpoints(stopped_run, tmp_path):
    from glmha.engine.run_state import RunFolderError

    out = _copy_run(stopped_run, tmp_path)
    with pytest.raises(RunFolderError, match="already holds checkpoints.*another --output-dir"):
        train(DERAIN, QUIET, variant="smoke", output_dir=out, resume="never")
    assert train(DERAIN, QUIET, variant="smoke", output_dir=tmp_path / "new", resume="never", max_steps=1).iteration == 1


class _Payload:
    """Pickles into a call that creates ``marker``: loading it unsafely would run code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A smoke run stopped after 2 iterations (one checkpoint), copied by each test that damages it."""
    out = tmp_path_factory.mktemp("stopped")
    train(DERAIN, QUIET, variant="smoke", output_dir=out, max_steps=2)
    return out


def _copy_run(source, tmp_path):
    import shutil

    return shutil.copytree(source, tmp_path / "run")


def test_training_state_is_plain_tensors_and_values(stopped_run):
    state = torch.load(latest_checkpoint(stopped_run)[1], weights_only=True)
    assert state["iteration"] == 2 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_crafted_state_file_runs_no_code_and_is_one_line(stopped_run, tmp_path, capsys, how):
    import pickle

    from glmha.models.checkpoint import CheckpointError
    from glmha.cli import main

    out = _copy_run(stopped_run, tmp_path)
    state_path = latest_checkpoint(out)[1]
    marker = tmp_path / "code_ran"
    if how == "torch.save":
        torch.save({"iteration": 2, "payload": _Payload(marker)}, state_path)
    else:
        state_path.write_bytes(pickle.dumps({"iteration": 2, "payload": _Payload(marker)}))
    with pytest.raises(CheckpointError, match="not a readable glmha training state"):
        train(DERAIN, QUIET, variant="smoke", output_dir=out)
    assert main(["train", str(DERAIN), *QUIET, "--smoke", "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("glmha train: error: ") and str(state_path) in err and "\n" not in err
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["pointer", "weights", "state"])
def test_damaged_checkpoint_is_one_line_naming_the_file(stopped_run, tmp_path, capsys, damage):
    from glmha.cli import main

    out = _copy_run(stopped_run, tmp_path)
    weights, state = latest_checkpoint(out)
    damaged = {"pointer": out / "checkpoints" / "latest.json", "weights": weights, "state": state}[damage]
    damaged.write_bytes(damaged.read_bytes()[: len(damaged.read_bytes()) // 2])
    assert main(["train", str(DERAIN), *QUIET, "--smoke", "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("glmha train: error: ") and str(damaged) in err and "\n" not in err


def test_cli_overrides_anywhere_and_resume_modes(stopped_run, tmp_path, capsys):
    import yaml

    from glmha.cli import main

    out = tmp_path / "new"
    assert main(["train", str(DERAIN), "--smoke", "train.progress=false", "--output-dir", str(out), "train.tensorboard=false",
                 "model.dim=16", "train.total_iters=2", "train.stages=null", "train.patch_size=32"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["dim"] == 16
    capsys.readouterr()
    assert main(["train", str(DERAIN), "--smoke", *QUIET, "--resume", "never", "--output-dir", str(out)]) == 1
    assert "already holds checkpoints" in capsys.readouterr().err
    copy = _copy_run(stopped_run, tmp_path)
    assert main(["train", str(DERAIN), "--smoke", *QUIET, "--output-dir", str(copy), "optimizer.lr=0.001"]) == 1
    err = capsys.readouterr().err.strip()
    assert "differing: optimizer.lr" in err and "--resume force" in err and "\n" not in err
    assert main(["train", str(DERAIN), "--resume", "force", "--smoke", *QUIET, "--output-dir", str(copy), "optimizer.lr=0.001"]) == 0
    assert f"resuming from {copy / 'checkpoints' / 'iter_00000002.safetensors'} (iteration 2 of 6)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["train", str(DERAIN), "--smok3", "train.progress=false"])
    assert info.value.code == 2 and "unrecognized arguments: --smok3" in capsys.readouterr().err
    code = main(["evaluate", str(DERAIN), "--smoke", "--checkpoint", str(out), "model.dim=16", "--output-dir", str(tmp_path / "eval")])
    assert code == 0 and "| synthetic | 2 |" in capsys.readouterr().out


def test_every_file_of_a_run_gets_the_umasks_permissions(tmp_path):
    """Weights, checkpoints, state, config and logs: 0o666 less the umask, so a group can share a run folder."""
    old = os.umask(0o027)
    try:
        train(DERAIN, QUIET + ["train.tensorboard=true"], variant="smoke", output_dir=tmp_path)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"model.safetensors", "best.safetensors", "config.yaml", "train.log", "latest.json"} <= names
    assert any(p.suffix == ".pt" for p in files) and any("tfevents" in p.name for p in files)
    wrong = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files if p.stat().st_mode & 0o777 != 0o640}
    assert not wrong, wrong
