"""CASSI measurements, cubes and masks (.mat v5 and v7.3, .npy): the values read, or one clear error naming the file."""
from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import scipy.io

from glmha.data.cassi import load_mask
from glmha.data.hyperspectral import read_mat, write_mat
from glmha.inference.reconstruction import read_cassi_input
from glmha.validation import InputError

from .conftest import Error, Warns, assert_words

RNG = np.random.default_rng(1)
MEAS = RNG.random((16, 30)).astype(np.float32)
CUBE = RNG.random((16, 16, 8)).astype(np.float32)  # H x W x bands, MATLAB's order
MASK = (RNG.random((16, 16)) > 0.5).astype(np.float32)


def v5(tmp, name, **variables):
    scipy.io.savemat(tmp / name, variables)
    return tmp / name


def v73(tmp, name, **variables):
    return write_mat(tmp / name, variables)


def v73_raw(tmp, name, build):
    """A v7.3 file holding what ``build(h5py_file)`` writes (structs as groups, complex as compound data)."""
    path = tmp / name
    with h5py.File(path, "w", userblock_size=512) as f:
        build(f)
    return path


def complex_v73(f):
    data = np.zeros(MEAS.T.shape, dtype=[("real", "<f8"), ("imag", "<f8")])
    data["real"] = MEAS.T
    f.create_dataset("meas", data=data)


def struct_v73(f):
    f.create_group("meas").create_dataset("values", data=MEAS.T)


def raw(tmp, name, data: bytes):
    (tmp / name).write_bytes(data)
    return tmp / name


def npy(tmp, name, array):
    np.save(tmp / name, array)
    return tmp / name


