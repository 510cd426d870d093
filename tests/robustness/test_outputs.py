"""Nothing lost: every command that writes leaves the user's files (and its own inputs) as they were.

Each case runs a command as a user would, onto a file or folder that is not the command's to
replace, and checks the one-line refusal and that every file there is byte for byte unchanged.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

import glmha
from glmha.io.files import OutputExistsError, atomic_write, claim_outputs
from glmha.io.folders import FolderError, claim_folder, remove_own_temporaries

from .conftest import TINY_RESTORMER, Error, check_cli_outcome

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMOKE = ["--smoke", "train.progress=false", "train.tensorboard=false"]
RNG = np.random.default_rng(5)


def png(path: Path, size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content's hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- single output files
def test_export_never_replaces_its_checkpoint(tmp_path, cli, restormer_checkpoint):
    checkpoint = tmp_path / "m.safetensors"
    checkpoint.write_bytes(restormer_checkpoint.read_bytes())
    before = snapshot(tmp_path)
    for extra in ((), ("--overwrite",)):
        run = cli("export", "--checkpoint", checkpoint, "--output", checkpoint, "--format", "torchscript", *extra)
        check_cli_outcome(run, "export", Error("is the input", "m.safetensors"))
    run_folder = tmp_path / "run"
    glmha.save_model(glmha.create_model("restormer", **TINY_RESTORMER), run_folder / "model.safetensors")
    before = snapshot(tmp_path)
    for output in ("model.safetensors", "model.onnx"):  # onto the run's weights, or anything into the run folder
        run = cli("export", "--checkpoint", run_folder, "--output", run_folder / output, "--overwrite")
        check_cli_outcome(run, "export", Error("input", "run"))
    assert snapshot(tmp_path) == before


def test_export_refuses_an_existing_file_without_overwrite_and_unknown_opsets(tmp_path, cli, restormer_checkpoint):
    (tmp_path / "old.pt").write_bytes(b"a user's file")
    run = cli("export", "--checkpoint", restormer_checkpoint, "--output", tmp_path / "old.pt", "--format", "torchscript")
    check_cli_outcome(run, "export", Error("old.pt", "exists already", "--overwrite"))
    assert (tmp_path / "old.pt").read_bytes() == b"a user's file"
    for opset in ("1", "17", "99"):
        run = cli("export", "--checkpoint", restormer_checkpoint, "--output", tmp_path / "m.onnx", "--opset", opset)
        check_cli_outcome(run, "export", Error("--opset", f"opset {opset} cannot be written", "18"))
    run = cli("export", "--checkpoint", restormer_checkpoint, "--output", tmp_path / "m.pt", "--format", "torchscript", "--opset", "18")
    check_cli_outcome(run, "export", Error("opset applies to ONNX files only"))
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.pt").exists()


def test_export_honours_the_opset(tmp_path, cli, restormer_checkpoint):
    onnx = pytest.importorskip("onnx")
    run = cli("export", "--checkpoint", restormer_checkpoint, "--output", tmp_path / "m.onnx", "--opset", "20", "--size", "16", "16")
    check_cli_outcome(run, "export", None)
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [e.version for e in model.opset_import if e.domain in ("", "ai.onnx")] == [20]


@pytest.mark.parametrize("where", ["target", "restored"])
def test_score_report_never_lands_on_a_scored_image(tmp_path, cli, where):
    png(tmp_path / "r" / "a.png")
    png(tmp_path / "t" / "a.png")
    before = snapshot(tmp_path)
    folder = "t" if where == "target" else "r"
    for extra in ((), ("--overwrite",)):
        run = cli("score", "deraining", "--restored", tmp_path / "r", "--target", tmp_path / "t", "--output", tmp_path / folder / "a.png", *extra)
        check_cli_outcome(run, "score", Error("input", folder))
    assert snapshot(tmp_path) == before


def test_score_refuses_nan_predictions(tmp_path, cli):
    truth = RNG.random((1, 8, 8, 28)).astype(np.float32)
    pred = truth.copy()
    pred[0, 1, 2, 3] = np.nan
    scipy.io.savemat(tmp_path / "Test_result.mat", {"pred": pred, "truth": truth})
    run = cli("score", "cassi", "--restored", tmp_path / "Test_result.mat")
    check_cli_outcome(run, "score", Error("Test_result.mat", "'pred'", "1 NaN"))


def test_score_and_complexity_keep_an_existing_report_without_overwrite(tmp_path, cli):
    png(tmp_path / "r" / "a.png")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.png").write_bytes((tmp_path / "r" / "a.png").read_bytes())
    (tmp_path / "s.csv").write_text("mine")
    run = cli("score", "deraining", "--restored", tmp_path / "r", "--target", tmp_path / "t", "--output", tmp_path / "s.csv")
    check_cli_outcome(run, "score", Error("s.csv", "exists already"))
    assert (tmp_path / "s.csv").read_text() == "mine"
    run = cli("score", "deraining", "--restored", tmp_path / "r", "--target", tmp_path / "t", "--output", tmp_path / "s.csv", "--overwrite")
    check_cli_outcome(run, "score", None)
    assert (tmp_path / "s.csv").read_text().startswith("image,")
    (tmp_path / "p.png").write_bytes(b"mine")
    run = cli("complexity", "--sweep", "--plot", tmp_path / "p.png", "--sweep-pixels", "64", "--sweep-dim", "8")
    check_cli_outcome(run, "complexity", Error("p.png", "exists already"))
    assert (tmp_path / "p.png").read_bytes() == b"mine"


# ----------------------------------------------------------------------------- run and report folders
def _config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = (CONFIGS / "restormer" / "deraining_csa.yaml").read_text().replace("base: _recipe.yaml", f"base: {CONFIGS / 'restormer' / '_recipe.yaml'}")
    (folder / "config.yaml").write_text(text)
    return folder / "config.yaml"


def test_train_never_writes_over_the_users_config(tmp_path, cli):
    config = _config(tmp_path / "exp")
    before = snapshot(tmp_path)
    run = cli("train", config, "--output-dir", tmp_path / "exp", *SMOKE)
    check_cli_outcome(run, "train", Error("exp", "config.yaml"))
    own = _config(tmp_path / "own")
    before = snapshot(tmp_path)
    run = cli("train", own, *SMOKE, f"output_dir={tmp_path / 'own'}")  # the config's output_dir is its own folder
    check_cli_outcome(run, "train", Error("own", "config.yaml"))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("content", ["notes", "weights", "weights-resume-never", "dataset"])
def test_train_refuses_a_folder_of_other_files(tmp_path, cli, content):
    config = _config(tmp_path / "cfg")
    folder = tmp_path / "old"
    folder.mkdir()
    extra = []
    if content == "notes":
        (folder / ".notes.tmp").write_text("a user's notes")
    elif content.startswith("weights"):
        glmha.save_weights(glmha.create_model("restormer", **TINY_RESTORMER), folder / "model.safetensors")
        extra = ["--resume", "never"] if content.endswith("never") else []
    else:
        png(folder / "input" / "0.png")
        png(folder / "target" / "0.png")
    before = snapshot(tmp_path)
    run = cli("train", config, "--output-dir", folder, *extra, *SMOKE)
    check_cli_outcome(run, "train", Error("old", "nothing in it was changed"))
    assert snapshot(tmp_path) == before


def _trained_run(tmp_path: Path, cli) -> tuple[Path, Path]:
    """A smoke config and its finished run folder."""
    config = _config(tmp_path / "cfg")
    run_folder = tmp_path / "run"
    assert cli("train", config, "--output-dir", run_folder, *SMOKE).code == 0
    return config, run_folder


def test_train_keeps_trained_weights_of_its_own_run(tmp_path, cli):
    """A run folder of glmha train whose checkpoints are gone: its weights are not retrained over, with or without --resume never."""
    config, run_folder = _trained_run(tmp_path, cli)
    # resumed from its own config.yaml: the file is the run's, read and not rewritten
    saved = (run_folder / "config.yaml").read_bytes()
    assert cli("train", run_folder / "config.yaml", "--output-dir", run_folder, "train.progress=false").code == 0
    assert (run_folder / "config.yaml").read_bytes() == saved
    for path in (run_folder / "checkpoints").iterdir():
        path.unlink()
    (run_folder / "checkpoints").rmdir()
    before = snapshot(tmp_path)
    for extra in ((), ("--resume", "never")):
        run = cli("train", config, "--output-dir", run_folder, *extra, *SMOKE)
        check_cli_outcome(run, "train", Error("model.safetensors"))
    assert snapshot(tmp_path) == before


def test_demo_and_study_folders_are_not_each_others(tmp_path, cli):
    study = claim_folder(tmp_path / "study", "study")
    png(study / "runs" / "deraining" / "csa" / "seed0" / "kept.png")
    users = tmp_path / "photos"
    png(users / "holiday.png")
    before = snapshot(tmp_path)
    run = cli("demo", "--output", study, "--budget", "tiny", "--tasks", "deraining")
    check_cli_outcome(run, "demo", Error("study", "holds a glmha study"))
    run = cli("demo", "--output", users, "--budget", "tiny", "--tasks", "deraining")
    check_cli_outcome(run, "demo", Error("photos", "holiday.png"))
    assert snapshot(tmp_path) == before


def test_evaluate_never_saves_into_the_test_set(tmp_path, cli):
    from glmha.data.restoration import write_synthetic_folder

    config, run_folder = _trained_run(tmp_path, cli)
    root = write_synthetic_folder(tmp_path / "Test", "deraining", num_images=2, image_size=32, seed=1)
    before = snapshot(tmp_path / "Test")
    for output in (root, root / "target", root / "eval", tmp_path):  # the set, inside it, and a folder holding it
        run = cli("evaluate", config, "--smoke", f"data.test={{Test: {{type: paired_folder, root: {root}}}}}", "--checkpoint", run_folder,
                  "--output-dir", output, "--save-images")
        check_cli_outcome(run, "evaluate", Error(str(output)))
    assert snapshot(tmp_path / "Test") == before


def test_rank_refuses_a_folder_of_user_files(tmp_path, cli, restormer_checkpoint):
    png(tmp_path / "photos" / "a.png")
    before = snapshot(tmp_path)
    run = cli("rank", tmp_path / "photos", "--checkpoint", restormer_checkpoint, "--output", tmp_path / "photos")
    check_cli_outcome(run, "rank", Error("photos", "a.png"))
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- the library's rules
def test_claim_folder_rules(tmp_path):
    assert claim_folder(tmp_path / "new", "train") == tmp_path / "new"
    assert claim_folder(tmp_path / "new", "train")  # its own kind again: a run to resume
    with pytest.raises(FolderError, match="holds a glmha training run, not a demo"):
        claim_folder(tmp_path / "new", "demo")
    (tmp_path / "empty").mkdir()
    claim_folder(tmp_path / "empty", "evaluate")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FolderError, match="is a file"):
        claim_folder(tmp_path / "file", "train")
    legacy = tmp_path / "legacy"
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "train.log").write_text("")
    claim_folder(legacy, "train", legacy=("checkpoints",))  # a run folder of an earlier version
    data = tmp_path / "data"
    png(data / "a.png")
    with pytest.raises(FolderError, match="lies inside the input folder"):
        claim_folder(data / "run", "train", inputs=[data])
    with pytest.raises(FolderError, match="holds the input"):
        claim_folder(tmp_path, "evaluate", inputs=[data / "a.png"])


def test_stale_temporaries_only_of_dead_processes_and_own_names(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    own_dead = tmp_path / f".model.safetensors.glmha-{dead}-0badf00d.tmp"
    own_alive = tmp_path / f".model.safetensors.glmha-{os.getppid()}-0badf00d.tmp"  # a live process's write in progress
    users = [tmp_path / ".notes.tmp", tmp_path / ".a.12345.dead.tmp", tmp_path / "draft.tmp"]
    for path in (own_dead, own_alive, *users):
        path.write_text("x")
    assert remove_own_temporaries(tmp_path) == [own_dead]
    assert own_alive.exists() and all(p.exists() for p in users)


def test_no_replace_write_and_claims(tmp_path):
    target = tmp_path / "a.png"
    atomic_write(target, lambda tmp: Path(tmp).write_text("first"), replace=False)
    with pytest.raises(OutputExistsError, match="another process"):
        atomic_write(target, lambda tmp: Path(tmp).write_text("second"), replace=False)
    assert target.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["a.png"]
    claim = tmp_path / ".b.png.glmha-claim"
    claim.write_text(f"{os.uname().nodename} {os.getppid()}\n")  # held by a live process of this machine
    with pytest.raises(OutputExistsError, match="being written by another glmha process"):
        with claim_outputs([tmp_path / "b.png"]):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    claim.write_text(f"{os.uname().nodename} {dead}\n")  # left by a killed process: taken over
    with claim_outputs([tmp_path / "b.png"]):
        assert claim.read_text().split()[1] == str(os.getpid())
    assert not claim.exists()


def test_two_restores_at_once_never_replace_each_other(tmp_path, cli, restormer_checkpoint):
    """Two `glmha restore` processes, different inputs of the same name, one output folder: one writes, one refuses."""
    png(tmp_path / "one" / "a.png", (96, 96))
    png(tmp_path / "two" / "a.png", (96, 96))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "glmha.cli", "restore", str(tmp_path / name / "a.png"), "--checkpoint",
                               str(restormer_checkpoint), "--output", str(tmp_path / "out")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("one", "two")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    error = next(err for code, err in results if code == 1)
    assert "a.png" in error and ("another" in error or "exists already" in error), error
    assert "Traceback" not in error
    written = (tmp_path / "out" / "a.png").read_bytes()
    for name in ("one", "two"):  # each alone, for comparison
        assert cli("restore", tmp_path / name / "a.png", "--checkpoint", restormer_checkpoint, "--output", tmp_path / f"alone-{name}").code == 0
    assert written in [(tmp_path / f"alone-{n}" / "a.png").read_bytes() for n in ("one", "two")]  # one complete restoration
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]


# ----------------------------------------------------------------------------- file names and multi-frame files
NON_UTF8 = os.fsdecode(b"photo\xff")


@pytest.mark.parametrize("kind", ["png8", "png16", "tiff-float"])
def test_restore_reads_and_writes_names_in_any_bytes(tmp_path, cli, restormer_checkpoint, kind):
    import cv2

    folder = tmp_path / "in"
    folder.mkdir()
    if kind == "png8":
        path = png(folder / f"{NON_UTF8}.png")
    elif kind == "png16":
        path = folder / f"{NON_UTF8}.png"
        path.write_bytes(cv2.imencode(".png", RNG.integers(0, 65536, (16, 16, 3), dtype=np.uint16))[1].tobytes())
    else:
        path = folder / f"{NON_UTF8}.tif"
        path.write_bytes(cv2.imencode(".tiff", RNG.random((16, 16, 3)).astype(np.float32))[1].tobytes())
    run = cli("restore", folder, "--checkpoint", restormer_checkpoint, "--output", tmp_path / "out")
    check_cli_outcome(run, "restore", None)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{NON_UTF8}.png"]


def test_reconstruct_reads_names_in_any_bytes(tmp_path, cli):
    checkpoint = glmha.save_weights(glmha.create_model("mst_plus_plus", stage=1), tmp_path / "mstpp.safetensors")
    path = png(tmp_path / "in" / f"{NON_UTF8}.png")
    run = cli("reconstruct", path, "--checkpoint", checkpoint, "--model", "mst_plus_plus", "--model-kwargs", '{"stage": 1}',
              "--output", tmp_path / "out", "--format", "npy")
    check_cli_outcome(run, "reconstruct", None)
    assert (tmp_path / "out" / f"{NON_UTF8}.npy").is_file()


def _frames(count=3, size=(12, 12)):
    return [Image.fromarray(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(count)]


MULTI_FRAME = {
    "gif": lambda p: _frames()[0].save(p, save_all=True, append_images=_frames()[1:], duration=50),
    "apng": lambda p: _frames()[0].save(p, format="PNG", save_all=True, append_images=_frames()[1:]),
    "tiff": lambda p: _frames()[0].save(p, save_all=True, append_images=_frames()[1:]),
    "webp": lambda p: _frames()[0].save(p, save_all=True, append_images=_frames()[1:], duration=50),
}


@pytest.mark.parametrize("kind", sorted(MULTI_FRAME))
def test_multi_frame_files_are_refused_by_name(tmp_path, cli, restormer_checkpoint, kind):
    suffix = {"gif": ".gif", "apng": ".png", "tiff": ".tif", "webp": ".webp"}[kind]
    path = tmp_path / "in" / f"clip{suffix}"
    path.parent.mkdir()
    MULTI_FRAME[kind](path)
    png(tmp_path / "in" / "still.png")
    run = cli("restore", path, tmp_path / "in" / "still.png", "--checkpoint", restormer_checkpoint, "--output", tmp_path / "out")
    check_cli_outcome(run, "restore", Error("1 of 2", f"clip{suffix}", "3 frames", "split"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["still.png"]


def test_negative_and_over_one_apertures_are_refused(tmp_path, cli, mst_checkpoint):
    from .conftest import TINY_MST

    for name, value in (("negative", -0.5), ("bytes", 255.0)):
        mask = np.ones((16, 16), np.float32)
        mask[3, 4] = value
        scipy.io.savemat(tmp_path / f"{name}.mat", {"mask": mask})
        np.save(tmp_path / "meas.npy", RNG.random((16, 16 + 2 * 7)).astype(np.float32))
        run = cli("reconstruct", tmp_path / "meas.npy", "--mask", tmp_path / f"{name}.mat", "--checkpoint", mst_checkpoint, "--model", "mst_s",
                  "--model-kwargs", '{"dim": 8, "in_channels": 8, "out_channels": 8, "num_blocks": [1, 1, 1]}', "--output", tmp_path / "out")
        check_cli_outcome(run, "reconstruct", Error(f"{name}.mat", "transmittance in [0, 1]"))
    assert TINY_MST["in_channels"] == 8
