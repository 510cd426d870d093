"""The datasets' official (OpenCV) decoding through the one reader, and the Python API's dtypes."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import glmha
from glmha.data.hyperspectral import read_rgb
from glmha.data.restoration import DatasetError, read_image

from .conftest import TINY_RESTORMER, Error, assert_words

RNG = np.random.default_rng(3)
RGB8 = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)
RGB16 = RNG.integers(0, 65536, (6, 7, 3), dtype=np.uint16)


def cv2_save(tmp, name, array):
    assert cv2.imwrite(str(tmp / name), array[..., ::-1] if array.ndim == 3 else array)
    return tmp / name


def pil_save(tmp, name, array, mode=None):
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(tmp / name)
    return tmp / name


DATASET_CASES = [
    ("rgb8", lambda t: cv2_save(t, "a.png", RGB8), {}, RGB8 / 255.0),
    ("rgb16-high-byte", lambda t: cv2_save(t, "a.png", RGB16), {}, (RGB16 >> 8) / 255.0),
    ("rgb16-full", lambda t: cv2_save(t, "a.png", RGB16), {"bit_depth": 16}, RGB16 / 65535.0),
    ("palette", lambda t: (Image.fromarray(RGB8).convert("P").save(t / "p.png"), t / "p.png")[1], {},
     np.asarray(Image.fromarray(RGB8).convert("P").convert("RGB")) / 255.0),
    ("grey-repeated", lambda t: cv2_save(t, "g.png", RGB8[..., 0]), {}, np.repeat(RGB8[..., :1], 3, -1) / 255.0),
    ("one-bit", lambda t: pil_save(t, "b.png", RGB8[..., 0] > 127), {}, np.repeat((RGB8[..., :1] > 127), 3, -1).astype(np.float32)),
    ("la-alpha-dropped", lambda t: pil_save(t, "la.png", RGB8[..., :2], "LA"), {}, np.repeat(RGB8[..., :1], 3, -1) / 255.0),
    ("grey-of-colour", lambda t: cv2_save(t, "a.png", RGB8), {"grayscale": True},
     lambda path: cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)[..., None] / 255.0),  # the decoder's own conversion
    ("float-tiff-refused", lambda t: pil_save(t, "f.tif", RNG.random((6, 7)).astype(np.float32)), {}, Error("f.tif", "32-bit", "official")),
    ("int32-tiff-refused", lambda t: pil_save(t, "i.tif", np.ones((6, 7), np.int32)), {}, Error("i.tif", "32-bit")),
    ("lab-refused", lambda t: (Image.fromarray(RGB8).convert("LAB").save(t / "l.tif"), t / "l.tif")[1], {}, Error("l.tif", "unsupported image mode")),
    ("truncated-png", lambda t: (t / "c.png").write_bytes(cv2_save(t, "w.png", RGB8).read_bytes()[:-20]) and t / "c.png", {}, Error("c.png", "truncated")),
    ("text", lambda t: (t / "t.png").write_text("text") and t / "t.png", {}, Error("t.png", "cannot read image")),
    ("fifo", lambda t: os.mkfifo(t / "f.png") or t / "f.png", {}, Error("f.png", "not a regular file")),
    ("bad-bit-depth", lambda t: cv2_save(t, "a.png", RGB8), {"bit_depth": 12}, Error("bit_depth must be 8 or 16")),
]


@pytest.mark.parametrize("builder, kwargs, expected", [c[1:] for c in DATASET_CASES], ids=[c[0] for c in DATASET_CASES])
def test_dataset_image(tmp_path, builder, kwargs, expected):
    path = builder(tmp_path)
    if isinstance(expected, Error):
        with pytest.raises(ValueError) as err:  # DatasetError for files
            read_image(path, **kwargs)
        if "bit_depth" not in kwargs:
            assert isinstance(err.value, DatasetError)
        assert_words(str(err.value), expected.words)
        return
    expected = expected(path) if callable(expected) else expected
    np.testing.assert_allclose(read_image(path, **kwargs), expected, atol=1e-6)


@pytest.mark.parametrize("name, data, words", [
    ("cut.jpg", lambda t: Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(t / "w.jpg") or (t / "w.jpg").read_bytes()[:900],
     ["cut.jpg", "truncated"]),
    ("text.jpg", lambda t: b"text", ["text.jpg", "not an image file"]),
])
def test_reconstruct_rgb_reader_refuses_damaged_files(tmp_path, name, data, words):
    (tmp_path / name).write_bytes(data(tmp_path))
    with pytest.raises(ValueError) as err:
        read_rgb(tmp_path / name)
    assert_words(str(err.value), words)


@pytest.fixture(scope="module")
def tiny_restormer():
    return glmha.create_model("restormer", **TINY_RESTORMER).eval()


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_restore_casts_other_float_dtypes_to_the_weights(tiny_restormer, dtype, atol):
    x = torch.rand(1, 3, 12, 10)
    expected = glmha.restore(tiny_restormer, x)
    out = glmha.restore(tiny_restormer, x.to(dtype))
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("x, words", [
    (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), ["floating-point", "torch.uint8"]),
    (torch.full((1, 3, 8, 8), float("nan")), ["non-finite"]),
    (torch.rand(3, 8, 8), ["4-D", "unsqueeze"]),
    (torch.rand(1, 4, 8, 8), ["4 channels", "expects 3"]),
    (torch.rand(1, 3, 0, 8), ["empty"]),
])
def test_restore_refuses_bad_tensors(tiny_restormer, x, words):
    with pytest.raises(glmha.validation.InputError) as err:
        glmha.restore(tiny_restormer, x)
    assert_words(str(err.value), words)


def test_restore_files_skips_a_nan_output_and_names_the_file(tmp_path):
    model = glmha.create_model("restormer", **TINY_RESTORMER).eval()
    with torch.no_grad():
        model.output.weight.fill_(float("inf"))
    Image.fromarray(RGB8).save(tmp_path / "a.png")
    written, failed = glmha.inference.restoration.restore_files(model, [tmp_path / "a.png"], tmp_path / "out", progress=False)
    assert written == [] and len(failed) == 1
    assert_words(failed[0], ["a.png", "NaN or infinite", "nothing written"])
    assert list((tmp_path / "out").iterdir()) == []


def test_plot_sweep_is_written_atomically(tmp_path, monkeypatch):
    from glmha.analysis.complexity import attention_sweep, plot_sweep

    rows = attention_sweep(["csa"], fixed_pixels=64, fixed_dim=8)
    target = tmp_path / "sweep.png"
    target.write_bytes(b"previous plot")
    import matplotlib.figure

    def failing_savefig(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", failing_savefig)
    with pytest.raises(OSError):
        plot_sweep(rows, str(target))
    assert target.read_bytes() == b"previous plot" and [p.name for p in tmp_path.iterdir()] == ["sweep.png"]
    monkeypatch.undo()
    plot_sweep(rows, str(target))
    with Image.open(target) as image:
        assert image.format == "PNG"