# (id, builder(tmp) -> path, expected: the float32 array, Warns(words) with MEAS-like values, or Error)
MEASUREMENT_CASES = [
    ("v5-meas", lambda t: v5(t, "a.mat", meas=MEAS), MEAS),
    ("v5-meas-float64", lambda t: v5(t, "a.mat", meas=MEAS.astype(np.float64)), MEAS),
    ("v73-meas", lambda t: v73(t, "a.mat", meas=MEAS), MEAS),
    ("v5-meas_real-key", lambda t: v5(t, "a.mat", meas_real=MEAS), MEAS),
    ("v5-y-key", lambda t: v5(t, "a.mat", y=MEAS), MEAS),
    ("v5-cube-measured-later", lambda t: v5(t, "a.mat", img=CUBE), CUBE.transpose(2, 0, 1)),
    ("v73-cube", lambda t: v73(t, "a.mat", cube=CUBE), CUBE.transpose(2, 0, 1)),
    ("v5-uint16-counts", lambda t: v5(t, "a.mat", meas=(MEAS * 4095).astype(np.uint16)), Warns("a.mat", "integer values", "uint16", "without scaling")),
    ("v73-int32-counts", lambda t: v73(t, "a.mat", meas=(MEAS * 4095).astype(np.int32)), Warns("a.mat", "integer values", "int32")),
    ("v5-uint8-counts", lambda t: v5(t, "a.mat", meas=(MEAS * 255).astype(np.uint8)), Warns("a.mat", "integer values", "uint8")),
    ("npy-int16-counts", lambda t: npy(t, "a.npy", (MEAS * 4095).astype(np.int16)), Warns("a.npy", "integer values", "int16")),
    ("npy-meas", lambda t: npy(t, "a.npy", MEAS), MEAS),
    ("npy-meas-float64", lambda t: npy(t, "a.npy", MEAS.astype(np.float64)), MEAS),
    ("npy-meas-float16", lambda t: npy(t, "a.npy", MEAS.astype(np.float16)), MEAS.astype(np.float16).astype(np.float32)),
    ("v5-complex", lambda t: v5(t, "c.mat", meas=MEAS * (1 + 1j)), Error("c.mat", "complex")),
    ("v73-complex", lambda t: v73_raw(t, "c.mat", complex_v73), Error("c.mat", "complex")),
    ("npy-complex", lambda t: npy(t, "c.npy", MEAS.astype(np.complex64)), Error("c.npy", "complex64")),
    ("v5-struct", lambda t: v5(t, "s.mat", meas={"values": MEAS, "gain": 2.0}), Error("s.mat", "struct")),
    ("v73-struct", lambda t: v73_raw(t, "s.mat", struct_v73), Error("s.mat", "struct")),
    ("v5-cell", lambda t: v5(t, "cell.mat", meas=np.array([MEAS, MEAS[:2]], dtype=object)), Error("cell.mat", "cell")),
    ("v5-text", lambda t: v5(t, "text.mat", meas="sixteen by thirty"), Error("text.mat", "text")),
    ("v5-empty", lambda t: v5(t, "e.mat", meas=np.zeros((0, 4))), Error("e.mat", "empty")),
    ("v5-4d", lambda t: v5(t, "four.mat", meas=MEAS[None, None]), Error("four.mat", "2-D measurement or a 3-D cube")),
    ("v5-row-is-2d", lambda t: v5(t, "one.mat", meas=MEAS[0]), MEAS[:1]),  # MATLAB has no 1-D arrays
    ("npy-1d", lambda t: npy(t, "one.npy", MEAS[0]), Error("one.npy", "2-D measurement or a 3-D cube")),
    ("v5-nan", lambda t: v5(t, "nan.mat", meas=np.where(MEAS > 0.5, np.nan, MEAS)), Error("nan.mat", "NaN")),
    ("v73-inf", lambda t: v73(t, "inf.mat", meas=np.where(MEAS > 0.5, np.inf, MEAS).astype(np.float32)), Error("inf.mat", "infinite")),
    ("v5-no-known-variable", lambda t: v5(t, "other.mat", a=MEAS, b=MEAS), Error("other.mat", "no cube variable")),
    ("v5-only-variable-2d", lambda t: v5(t, "only.mat", frame=MEAS), Error("only.mat", "3-D")),
    ("v73-no-known-variable", lambda t: v73(t, "other.mat", a=MEAS, b=MEAS), Error("other.mat", "no cube variable")),
    ("mat-truncated", lambda t: raw(t, "cut.mat", v5(t, "whole.mat", meas=MEAS).read_bytes()[:200]), Error("cut.mat", "cannot read")),
    ("v73-truncated", lambda t: raw(t, "cut73.mat", v73(t, "whole73.mat", meas=MEAS).read_bytes()[:1500]), Error("cut73.mat")),
    ("text-named-mat", lambda t: raw(t, "notes.mat", b"hello, this is not MATLAB\n" * 8), Error("notes.mat", "cannot read")),
    ("zero-byte-mat", lambda t: raw(t, "zero.mat", b""), Error("zero.mat", "empty (0 bytes)")),
    ("npy-huge-header", lambda t: raw(t, "h.npy", b"\x93NUMPY\x02\x00" + (200000).to_bytes(4, "little") + b"{" + b" " * 199998 + b"\n"), Error("h.npy", "cannot read")),
    ("npy-object", lambda t: npy(t, "o.npy", np.array([MEAS, None], dtype=object)), Error("o.npy", "cannot read")),
    ("npy-structured", lambda t: npy(t, "s.npy", np.zeros((4, 4), [("a", "f4")])), Error("s.npy", "unsupported array type")),
    ("npy-truncated", lambda t: raw(t, "cut.npy", npy(t, "whole.npy", MEAS).read_bytes()[:300]), Error("cut.npy", "cannot read")),
    ("txt-suffix", lambda t: raw(t, "meas.txt", b"1 2 3"), Error("meas.txt", "unsupported file type", ".txt")),
    ("folder", lambda t: (t / "dir.mat").mkdir() or t / "dir.mat", Error("dir.mat", "is a folder")),
    ("missing", lambda t: t / "missing.mat", Error("missing.mat", "no such measurement file")),
]


@pytest.mark.parametrize("builder, expected", [c[1:] for c in MEASUREMENT_CASES], ids=[c[0] for c in MEASUREMENT_CASES])
def test_measurement_file(tmp_path, caplog, builder, expected):
    path = builder(tmp_path)
    if isinstance(expected, Error):
        with pytest.raises(InputError) as err:
            read_cassi_input(path)
        assert "\n" not in str(err.value)
        assert_words(str(err.value), expected.words)
        return
    with caplog.at_level(logging.WARNING, logger="glmha"):
        array = read_cassi_input(path)
    assert array.dtype == np.float32
    if isinstance(expected, Warns):
        assert len(caplog.records) == 1
        assert_words(caplog.records[0].getMessage(), expected.words)
        stored = np.load(path) if path.suffix == ".npy" else read_mat(path, "meas")
        np.testing.assert_array_equal(array, stored.astype(np.float32))  # converted as they are, without scaling
    else:
        assert not caplog.records
        np.testing.assert_allclose(array, expected, atol=1e-7)


