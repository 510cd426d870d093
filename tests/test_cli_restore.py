import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import glmha
from glmha.cli import main

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2]}


def error_line(stderr: str) -> str:
    """The error printed on stderr, which must be a single line (tqdm's progress bar lines aside)."""
    # tqdm's progress bar is drawn on stderr too, each update after a carriage return
    lines = [line for line in re.split(r"[\r\n]", stderr) if line.strip() and not re.match(r"(restoring|reconstructing):", line)]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture()
def checkpoint(tmp_path):
    path = tmp_path / "tiny.safetensors"
    glmha.save_weights(glmha.create_model("restormer", **TINY), path)
    return path


def _write_images(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide.png": (37, 81), "tall.jpg": (70, 23), "grey.png": (16, 16), "tiny.png": (5, 9)}
    for name, (h, w) in sizes.items():
        shape = (h, w) if name == "grey.png" else (h, w, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name)
    return sizes


def test_restore_folder_of_mixed_sizes(tmp_path, checkpoint, capsys):
    sizes = _write_images(tmp_path / "in")
    out = tmp_path / "out"
    args = ["restore", str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--model-kwargs", json.dumps(TINY), "--output", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name.split('.')[0]}.png" for name in sizes)
    for name, (h, w) in sizes.items():
        with Image.open(out / f"{name.split('.')[0]}.png") as image:
            assert image.size == (w, h) and image.mode == "RGB"
    assert "restored 4 of 4" in capsys.readouterr().out


def test_restore_tiled_matches_glmha_restore(tmp_path, checkpoint):
    _write_images(tmp_path / "in")
    out = tmp_path / "out"
    args = ["restore", str(tmp_path / "in" / "wide.png"), "--checkpoint", str(checkpoint), "--model-kwargs", json.dumps(TINY),
            "--output", str(out), "--tile", "32", "--overlap", "8"]
    assert main(args) == 0
    model = glmha.load_checkpoint(glmha.create_model("restormer", **TINY), checkpoint).eval()
    image = glmha.images.read_image(tmp_path / "in" / "wide.png")
    expected = glmha.images.to_uint8(glmha.restore(model, image, tile=32, overlap=8))
    assert np.array_equal(np.asarray(Image.open(out / "wide.png")), expected)


def test_restore_glob(tmp_path, checkpoint):
    _write_images(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["restore", str(tmp_path / "in" / "*.png"), "--checkpoint", str(checkpoint), "--model-kwargs", json.dumps(TINY), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grey.png", "tiny.png", "wide.png"]


def test_unreadable_file_is_reported_and_the_rest_restored(tmp_path, checkpoint, capsys):
    _write_images(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["restore", str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--model-kwargs", json.dumps(TINY), "--output", str(out)]) == 1
    err = error_line(capsys.readouterr().err)
    assert err.startswith("glmha restore: error: 1 image(s) could not be read: cannot read image") and "broken.png" in err
    assert len(list(out.iterdir())) == 4


def test_checkpoint_that_does_not_fit_is_one_line(tmp_path, checkpoint, capsys):
    _write_images(tmp_path / "in")
    assert main(["restore", str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]) == 1
    err = error_line(capsys.readouterr().err)
    assert err.startswith("glmha restore: error:") and "does not fit Restormer" in err and "missing keys" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing_folder"], "no such file, folder or matching files: missing_folder"),
        (["IMAGES", "--checkpoint", "nope.pth"], "checkpoint not found: nope.pth"),
        (["IMAGES", "--model", "unet"], "unknown model 'unet'"),
        (["IMAGES", "--model-kwargs", "[1]"], "--model-kwargs must be a JSON object"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, checkpoint, capsys, args, message):
    _write_images(tmp_path / "in")
    args = [str(tmp_path / "in") if a == "IMAGES" else a for a in args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(checkpoint)]
    assert main(["restore", *args, "--output", str(tmp_path / "out")]) == 1
    err = error_line(capsys.readouterr().err)
    assert message in err


def test_restore_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["restore", "--help"])
    assert info.value.code == 0 and "examples:" in capsys.readouterr().out


def test_read_image_keeps_16_bit_range_and_converts_channels(tmp_path):
    values = (np.arange(8 * 8).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    rgb = glmha.images.read_image(tmp_path / "deep.png")
    assert rgb.shape == (1, 3, 8, 8) and torch.allclose(rgb[0, 1], torch.from_numpy(values / 65535.0).float())
    Image.fromarray(np.full((4, 5, 3), 255, np.uint8)).save(tmp_path / "white.png")
    grey = glmha.images.read_image(tmp_path / "white.png", channels=1)
    assert grey.shape == (1, 1, 4, 5) and torch.allclose(grey, torch.ones(()))


def test_restore_with_an_official_style_pth(tmp_path):
    model = glmha.create_model("restormer", **TINY)
    torch.save({"params": model.state_dict()}, tmp_path / "official.pth")  # as the Restormer releases ship
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(tmp_path / "black.png")
    args = ["restore", str(tmp_path / "black.png"), "--checkpoint", str(tmp_path / "official.pth"), "--model-kwargs", json.dumps(TINY),
            "--output", str(tmp_path / "out")]
    assert main(args) == 0
    assert Image.open(tmp_path / "out" / "black.png").size == (20, 12)
