"""Image files of every kind through the one reader (glmha.io.images.read_image_array): the decoded values, or one clear error."""
from __future__ import annotations

import logging
import os
import threading

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from glmha.io.images import read_image_array
from glmha.validation import InputError

from .conftest import Error, assert_words

RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)
GREY8 = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
RGB16 = RNG.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
GREY16 = RNG.integers(0, 65536, (6, 7), dtype=np.uint16)
ALPHA = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
BITS = RNG.integers(0, 2, (6, 7)).astype(bool)
FLOATS = RNG.random((6, 7)).astype(np.float32)


def rgb(array: np.ndarray) -> np.ndarray:
    """Expected float RGB of a grey or colour array of integers."""
    scale = 65535.0 if array.dtype == np.uint16 else (1.0 if array.dtype == bool else 255.0)
    array = array.astype(np.float32) / np.float32(scale)
    return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array


def pil_rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        return rgb(np.asarray(image.convert("RGB")))


def save(tmp, name, array, mode=None, **kwargs):
    path = tmp / name
    Image.fromarray(array, mode).save(path, **kwargs) if mode else Image.fromarray(array).save(path, **kwargs)
    return path


def cv2_save(tmp, name, array):
    path = tmp / name
    bgr = array[..., [2, 1, 0, 3][: array.shape[-1]]] if array.ndim == 3 else array
    assert cv2.imwrite(str(path), bgr)
    return path


