"""Training end to end on CPU: every smoke config trains, validates, checkpoints and resumes;
resume is exact; 2-process DDP (gloo) equals one process with the doubled batch; evaluation
follows the protocol and writes its tables; errors reach the user as one line."""
import os
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from glmha.engine import evaluate, latest_checkpoint, train

from .conftest import CONFIGS, QUIET

DERAIN = CONFIGS / "restormer" / "deraining_csa.yaml"


def _same_weights(a, b, atol=0.0):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=k)


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
    _same_weights(second.weights, uninterrupted.weights)
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
    _same_weights(tmp_path / "ddp" / "model.safetensors", single.weights, atol=1e-5)


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
    stale = out / "checkpoints" / f".{saved[0].name}.12345.dead.tmp"  # what a kill during a write leaves
    stale.write_bytes(b"partial")
    resumed = train(DERAIN, LONG, variant="smoke", output_dir=out, max_steps=2)
    assert resumed.iteration == done + 2
    assert not stale.exists() and not list(out.rglob("*.tmp"))


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
    _same_weights(latest_checkpoint(out)[0], latest_checkpoint(tmp_path / "reference")[0])


def test_keep_checkpoints_below_one_is_refused():
    from glmha.engine import ConfigError, load_config
    from glmha.engine.trainer import _settings

    with pytest.raises(ConfigError, match="train.keep_checkpoints = 0: must be an integer > 0"):
        _settings(load_config(DERAIN, ["train.keep_checkpoints=0"]))


def test_pruning_keeps_the_checkpoint_just_written(tmp_path):
    from glmha.engine.trainer import _save_checkpoint

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

    from glmha.engine.trainer import LOCK_FILE, RunFolderError

    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / LOCK_FILE, "a+") as held:  # what a running `glmha train` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        with pytest.raises(RunFolderError, match=r"in use by another run \(process 4242\)"):
            train(DERAIN, QUIET, variant="smoke", output_dir=tmp_path, max_steps=1)
    assert train(DERAIN, QUIET, variant="smoke", output_dir=tmp_path, max_steps=1).iteration == 1  # released: usable


def test_resume_with_another_config_is_refused_unless_forced(stopped_run, tmp_path, capsys):
    from glmha.engine.trainer import RunFolderError, config_differences

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
    from glmha.engine.trainer import RunFolderError

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

    from glmha.checkpoint import CheckpointError
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


def test_train_log_has_config_versions_and_console_lines(tmp_path, capsys, monkeypatch):
    import sys

    import yaml

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as without the tensorboard extra
    train(DERAIN, ["train.progress=false"], variant="smoke", output_dir=tmp_path, max_steps=3)
    train(DERAIN, ["train.progress=false"], variant="smoke", output_dir=tmp_path)
    console = capsys.readouterr().out.strip().splitlines()
    log = (tmp_path / "train.log").read_text()
    assert log.count("==== glmha train started") == 2 and "versions: glmha " in log and ", torch " in log and "device cpu" in log
    header = log.split("==== glmha train started")[1]
    config_text = header.split("config:\n", 1)[1].split("\niteration", 1)[0]
    assert yaml.safe_load(config_text)["model"]["dim"] == 8
    assert "tensorboard is not installed" in console[0] and not (tmp_path / "tensorboard").exists()
    assert any(line.startswith("resuming from ") for line in console)
    for line in console:  # every console line is in the log
        assert line in log
    assert "iteration 1: loss " in log and "iteration 6: psnr " in log and "finished: 6 iterations" in log