def test_measurement_key_that_is_missing_names_the_variables(tmp_path):
    path = v5(tmp_path, "a.mat", meas=MEAS)
    with pytest.raises(InputError) as err:
        read_cassi_input(path, key="measurement")
    assert_words(str(err.value), ["a.mat", "no variable 'measurement'", "meas"])


MASK_CASES = [
    ("v5-float", lambda t: v5(t, "m.mat", mask=MASK), MASK),
    ("v73-float", lambda t: v73(t, "m.mat", mask=MASK), MASK),
    ("v5-uint8", lambda t: v5(t, "m.mat", mask=MASK.astype(np.uint8)), MASK),
    ("v5-logical", lambda t: v5(t, "m.mat", mask=MASK.astype(bool)), MASK),
    ("v73-logical", lambda t: v73(t, "m.mat", mask=MASK.astype(bool)), MASK),
    ("npy-float64", lambda t: npy(t, "m.npy", MASK.astype(np.float64)), MASK),
    ("npy-bool", lambda t: npy(t, "m.npy", MASK.astype(bool)), MASK),
    ("v5-all-zero", lambda t: v5(t, "zero.mat", mask=np.zeros((16, 16))), Error("zero.mat", "all zeros")),
    ("v73-all-zero", lambda t: v73(t, "zero.mat", mask=np.zeros((16, 16), np.float32)), Error("zero.mat", "all zeros")),
    ("npy-all-zero", lambda t: npy(t, "zero.npy", np.zeros((16, 16), np.uint8)), Error("zero.npy", "all zeros")),
    ("v5-nan", lambda t: v5(t, "nan.mat", mask=np.where(MASK > 0, np.nan, 0)), Error("nan.mat", "NaN")),
    ("v5-complex", lambda t: v5(t, "c.mat", mask=MASK * 1j), Error("c.mat", "complex")),
    ("npy-complex", lambda t: npy(t, "c.npy", MASK.astype(np.complex128)), Error("c.npy", "complex128")),
    ("v5-struct", lambda t: v5(t, "s.mat", mask={"m": MASK}), Error("s.mat", "struct")),
    ("v5-3d", lambda t: v5(t, "m3.mat", mask=np.stack([MASK] * 2, -1)), Error("m3.mat", "must be 2-D")),
    ("v5-wrong-key", lambda t: v5(t, "k.mat", Phi=MASK), Error("k.mat", "no variable 'mask'", "Phi")),
    ("v73-wrong-key", lambda t: v73(t, "k.mat", Phi=MASK), Error("k.mat", "no variable 'mask'", "Phi")),
    ("npy-huge-header", lambda t: raw(t, "h.npy", b"\x93NUMPY\x02\x00" + (200000).to_bytes(4, "little") + b"{" + b" " * 199998 + b"\n"), Error("h.npy", "cannot read")),
    ("npy-zero-byte", lambda t: raw(t, "z.npy", b""), Error("z.npy", "empty")),
    ("mat-folder", lambda t: (t / "d.mat").mkdir() or t / "d.mat", Error("d.mat", "not a regular file")),
]


@pytest.mark.parametrize("builder, expected", [c[1:] for c in MASK_CASES], ids=[c[0] for c in MASK_CASES])
def test_mask_file(tmp_path, builder, expected):
    path = builder(tmp_path)
    if isinstance(expected, Error):
        with pytest.raises((ValueError, KeyError)) as err:  # InputError included; KeyError: a missing variable
            load_mask(path)
        assert_words(" ".join(str(err.value).split()), expected.words)
        return
    mask = load_mask(path)
    np.testing.assert_array_equal(mask.numpy(), expected)


def test_write_mat_leaves_an_existing_file_whole_when_it_fails(tmp_path):
    path = write_mat(tmp_path / "keep.mat", {"cube": CUBE})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="cannot store 'bad' of dtype complex"):
        write_mat(path, {"cube": CUBE, "bad": CUBE.astype(np.complex64)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mat"]  # no temporary file left
