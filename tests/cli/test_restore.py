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
    args = ["restore", str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--output", str(out)]  # the file describes its model
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
    image = glmha.io.images.read_image(tmp_path / "in" / "wide.png")
    expected = glmha.io.images.to_uint8(glmha.restore(model, image, tile=32, overlap=8))
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
    assert err.startswith("glmha restore: error: 1 of 5 image(s) skipped: cannot read image") and "broken.png" in err
    assert len(list(out.iterdir())) == 4


def test_checkpoint_that_does_not_fit_is_one_line(tmp_path, capsys):
    _write_images(tmp_path / "in")
    plain = tmp_path / "plain.pth"
    torch.save(glmha.create_model("restormer", **TINY).state_dict(), plain)  # weights without a record
    args = ["restore", str(tmp_path / "in"), "--checkpoint", str(plain), "--output", str(tmp_path / "out")]
    assert main([*args, "--model-kwargs", '{"dim": 16}']) == 1
    err = error_line(capsys.readouterr().err)
    assert err.startswith("glmha restore: error:") and "does not fit Restormer" in err and "missing keys" in err
    assert "model (from the arguments): restormer, attention csa" in err
    assert main(args) == 1
    assert "does not record its model and its keys and shapes match no preset" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_flags_that_contradict_the_checkpoint_are_one_line(tmp_path, checkpoint, capsys):
    _write_images(tmp_path / "in")
    args = ["restore", str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]
    assert main([*args, "--attention", "glmha", "--model-kwargs", '{"dim": 8, "bias": true}']) == 1
    err = error_line(capsys.readouterr().err)
    assert "records restormer, attention csa" in err and "attention 'csa' vs 'glmha'" in err and "dim" not in err.split("(recorded vs given):")[1]


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
    rgb = glmha.io.images.read_image(tmp_path / "deep.png")
    assert rgb.shape == (1, 3, 8, 8) and torch.allclose(rgb[0, 1], torch.from_numpy(values / 65535.0).float())
    Image.fromarray(np.full((4, 5, 3), 255, np.uint8)).save(tmp_path / "white.png")
    grey = glmha.io.images.read_image(tmp_path / "white.png", channels=1)
    assert grey.shape == (1, 1, 4, 5) and torch.allclose(grey, torch.ones(()))


def test_restore_with_an_official_style_pth(tmp_path):
    model = glmha.create_model("restormer", **TINY)
    torch.save({"params": model.state_dict()}, tmp_path / "official.pth")  # as the Restormer releases ship
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(tmp_path / "black.png")
    args = ["restore", str(tmp_path / "black.png"), "--checkpoint", str(tmp_path / "official.pth"), "--model-kwargs", json.dumps(TINY),
            "--output", str(tmp_path / "out")]
    assert main(args) == 0
    assert Image.open(tmp_path / "out" / "black.png").size == (20, 12)


# ----------------------------------------------------------------------------- from a run folder, presets, dual pixel
def test_a_smoke_training_run_restores_with_its_folder_alone(tmp_path, capsys):
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "restormer" / "deraining_glmha.yaml"
    run = tmp_path / "run"
    assert main(["train", "--smoke", "--output-dir", str(run), str(config), "train.progress=false", "train.tensorboard=false"]) == 0
    _write_images(tmp_path / "in")
    assert main(["restore", str(tmp_path / "in" / "wide.png"), "--checkpoint", str(run), "--output", str(tmp_path / "out")]) == 0
    model = glmha.load_model(run)
    assert model.spec.attention == "glmha"
    expected = glmha.io.images.to_uint8(glmha.restore(model, glmha.io.images.read_image(tmp_path / "in" / "wide.png")))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "wide.png")), expected)


def _official_file(path, preset):
    """A state dict in the layout of an official release file (random weights), saved as the releases are."""
    p = glmha.models.presets.get_preset(preset)
    torch.save({"params": glmha.create_model(p.model, **p.model_kwargs).state_dict()}, path)
    return path