def truncated(tmp, name, source_suffix):
    path = save(tmp, f"full{source_suffix}", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = path.read_bytes()
    (tmp / name).write_bytes(data[: len(data) * 2 // 3])
    return tmp / name


def exif_png(tmp, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp / f"o{orientation}.png"
    Image.fromarray(RGB8).save(path, exif=exif)
    return path


def npy(tmp, name, array):
    np.save(tmp / name, array)
    return tmp / name


def raw(tmp, name, data: bytes):
    (tmp / name).write_bytes(data)
    return tmp / name


def huge_header_npy(tmp):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), 'pad': '" + "x" * 20000 + "'}"
    header = header + " " * (-(len(header) + 11) % 64) + "\n"
    data = b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header.encode() + b"\x00" * 16
    return raw(tmp, "huge_header.npy", data)


def lying_npy(tmp):
    """A header promising 90000 x 90000 floats in front of 16 bytes."""
    data = npy(tmp, "lying.npy", np.zeros((2, 2), np.float32)).read_bytes()
    header_end = data.index(b"\n") + 1
    header = data[10:header_end].decode().replace("(2, 2)", "(90000, 90000)").rstrip()
    header = header + " " * (-(len(header) + 11) % 64) + "\n"
    return raw(tmp, "lying.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data[header_end:])


def fifo(tmp, name):
    os.mkfifo(tmp / name)
    return tmp / name


def folder(tmp, name):
    (tmp / name).mkdir()
    return tmp / name


def bad_crc_png(tmp):
    path = save(tmp, "crc.png", RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 20
    data[start : start + 8] = b"\x00" * 8
    path.write_bytes(bytes(data))
    return path


def cmyk(tmp, name):
    path = tmp / name
    Image.fromarray(RGB8).convert("CMYK").save(path)
    return path


def palette(tmp, name, transparency=False):
    image = Image.fromarray(RGB8).convert("P")
    path = tmp / name
    image.save(path, transparency=0) if transparency else image.save(path)
    return path


# (id, builder(tmp) -> (path, expected, kwargs)); expected: an array (and depth), or Error
CASES = [
    ("rgb8-png", lambda t: (save(t, "a.png", RGB8), (rgb(RGB8), 8), {})),
    ("rgb8-bmp", lambda t: (save(t, "a.bmp", RGB8), (rgb(RGB8), 8), {})),
    ("rgb8-tif", lambda t: (save(t, "a.tif", RGB8), (rgb(RGB8), 8), {})),
    ("rgb8-webp-lossless", lambda t: (save(t, "a.webp", RGB8, lossless=True), (rgb(RGB8), 8), {})),
    ("grey8-png-repeated", lambda t: (save(t, "g.png", GREY8), (rgb(GREY8), 8), {})),
    ("grey8-png-1-channel", lambda t: (save(t, "g.png", GREY8), (rgb(GREY8)[..., :1], 8), {"channels": 1})),
    ("rgb8-luma", lambda t: (save(t, "a.png", RGB8), (rgb(RGB8) @ np.float32([[0.299], [0.587], [0.114]]), 8), {"channels": 1})),
    ("palette-png", lambda t: (p := palette(t, "p.png"), (pil_rgb(p), 8), {})),
    ("palette-png-transparency", lambda t: (p := palette(t, "pt.png", True), (pil_rgb(p), 8), {})),
    ("palette-gif", lambda t: (p := palette(t, "p.gif"), (pil_rgb(p), 8), {})),
    ("palette-bmp", lambda t: (p := palette(t, "p.bmp"), (pil_rgb(p), 8), {})),
    ("cmyk-jpeg", lambda t: (p := cmyk(t, "c.jpg"), (pil_rgb(p), 8), {})),
    ("cmyk-tiff", lambda t: (p := cmyk(t, "c.tif"), (pil_rgb(p), 8), {})),
    ("ycbcr-jpeg", lambda t: (p := save(t, "y.jpg", RGB8), (pil_rgb(p), 8), {})),
    ("la-png-alpha-dropped", lambda t: (save(t, "la.png", np.stack([GREY8, ALPHA], -1), "LA"), (rgb(GREY8), 8), {})),
    ("rgba-png-alpha-dropped", lambda t: (save(t, "rgba.png", np.dstack([RGB8, ALPHA])), (rgb(RGB8), 8), {})),
    ("rgba-transparent-keeps-colour", lambda t: (save(t, "clear.png", np.dstack([RGB8, np.zeros_like(ALPHA)])), (rgb(RGB8), 8), {})),
    ("rgba-tiff", lambda t: (save(t, "rgba.tif", np.dstack([RGB8, ALPHA])), (rgb(RGB8), 8), {})),
    ("1bit-png", lambda t: (save(t, "b.png", BITS), (rgb(BITS), 8), {})),
    ("1bit-tiff", lambda t: (save(t, "b.tif", BITS), (rgb(BITS), 8), {})),
    ("1bit-bmp", lambda t: (save(t, "b.bmp", BITS), (rgb(BITS), 8), {})),
    ("1bit-1-channel", lambda t: (save(t, "b.png", BITS), (rgb(BITS)[..., :1], 8), {"channels": 1})),
    ("grey16-png", lambda t: (cv2_save(t, "g16.png", GREY16), (rgb(GREY16), 16), {})),
    ("grey16-tiff", lambda t: (cv2_save(t, "g16.tif", GREY16), (rgb(GREY16), 16), {})),
    ("grey16-1-channel", lambda t: (cv2_save(t, "g16.png", GREY16), (rgb(GREY16)[..., :1], 16), {"channels": 1})),
    ("rgb16-png", lambda t: (cv2_save(t, "c16.png", RGB16), (rgb(RGB16), 16), {})),
    ("rgb16-tiff", lambda t: (cv2_save(t, "c16.tif", RGB16), (rgb(RGB16), 16), {})),
    ("rgba16-png", lambda t: (cv2_save(t, "c16a.png", np.dstack([RGB16, GREY16])[..., [0, 1, 2, 3]]), (rgb(RGB16), 16), {})),
    ("float32-tiff", lambda t: (save(t, "f.tif", FLOATS), (np.repeat(FLOATS[..., None], 3, -1), 16), {})),
    ("float32-rgb-tiff", lambda t: (cv2_save(t, "f3.tif", np.dstack([FLOATS] * 3) * np.float32([1, 0.5, 0.25])),
                                    (np.dstack([FLOATS] * 3) * np.float32([1, 0.5, 0.25]), 16), {})),
    ("float32-tiff-nan", lambda t: (save(t, "nan.tif", np.where(FLOATS > 0.5, np.nan, FLOATS).astype(np.float32)), Error("nan.tif", "NaN"), {})),
    ("float32-tiff-inf", lambda t: (save(t, "inf.tif", np.where(FLOATS > 0.5, np.inf, FLOATS).astype(np.float32)), Error("inf.tif", "infinite"), {})),
    ("int32-tiff-in-16-bits", lambda t: (save(t, "i.tif", GREY16.astype(np.int32)), (rgb(GREY16), 16), {})),
    ("int32-tiff-negative", lambda t: (save(t, "neg.tif", np.minimum(GREY16.astype(np.int32), 1000) - 1005), Error("neg.tif", "32-bit integer", "-5"), {})),
    ("int32-tiff-too-large", lambda t: (save(t, "big.tif", GREY16.astype(np.int32) * 4), Error("big.tif", "do not fit 16 bits"), {})),
    ("lab-tiff-refused", lambda t: (p := t / "lab.tif", Image.fromarray(RGB8).convert("LAB").save(p), Error("lab.tif", "unsupported image mode", "LAB"))[::2] + ({},)),
    ("cmyk-luma", lambda t: (p := cmyk(t, "c.png.tif"), (pil_rgb(p) @ np.float32([[0.299], [0.587], [0.114]]), 8), {"channels": 1})),
    *[(f"exif-orientation-{o}", lambda t, o=o: (p := exif_png(t, o), (rgb(np.asarray(ImageOps.exif_transpose(Image.open(p)))), 8), {}))
      for o in range(1, 9)],
    ("exif-rotation-swaps-sides", lambda t: (exif_png(t, 6), (rgb(np.rot90(RGB8, -1)), 8), {})),
    ("png-named-jpg", lambda t: (save(t, "actually_png.jpg", RGB8, format="PNG"), (rgb(RGB8), 8), {})),
    ("one-pixel", lambda t: (save(t, "dot.png", RGB8[:1, :1]), (rgb(RGB8[:1, :1]), 8), {})),
    ("truncated-png", lambda t: (truncated(t, "cut.png", ".png"), Error("cut.png", "truncated"), {})),
    ("truncated-jpeg", lambda t: (truncated(t, "cut.jpg", ".jpg"), Error("cut.jpg", "truncated"), {})),
    ("truncated-tiff", lambda t: (truncated(t, "cut.tif", ".tif"), Error("cut.tif", "cannot read image"), {})),
    ("truncated-bmp", lambda t: (truncated(t, "cut.bmp", ".bmp"), Error("cut.bmp", "cannot read image"), {})),
    ("png-bad-crc", lambda t: (bad_crc_png(t), Error("crc.png", "cannot read image"), {})),
    ("zero-byte-png", lambda t: (raw(t, "empty.png", b""), Error("empty.png", "empty (0 bytes)"), {})),
    ("zero-byte-npy", lambda t: (raw(t, "empty.npy", b""), Error("empty.npy", "empty (0 bytes)"), {})),
    ("text-named-png", lambda t: (raw(t, "notes.png", b"hello, world\n"), Error("notes.png", "not an image file"), {})),
    ("text-named-jpg", lambda t: (raw(t, "notes.jpg", b"hello, world\n"), Error("notes.jpg", "not an image file"), {})),
    ("text-named-tif", lambda t: (raw(t, "notes.tif", b"hello, world\n"), Error("notes.tif", "not an image file"), {})),
    ("png-header-only", lambda t: (raw(t, "head.png", save(t, "h.png", RGB8).read_bytes()[:40]), Error("head.png"), {})),
    ("folder-named-png", lambda t: (folder(t, "dir.png"), Error("dir.png", "is a folder"), {})),
    ("fifo-named-png", lambda t: (fifo(t, "pipe.png"), Error("pipe.png", "not a regular file"), {})),
    ("missing-file", lambda t: (t / "missing.png", Error("missing.png", "no such image file"), {})),
    ("npy-float32-rgb", lambda t: (npy(t, "f.npy", rgb(RGB8)), (rgb(RGB8), 16), {})),
    ("npy-float64-cast", lambda t: (npy(t, "f64.npy", rgb(RGB8).astype(np.float64)), (rgb(RGB8), 16), {})),
    ("npy-float16-cast", lambda t: (npy(t, "f16.npy", rgb(RGB8).astype(np.float16)), (rgb(RGB8).astype(np.float16).astype(np.float32), 16), {})),
    ("npy-grey-hw", lambda t: (npy(t, "g.npy", FLOATS), (np.repeat(FLOATS[..., None], 3, -1), 16), {})),
    ("npy-uint8", lambda t: (npy(t, "u8.npy", RGB8), (rgb(RGB8), 8), {})),
    ("npy-uint16", lambda t: (npy(t, "u16.npy", RGB16), (rgb(RGB16), 16), {})),
    ("npy-bool", lambda t: (npy(t, "b.npy", BITS), (rgb(BITS), 8), {})),
    ("npy-rgba-alpha-dropped", lambda t: (npy(t, "rgba.npy", np.dstack([RGB8, ALPHA])), (rgb(RGB8), 8), {})),
    ("npy-int32-refused", lambda t: (npy(t, "i32.npy", GREY16.astype(np.int32)), Error("i32.npy", "unsupported array type int32"), {})),
    ("npy-int8-refused", lambda t: (npy(t, "i8.npy", GREY8.astype(np.int8)), Error("i8.npy", "unsupported array type int8"), {})),
    ("npy-complex-refused", lambda t: (npy(t, "c.npy", FLOATS.astype(np.complex64)), Error("c.npy", "complex64"), {})),
    ("npy-object-refused", lambda t: (npy(t, "o.npy", np.array([[{}, 1]], dtype=object)), Error("o.npy", "cannot read", "Python objects"), {})),
    ("npy-structured-refused", lambda t: (npy(t, "s.npy", np.zeros((2, 2), [("a", "f4")])), Error("s.npy", "unsupported array type"), {})),
    ("npy-text-refused", lambda t: (npy(t, "u.npy", np.array([["a", "b"]])), Error("u.npy", "unsupported array type"), {})),
    ("npy-1d-refused", lambda t: (npy(t, "v.npy", FLOATS.ravel()), Error("v.npy", "H x W"), {})),
    ("npy-4d-refused", lambda t: (npy(t, "b4.npy", FLOATS[None, ..., None, None].repeat(3, -1)), Error("b4.npy", "H x W"), {})),
    ("npy-5-channels-refused", lambda t: (npy(t, "c5.npy", np.zeros((4, 4, 5), np.float32)), Error("c5.npy", "got shape (4, 4, 5)"), {})),
    ("npy-chw-refused", lambda t: (npy(t, "chw.npy", np.zeros((3, 8, 8), np.float32)), Error("chw.npy", "H x W x C"), {})),
    ("npy-empty-refused", lambda t: (npy(t, "e.npy", np.zeros((0, 5), np.float32)), Error("e.npy", "empty"), {})),
    ("npy-nan-refused", lambda t: (npy(t, "nan.npy", np.full((3, 3), np.nan, np.float32)), Error("nan.npy", "NaN"), {})),
    ("npy-huge-header", lambda t: (huge_header_npy(t), Error("huge_header.npy", "cannot read", ".npy"), {})),
    ("npy-header-promises-more", lambda t: (lying_npy(t), Error("lying.npy", "cannot read", ".npy"), {})),
    ("npy-truncated", lambda t: (raw(t, "cut.npy", npy(t, "whole.npy", FLOATS).read_bytes()[:100]), Error("cut.npy", "cannot read"), {})),
    ("npz-named-npy", lambda t: (p := t / "z.npy", np.savez(t / "z.npz", a=FLOATS), os.rename(t / "z.npz", p), Error("z.npy", "archive"))[::3] + ({},)),
    ("text-named-npy", lambda t: (raw(t, "t.npy", b"just text"), Error("t.npy", "cannot read"), {})),
]


@pytest.mark.parametrize("builder", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_image_file(tmp_path, builder):
    path, expected, kwargs = builder(tmp_path)
    if isinstance(expected, Error):
        result: list = []
        worker = threading.Thread(target=lambda: result.append(_read_error(path, kwargs)), daemon=True)
        worker.start()
        worker.join(timeout=20)  # a FIFO must be refused, not opened (that would block)
        assert result, f"reading {path} hangs"
        message = result[0]
        assert message is not None, f"{path} was read without an error"
        assert "\n" not in message
        assert_words(message, expected.words)
    else:
        values, depth = expected
        array, got_depth = read_image_array(path, **kwargs)
        assert array.dtype == np.float32 and array.shape == values.shape
        np.testing.assert_allclose(array, values, atol=1e-6)
        assert got_depth == depth


def _read_error(path, kwargs):
    try:
        read_image_array(path, **kwargs)
    except InputError as err:
        return str(err)
    return None


@pytest.mark.parametrize("source", ["npy", "tiff"])
@pytest.mark.parametrize("low, high", [(-0.25, 0.5), (0.0, 1.5)])
def test_float_values_outside_0_1_are_clipped_with_a_warning(tmp_path, caplog, source, low, high):
    values = np.linspace(low, high, 12, dtype=np.float32).reshape(3, 4)
    path = npy(tmp_path, "range.npy", values) if source == "npy" else save(tmp_path, "range.tif", values)
    with caplog.at_level(logging.WARNING, logger="glmha"):
        array, _ = read_image_array(path)
    np.testing.assert_allclose(array[..., 0], np.clip(values, 0, 1), atol=1e-7)
    assert len(caplog.records) == 1
    assert_words(caplog.records[0].getMessage(), ["range.", "outside [0, 1]", "clipped"])


@pytest.mark.parametrize("pixels_over_limit, kind", [(1.5, "warning"), (3, "error")])
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, pixels_over_limit, kind):
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: both are refused
    path = save(tmp_path, "bomb.png", np.zeros((40, 40), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(1600 / pixels_over_limit))
    with pytest.raises(InputError) as err:
        read_image_array(path)
    assert_words(str(err.value), ["bomb.png", "1,600 pixels", "decompression bomb", "MAX_IMAGE_PIXELS"])
