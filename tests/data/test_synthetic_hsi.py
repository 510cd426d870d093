import numpy as np
import pytest
import torch

from glmha.data.synthetic_hsi import (
    CASSI_WAVELENGTHS, RGB2HSI_WAVELENGTHS, SyntheticHSI, camera_response, illuminant_spectrum, reflectance_library,
    render_rgb, synthetic_scene,
)


def test_band_sets():
    assert len(RGB2HSI_WAVELENGTHS) == 31 and RGB2HSI_WAVELENGTHS[0] == 400 and RGB2HSI_WAVELENGTHS[-1] == 700
    assert len(CASSI_WAVELENGTHS) == 28 and CASSI_WAVELENGTHS[0] == 453.3 and CASSI_WAVELENGTHS[-1] == 648.1


def test_spectra_come_from_measured_data():
    import colour

    names, spectra = reflectance_library(RGB2HSI_WAVELENGTHS)
    assert spectra.shape == (102, 31) and len(names) == 102
    # the BabelColor "dark skin" patch at 550 nm, read straight from colour-science
    i = names.index("BabelColor Average: dark skin")
    assert spectra[i, 15] == pytest.approx(colour.SDS_COLOURCHECKERS["BabelColor Average"]["dark skin"][550])
    d65 = illuminant_spectrum("D65")
    sd = colour.SDS_ILLUMINANTS["D65"]
    assert d65.max() == 1.0
    assert d65[10] == pytest.approx(sd[500] / max(sd[w] for w in RGB2HSI_WAVELENGTHS))
    with pytest.raises(ValueError, match="unknown illuminant"):
        illuminant_spectrum("sunset")


def test_scene_is_seeded_and_in_range():
    a, b, c = synthetic_scene(3, 32, 40), synthetic_scene(3, 32, 40), synthetic_scene(4, 32, 40)
    assert a.shape == (31, 32, 40) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.0 <= a.min() and 0.6 <= a.max() <= 1.0
    cassi = synthetic_scene(3, 32, 32, CASSI_WAVELENGTHS)
    assert cassi.shape == (28, 32, 32)
    # spectra vary across the image (several materials), not one spectrum times shading
    normalised = a.reshape(31, -1) / a.reshape(31, -1).sum(0)
    assert normalised.std(axis=1).mean() > 1e-3
    with pytest.raises(ValueError, match="400-700 nm"):
        synthetic_scene(0, 16, 16, wavelengths=[380.0, 390.0])


def test_rgb_rendering():
    flat = np.full((31, 2, 2), 0.5)
    for response in ("nikon_5100", "sigma_sd_merrill"):
        # each channel's sensitivity sums to 1: an equal-energy grey keeps its value
        np.testing.assert_allclose(render_rgb(flat, response=response, bits=None), 0.5, rtol=1e-6)
    assert camera_response("nikon_5100").shape == (3, 31)
    rgb = render_rgb(synthetic_scene(0, 16, 16))
    assert rgb.shape == (3, 16, 16) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb * 255, np.round(rgb * 255), atol=1e-3)  # 8-bit levels
    # a red-reflecting surface renders redder than it renders blue
    red = np.zeros((31, 1, 1))
    red[20:] = 0.8
    out = render_rgb(red, response="cie_1931", bits=None)
    assert out[0, 0, 0] > out[2, 0, 0]
    with pytest.raises(ValueError, match="unknown camera response"):
        camera_response("canon")


def test_dataset_items():
    data = SyntheticHSI(count=2, size=16, task="rgb2hsi", seed=7)
    rgb, cube = data[1]
    assert rgb.shape == (3, 16, 16) and cube.shape == (31, 16, 16)
    assert torch.equal(cube, torch.from_numpy(synthetic_scene(8, 16, 16)))
    cassi = SyntheticHSI(count=1, size=16, task="cassi")
    assert cassi[0].shape == (28, 16, 16)
    with pytest.raises(IndexError):
        data[2]


# ----------------------------------------------------------------------------- the same data on every CPU
def _fingerprint_script() -> str:
    return (
        "import hashlib\n"
        "from glmha.data.synthetic_hsi import SyntheticHSI\n"
        "h = hashlib.sha256()\n"
        "for task in ('rgb2hsi', 'cassi'):\n"
        "    data = SyntheticHSI(3, 40, task, seed=7)\n"
        "    for i in range(len(data)):\n"
        "        item = data[i] if task == 'rgb2hsi' else (data[i],)\n"
        "        for t in item:\n"
        "            h.update(t.numpy().tobytes())\n"
        "print(h.hexdigest())\n"
    )


def test_scenes_do_not_depend_on_the_blas_kernel():
    """OpenBLAS picks its kernels by CPU (AVX-512 ones fuse multiply-adds); the scenes must not change with them."""
    import os
    import subprocess
    import sys

    runs = {}
    for coretype in (None, "Haswell", "Nehalem"):
        env = dict(os.environ)
        env.pop("OPENBLAS_CORETYPE", None)
        if coretype:
            env["OPENBLAS_CORETYPE"] = coretype
        runs[coretype] = subprocess.run([sys.executable, "-c", _fingerprint_script()], env=env, capture_output=True,
                                        text=True, check=True).stdout.strip()
    assert len(set(runs.values())) == 1, runs


def _nearest_float32(x) -> "Fraction":
    """``x`` (a Fraction) rounded once to the nearest float32, ties to even: the definition of one fused rounding."""
    from fractions import Fraction

    guess = np.float32(float(x))
    candidates = [guess, np.nextafter(guess, np.float32(np.inf)), np.nextafter(guess, np.float32(-np.inf))]
    best = min(candidates, key=lambda c: (abs(Fraction(float(c)) - x), int(np.array(c).view(np.uint32)) & 1))
    return Fraction(float(best))


def test_luminance_is_the_fused_multiply_add_chain():
    """fma(b, w2, fma(g, w1, r w0)) in float32, each step rounded once: checked in exact rational arithmetic."""
    from fractions import Fraction

    from glmha.data.synthetic_hsi import _GREY, _luminance

    rgb = np.random.default_rng(3).random((16, 16, 3)).astype(np.float32)
    w = [Fraction(float(np.float32(c))) for c in _GREY]
    ours = _luminance(rgb)
    for (i, j), value in np.ndenumerate(ours):
        r, g, b = (Fraction(float(v)) for v in rgb[i, j])
        acc = _nearest_float32(r * w[0])
        acc = _nearest_float32(g * w[1] + acc)
        assert Fraction(float(value)) == _nearest_float32(b * w[2] + acc), (i, j)