def test_grey_denoising_file_is_recognised_and_reads_colour_with_opencv(tmp_path, capsys):
    import cv2

    checkpoint = _official_file(tmp_path / "gaussian_gray_denoising_sigma25.pth", "gaussian_gray_denoising_sigma25")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(tmp_path / "noisy.jpg")
    assert main(["restore", str(tmp_path / "noisy.jpg"), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), "--tile", "none"]) == 0
    said = capsys.readouterr().out
    assert "as preset" not in said and "match presets gaussian_gray_denoising_blind, gaussian_gray_denoising_sigma15" in said
    model = glmha.load_model(checkpoint, preset="gaussian_gray_denoising_sigma25")
    # the official test script's input: cv2.imread(path, cv2.IMREAD_GRAYSCALE) / 255
    grey = torch.from_numpy(cv2.imread(str(tmp_path / "noisy.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255)[None, None]
    expected = glmha.io.images.to_uint8(glmha.restore(model, grey))
    with Image.open(tmp_path / "out" / "noisy.png") as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), expected)


def _write_png16(path, array):
    import png

    png.Writer(array.shape[1], array.shape[0], greyscale=False, bitdepth=16).write(open(path, "wb"), array.reshape(array.shape[0], -1))


def test_dual_pixel_preset_restores_a_dpdd_folder_in_16_bits(tmp_path):
    import png

    checkpoint = _official_file(tmp_path / "dual_pixel_defocus_deblurring.pth", "dual_pixel_defocus_deblurring")
    rng = np.random.default_rng(0)
    views = {}
    for side in ("inputL", "inputR"):
        (tmp_path / "DPDD" / side).mkdir(parents=True)
        for name in ("1P0A1.png",):
            views[side, name] = rng.integers(0, 65536, (16, 24, 3), dtype=np.uint16)
            _write_png16(tmp_path / "DPDD" / side / name, views[side, name])
    args = ["restore", str(tmp_path / "DPDD"), "--preset", "dual_pixel_defocus_deblurring", "--checkpoint", str(checkpoint),
            "--output", str(tmp_path / "out")]
    assert main(args) == 0
    model = glmha.load_model(checkpoint, preset="dual_pixel_defocus_deblurring")
    for name in ("1P0A1.png",):
        # as the official test: float32(16-bit views) / 65535, stacked left then right; saved as uint16(round(x * 65535))
        stacked = np.concatenate([views["inputL", name], views["inputR", name]], axis=-1).astype(np.float32) / 65535
        out = glmha.restore(model, torch.from_numpy(stacked.transpose(2, 0, 1).copy())[None])
        expected = np.uint16((out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 65535).round())
        width, height, rows, info = png.Reader(filename=str(tmp_path / "out" / name)).asDirect()
        assert info["bitdepth"] == 16 and np.array_equal(np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(16, 24, 3), expected)
    # or two explicit lists, written at 8 bits on request
    left, right = sorted((tmp_path / "DPDD" / "inputL").iterdir()), sorted((tmp_path / "DPDD" / "inputR").iterdir())
    assert main(["restore", *map(str, left), "--right", *map(str, right), "--checkpoint", str(checkpoint),
                 "--preset", "dual_pixel_defocus_deblurring", "--output", str(tmp_path / "out8"), "--bit-depth", "8"]) == 0
    assert Image.open(tmp_path / "out8" / "1P0A1.png").mode == "RGB"


def test_dual_pixel_inputs_must_pair(tmp_path, capsys):
    checkpoint = _official_file(tmp_path / "dp.pth", "dual_pixel_defocus_deblurring")
    _write_images(tmp_path / "in")
    assert main(["restore", str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]) == 1
    assert "dual-pixel inputs are a folder with inputL/ and inputR/" in error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- image files, tiles, precision
def test_16_bit_input_gives_16_bit_output(tmp_path, checkpoint):
    import png

    _write_png16(tmp_path / "deep.png", np.random.default_rng(1).integers(0, 65536, (12, 20, 3), dtype=np.uint16))
    assert main(["restore", str(tmp_path / "deep.png"), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]) == 0
    model = glmha.load_model(checkpoint)
    image, depth = glmha.io.images.read_image_and_depth(tmp_path / "deep.png")
    assert depth == 16 and image.shape == (1, 3, 12, 20)
    *_, rows, info = png.Reader(filename=str(tmp_path / "out" / "deep.png")).asDirect()
    written = np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(12, 20, 3)
    assert info["bitdepth"] == 16 and np.array_equal(written, glmha.io.images.quantize(glmha.restore(model, image), 16))
    assert main(["restore", str(tmp_path / "deep.png"), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out8"), "--bit-depth", "8"]) == 0
    assert Image.open(tmp_path / "out8" / "deep.png").mode == "RGB"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    from PIL import ImageOps

    array = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / "photo.png", exif=exif.tobytes())
    with Image.open(tmp_path / "photo.png") as reopened:
        expected = np.asarray(ImageOps.exif_transpose(reopened))  # Pillow's definition of the orientations
    read = glmha.io.images.read_image(tmp_path / "photo.png")
    assert np.array_equal(glmha.io.images.to_uint8(read), expected)


def test_tile_is_rounded_to_the_model_multiple_with_a_message(tmp_path, checkpoint, caplog):
    _write_images(tmp_path / "in")
    args = ["restore", str(tmp_path / "in" / "wide.png"), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]
    assert main([*args, "--tile", "30", "--overlap", "8"]) == 0
    assert "tile 30 is not a multiple of the model's size multiple 8: using 24" in caplog.text  # on stderr outside pytest
    model = glmha.load_model(checkpoint)
    expected = glmha.io.images.to_uint8(glmha.restore(model, glmha.io.images.read_image(tmp_path / "in" / "wide.png"), tile=24, overlap=8))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "wide.png")), expected)


def test_bf16_precision_on_cpu(tmp_path, checkpoint):
    _write_images(tmp_path / "in")
    image = tmp_path / "in" / "wide.png"
    assert main(["restore", str(image), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), "--precision", "bf16"]) == 0
    model = glmha.load_model(checkpoint)
    full = glmha.io.images.to_uint8(glmha.restore(model, glmha.io.images.read_image(image))).astype(int)
    assert np.abs(np.asarray(Image.open(tmp_path / "out" / "wide.png"), int) - full).max() <= 8
