"""Bad inputs, flags and outputs through the ``glmha`` commands: exit code 1 and one ``glmha <command>: error:`` line, no traceback."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import glmha
from glmha.data.cassi import mask_3d, measure, random_mask

from .conftest import TINY_MST, TINY_RESTORMER, Error, Warns, check_cli_outcome

RNG = np.random.default_rng(2)


def png(folder, name="a.png", size=(12, 14)):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    return folder / name


def restore_case(setup, extra=(), expected=None, outputs=None):
    """``setup(tmp) -> inputs``; then ``glmha restore inputs --output tmp/out extra``."""
    return setup, extra, expected, outputs


def _zero_byte(t):
    png(t / "in")
    (t / "in" / "zero.png").write_bytes(b"")
    return [t / "in"]


def _text_png(t):
    png(t / "in")
    (t / "in" / "notes.png").write_text("hello")
    return [t / "in"]


def _fifo_in_folder(t):
    png(t / "in")
    os.mkfifo(t / "in" / "pipe.png")
    return [t / "in"]


def _single(name, writer):
    def setup(t):
        (t / "in").mkdir()
        writer(t / "in" / name)
        return [t / "in" / name]
    return setup


def _truncated(path):
    png(path.parent, "whole.png", (40, 40))
    data = (path.parent / "whole.png").read_bytes()
    (path.parent / "whole.png").unlink()
    path.write_bytes(data[: len(data) // 2])


def _existing_output(t):
    inputs = [png(t / "in")]
    (t / "out").mkdir()
    (t / "out" / "a.png").write_bytes(b"old")
    return inputs


def _hardlinked_output(t):
    inputs = [png(t / "in")]
    (t / "out").mkdir()
    os.link(inputs[0], t / "out" / "a.png")
    return inputs


def _output_is_a_file(t):
    (t / "out").write_text("a file")
    return [png(t / "in")]


def _output_below_a_file(t):
    (t / "blocker").write_text("a file")
    return [png(t / "in")]


def _same_stems(t):
    png(t / "in", "a.png")
    Image.fromarray(RNG.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(t / "in" / "a.jpg")
    return [t / "in"]


RESTORE_CASES = {
    "zero-byte-file-skipped": (_zero_byte, (), Error("1 of 2 image(s) skipped", "zero.png", "empty"), ["a.png"]),
    "text-named-png-skipped": (_text_png, (), Error("1 of 2", "notes.png", "not an image file"), ["a.png"]),
    "fifo-in-folder-skipped": (_fifo_in_folder, (), Error("1 of 2", "pipe.png", "not a regular file"), ["a.png"]),
    "fifo-given": (lambda t: (t / "p.png").parent.mkdir(exist_ok=True) or os.mkfifo(t / "p.png") or [t / "p.png"], (),
                   Error("p.png", "not a regular file"), None),
    "truncated-png": (_single("cut.png", _truncated), (), Error("cut.png", "truncated"), []),
    "lab-tiff": (_single("lab.tif", lambda p: Image.fromarray(np.zeros((8, 8, 3), np.uint8)).convert("LAB").save(p)), (),
                 Error("lab.tif", "unsupported image mode 'LAB'"), []),
    "int32-tiff-out-of-range": (_single("i.tif", lambda p: Image.fromarray(np.full((8, 8), 70000, np.int32)).save(p)), (),
                                Error("i.tif", "do not fit 16 bits"), []),
    "float-tiff-out-of-range-warns": (_single("f.tif", lambda p: Image.fromarray(np.linspace(-1, 2, 64, dtype=np.float32).reshape(8, 8)).save(p)), (),
                                      Warns("f.tif", "outside [0, 1]", "clipped"), ["f.png"]),
    "npy-float64-input": (_single("x.npy", lambda p: np.save(p, RNG.random((8, 9, 3)))), (), None, ["x.png"]),
    "npy-float16-input": (_single("x.npy", lambda p: np.save(p, RNG.random((8, 9)).astype(np.float16))), (), None, ["x.png"]),
    "npy-int64-refused": (_single("x.npy", lambda p: np.save(p, np.ones((8, 9), np.int64))), (), Error("x.npy", "unsupported array type int64"), []),
    "npy-huge-header": (_single("h.npy", lambda p: p.write_bytes(b"\x93NUMPY\x02\x00" + (200000).to_bytes(4, "little") + b"{" + b" " * 199998 + b"\n")), (),
                        Error("h.npy", "cannot read", "header"), []),
    "same-stems-refused": (_same_stems, (), Error("a.jpg", "a.png", "would both be written"), None),
    "empty-folder": (lambda t: (t / "in").mkdir() or [t / "in"], (), Error("holds no", ".png"), None),
    "missing-input": (lambda t: [t / "nothing.png"], (), Error("no such file", "nothing.png"), None),
    "glob-matching-nothing": (lambda t: [t / "*.png"], (), Error("no such file, folder or matching files"), None),
    "output-into-input-folder": (lambda t: [png(t / "out")], (), Error("would overwrite the input", "a.png"), None),
    "output-is-a-hardlink-of-the-input": (_hardlinked_output, ("--overwrite",), Error("would overwrite the input"), None),
    "existing-output-refused": (_existing_output, (), Error("a.png", "exists already", "--overwrite"), None),
    "existing-output-overwritten": (_existing_output, ("--overwrite",), None, ["a.png"]),
    "output-is-a-file": (_output_is_a_file, (), Error("exists and is not a folder"), None),
    "output-below-a-file": (_output_below_a_file, ("--output", "{tmp}/blocker/out"), Error("cannot write to the output folder", "blocker"), None),
    "device-cuda-99": (lambda t: [png(t / "in")], ("--device", "cuda:99"), Error("--device cuda:99", "CUDA device"), None),
    "device-nonsense": (lambda t: [png(t / "in")], ("--device", "gpu0"), Error("'gpu0' is not a device"), None),
    "device-tpu": (lambda t: [png(t / "in")], ("--device", "xla"), Error("only cpu, cuda and mps"), None),
    "negative-overlap": (lambda t: [png(t / "in")], ("--overlap", "-1"), Error("--overlap must be 0 or more"), None),
    "zero-max-memory": (lambda t: [png(t / "in")], ("--max-memory", "0"), Error("memory must be positive"), None),
    "max-memory-text": (lambda t: [png(t / "in")], ("--max-memory", "lots"), Error("memory must be a number of bytes", "lots"), None),
    "max-memory-too-small": (lambda t: [png(t / "in", size=(300, 300))], ("--max-memory", "1KB"), Error("1 of 1", "a.png", "too small"), []),
    "tile-zero": (lambda t: [png(t / "in")], ("--tile", "0"), Error("--tile", "must be positive"), None),
    "tile-text": (lambda t: [png(t / "in")], ("--tile", "big"), Error("--tile", "expected auto, none"), None),
    "bit-depth-12": (lambda t: [png(t / "in")], ("--bit-depth", "12"), Error("--bit-depth", "invalid choice"), None),
    "precision-fp64": (lambda t: [png(t / "in")], ("--precision", "fp64"), Error("--precision", "invalid choice"), None),
    "model-kwargs-not-json": (lambda t: [png(t / "in")], ("--model-kwargs", "{dim: 8"), Error("--model-kwargs is not valid JSON"), None),
    "model-kwargs-a-list": (lambda t: [png(t / "in")], ("--model-kwargs", "[8]"), Error("--model-kwargs must be a JSON object"), None),
    "unknown-model": (lambda t: [png(t / "in")], ("--model", "resnet"), Error("unknown model 'resnet'"), None),
    "right-views-for-a-single-image-model": (lambda t: [png(t / "in")], ("--right", "{tmp}/in/a.png"), Error("--right", "takes single images"), None),
    "checkpoint-missing": (lambda t: [png(t / "in")], ("--checkpoint", "{tmp}/none.safetensors"), Error("checkpoint not found", "none.safetensors"), None),
    "checkpoint-is-text": (lambda t: [(t / "w.safetensors").write_text("weights"), png(t / "in")][1:], ("--checkpoint", "{tmp}/w.safetensors"),
                           Error("cannot read checkpoint", "w.safetensors"), None),
    "checkpoint-is-a-folder": (lambda t: (t / "ckpt").mkdir() or [png(t / "in")], ("--checkpoint", "{tmp}/ckpt"), Error("ckpt"), None),
}


@pytest.mark.parametrize("name", list(RESTORE_CASES))
def test_restore(tmp_path, cli, restormer_checkpoint, name):
    setup, extra, expected, outputs = RESTORE_CASES[name]
    inputs = setup(tmp_path)
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    args = ["restore", *inputs, "--checkpoint", restormer_checkpoint, "--output", tmp_path / "out", *extra]
    before = {p: p.read_bytes() for p in inputs if p.is_file()}
    run = cli(*args)
    check_cli_outcome(run, "restore", expected)
    for path, data in before.items():  # inputs are never touched
        assert path.read_bytes() == data
    if outputs is not None:
        written = sorted(p.name for p in (tmp_path / "out").iterdir()) if (tmp_path / "out").is_dir() else []
        assert written == sorted(outputs)
        for name_ in outputs:
            with Image.open(tmp_path / "out" / name_) as image:
                image.load()


def test_restore_nan_output_is_an_error_and_writes_nothing(tmp_path, cli):
    model = glmha.create_model("restormer", **TINY_RESTORMER)
    with torch.no_grad():
        model.output.weight.fill_(float("nan"))
    checkpoint = glmha.save_weights(model, tmp_path / "nan.safetensors")
    run = cli("restore", png(tmp_path / "in"), "--checkpoint", checkpoint, "--output", tmp_path / "out")
    check_cli_outcome(run, "restore", Error("1 of 1", "a.png", "NaN or infinite", "nothing written"))
    assert list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------- reconstruct (CASSI, tiny MST)
def _cassi_inputs(t, **variables):
    mask = random_mask(16, 16, seed=3)
    np.save(t / "mask.npy", mask.numpy())
    (t / "in").mkdir()
    meas = measure(torch.rand(1, 8, 16, 16), mask_3d(mask, 8))[0].numpy()
    scipy.io.savemat(t / "in" / "good.mat", {"meas": meas})
    for name, value in variables.items():
        scipy.io.savemat(t / "in" / f"{name}.mat", {"meas": value(meas)})
    return meas


RECONSTRUCT_CASES = {
    "complex-skipped": ({"c": lambda m: m * 1j}, (), Error("1 of 2 input(s) skipped", "c.mat", "complex"), ["good.mat"]),
    "struct-skipped": ({"s": lambda m: {"a": m}}, (), Error("1 of 2", "s.mat", "struct"), ["good.mat"]),
    "cell-skipped": ({"cell": lambda m: np.array([m, m[:3]], dtype=object)}, (), Error("1 of 2", "cell.mat", "cell"), ["good.mat"]),
    "wrong-size-skipped": ({"small": lambda m: m[:8]}, (), Error("1 of 2", "small.mat", "does not fit"), ["good.mat"]),
    "integer-counts-warn": ({"counts": lambda m: (m * 100).astype(np.uint16)}, (), Warns("counts.mat", "integer values", "without scaling"),
                            ["good.mat", "counts.mat"]),
    "all-zero-mask": ({}, ("--mask", "{tmp}/zero.npy"), Error("cannot read the mask", "zero.npy", "all zeros"), None),
    "missing-mask": ({}, ("--mask", "{tmp}/none.mat"), Error("cannot read the mask", "none.mat"), None),
    "mask-wrong-key": ({}, ("--mask", "{tmp}/phi.mat"), Error("cannot read the mask", "no variable 'mask'"), None),
    "output-into-input-folder": ({}, ("--output", "{tmp}/in"), Error("would overwrite the input", "good.mat"), None),
    "existing-output-refused": ({}, ("--output", "{tmp}/old"), Error("good.mat", "exists already"), None),
    "existing-output-overwritten": ({}, ("--output", "{tmp}/old", "--overwrite"), None, None),
    "npy-format-json-sidecar-exists": ({}, ("--output", "{tmp}/old", "--format", "npy"), None, None),
    "bad-format": ({}, ("--format", "hdf"), Error("--format", "invalid choice"), None),
    "wrong-key": ({}, ("--key", "measurement"), Error("1 of 1", "no variable 'measurement'"), []),
    "device-cuda-99": ({}, ("--device", "cuda:99"), Error("CUDA device"), None),
}


@pytest.mark.parametrize("name", list(RECONSTRUCT_CASES))
def test_reconstruct_cassi(tmp_path, cli, mst_checkpoint, name):
    variables, extra, expected, outputs = RECONSTRUCT_CASES[name]
    _cassi_inputs(tmp_path, **variables)
    np.save(tmp_path / "zero.npy", np.zeros((16, 16), np.float32))
    scipy.io.savemat(tmp_path / "phi.mat", {"Phi": np.ones((16, 16))})
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "good.mat").write_bytes(b"old")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    if "--mask" not in extra:
        extra = [*extra, "--mask", str(tmp_path / "mask.npy")]
    if "--output" not in extra:
        extra = [*extra, "--output", str(tmp_path / "out")]
    before = (tmp_path / "in" / "good.mat").read_bytes()
    run = cli("reconstruct", tmp_path / "in", "--checkpoint", mst_checkpoint, *extra)
    check_cli_outcome(run, "reconstruct", expected)
    assert (tmp_path / "in" / "good.mat").read_bytes() == before
    if outputs is not None:
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(outputs)


# --------------------------------------------------------------------------- the other commands
OTHER_CASES = {
    "complexity-plot-is-a-folder": (["complexity", "--sweep", "--attentions", "csa", "--plot", "{tmp}"], Error("--plot", "is a folder")),
    "complexity-plot-below-a-file": (["complexity", "--sweep", "--attentions", "csa", "--plot", "{tmp}/file/plot.png"], Error("file", "exists and is not a folder")),
    "complexity-zero-sweep-pixels": (["complexity", "--sweep", "--sweep-pixels", "0"], Error("must be positive")),
    "complexity-negative-sweep-dim": (["complexity", "--sweep", "--sweep-dim", "-4"], Error("must be positive")),
    "complexity-zero-size": (["complexity", "--models", "restormer", "--size", "0", "64"], Error("--size must be positive")),
    "complexity-unknown-model": (["complexity", "--models", "vgg"], Error("unknown model 'vgg'")),
    "complexity-unknown-attention": (["complexity", "--attentions", "magic"], Error("unknown attention 'magic'")),
    "complexity-size-text": (["complexity", "--size", "big", "64"], Error("--size", "invalid int value")),
    "rank-zero-images": (["rank", "--num-images", "0"], Error("--num-images must be positive")),
    "rank-negative-size": (["rank", "--size", "-8"], Error("--size", "must be positive")),
    "rank-too-many-images": (["rank", "--num-images", "9", "--model-kwargs", json.dumps(TINY_RESTORMER)], Error("6 built-in photographs")),
    "rank-share-above-one": (["rank", "--share", "2"], Error("--share must be in (0, 1]")),
    "rank-share-zero": (["rank", "--share", "0"], Error("--share must be in (0, 1]")),
    "rank-missing-images": (["rank", "{tmp}/none/*.png"], Error("no such file")),
    "rank-cuda-99": (["rank", "--device", "cuda:99"], Error("CUDA device")),
    "rank-all-images-bad": (["rank", "{tmp}/file", "--model-kwargs", json.dumps(TINY_RESTORMER), "--output", "{tmp}/rank"],
                            Error("none of the 1 image(s) could be read", "file")),
    "export-output-is-a-folder": (["export", "--checkpoint", "{ckpt}", "--output", "{tmp}"], Error("--output", "is a folder")),
    "export-output-below-a-file": (["export", "--checkpoint", "{ckpt}", "--output", "{tmp}/file/m.onnx"], Error("file", "exists and is not a folder")),
    "export-on-cuda-99": (["export", "--checkpoint", "{ckpt}", "--output", "{tmp}/m.onnx", "--device", "cuda:99"], Error("CUDA device")),
    "export-bad-format": (["export", "--checkpoint", "{ckpt}", "--output", "{tmp}/m.onnx", "--format", "tflite"], Error("invalid choice")),
    "export-size-zero": (["export", "--checkpoint", "{ckpt}", "--output", "{tmp}/m.onnx", "--size", "0", "0"], Error("--size must be at least")),
    "score-missing-restored": (["score", "deraining", "--restored", "{tmp}/none", "--target", "{tmp}"], Error("none")),
    "score-output-below-a-file": (["score", "deraining", "--restored", "{tmp}/r", "--target", "{tmp}/t", "--output", "{tmp}/file/x.csv"],
                                  Error("file", "exists and is not a folder")),
    "score-output-is-a-folder": (["score", "deraining", "--restored", "{tmp}", "--target", "{tmp}", "--output", "{tmp}"], Error("is a folder")),
    "score-unknown-protocol": (["score", "imagenet", "--restored", "{tmp}"], Error("invalid choice")),
    "score-fifo-restored": (["score", "deraining", "--restored", "{tmp}/pipe.png", "--target", "{tmp}"], Error("pipe.png", "not a regular file")),
    "score-truncated-png": (["score", "deraining", "--restored", "{tmp}/cut/x.png", "--target", "{tmp}/cut/x.png"], Error("x.png", "truncated")),
    "complexity-plot-without-sweep": (["complexity", "--plot", "{tmp}/p.png"], Error("--plot draws the attention sweep", "--sweep")),
    "train-bad-precision-keeps-its-quotes": (["train", "{tmp}/c.yaml", "train.precision=fp8"], Error("'fp8'", "'fp16'")),
    "prepare-missing-source": (["prepare", "gopro", "--source", "{tmp}/none", "--output", "{tmp}/out"], Error("none")),
    "prepare-unknown-task": (["prepare", "imagenet", "--source", "{tmp}"], Error("invalid choice")),
    "evaluate-output-below-a-file": (["evaluate", "{tmp}/c.yaml", "--output-dir", "{tmp}/file/eval"], Error("cannot write to the output folder")),
    "evaluate-missing-config": (["evaluate", "{tmp}/none.yaml"], Error("none.yaml")),
    "evaluate-cuda-99": (["evaluate", "{tmp}/none.yaml", "--device", "cuda:99"], Error("CUDA device")),
    "train-missing-config": (["train", "{tmp}/none.yaml"], Error("none.yaml")),
    "train-config-is-a-folder": (["train", "{tmp}"], Error("")),
    "no-command": ([], Error("")),
    "unknown-command": (["fly"], Error("invalid choice")),
}


@pytest.mark.parametrize("name", list(OTHER_CASES))
def test_other_commands(tmp_path, cli, restormer_checkpoint, name):
    args, expected = OTHER_CASES[name]
    (tmp_path / "file").write_text("not a folder")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "cut").mkdir()
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format="PNG")
    (tmp_path / "cut" / "x.png").write_bytes(buffer.getvalue()[:-20])
    (tmp_path / "c.yaml").write_text("task: deraining\nmodel: {name: restormer}\ndata: {train: {type: synthetic}}\ntrain: {precision: fp32, total_iters: 2}\n")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{ckpt}", str(restormer_checkpoint)) for a in args]
    run = cli(*args)
    command = args[0] if args and args[0] in glmha.cli.COMMANDS else None
    if command is None:  # argparse before a command is known
        assert run.code == 2 and run.err_lines[-1].startswith("glmha: error: ")
        return
    check_cli_outcome(run, command, expected)


def test_config_errors_are_one_line(tmp_path, cli, monkeypatch):
    from glmha.engine import ConfigError

    def cyclic(*args, **kwargs):
        raise ConfigError(f"{tmp_path}/a.yaml: base configs form a cycle:\n a.yaml -> b.yaml -> a.yaml")

    monkeypatch.setattr(glmha.engine, "train", cyclic)
    run = cli("train", tmp_path / "a.yaml")
    check_cli_outcome(run, "train", Error("a.yaml", "cycle", "b.yaml"))


def test_rank_skips_a_bad_image_and_fails_at_the_end(tmp_path, cli):
    png(tmp_path / "in", size=(16, 16))
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    run = cli("rank", tmp_path / "in", "--model-kwargs", json.dumps(TINY_RESTORMER), "--output", tmp_path / "rank")
    check_cli_outcome(run, "rank", Error("1 image(s) skipped", "broken.png"))
    assert (tmp_path / "rank" / "ranks.md").is_file()  # the readable image was analysed
