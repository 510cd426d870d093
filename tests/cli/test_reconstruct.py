import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import glmha
from glmha.cli import main
from glmha.data.cassi import mask_3d, mask_input, measure, random_mask, shift_back
from glmha.data.hyperspectral import read_cube, read_mat, write_mat

MSTPP = {"stage": 1}
MST = {"dim": 8, "in_channels": 8, "out_channels": 8, "num_blocks": [1, 1, 1]}


def error_line(stderr: str) -> str:
    # tqdm's progress bar is drawn on stderr too, each update after a carriage return
    lines = [line for line in re.split(r"[\r\n]", stderr) if line.strip() and not re.match(r"(restoring|reconstructing):", line)]
    assert len(lines) == 1, lines
    return lines[0]


def test_rgb_images_to_cubes(tmp_path):
    model = glmha.create_model("mst_plus_plus", **MSTPP)
    checkpoint = glmha.save_weights(model, tmp_path / "mstpp.safetensors")
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.png")
    Image.fromarray(rng.integers(0, 256, (13, 9, 3), dtype=np.uint8)).save(tmp_path / "in" / "b.jpg")
    base = ["reconstruct", str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--model-kwargs", json.dumps(MSTPP)]
    assert main([*base, "--output", str(tmp_path / "mat")]) == 0
    cube = read_mat(tmp_path / "mat" / "a.mat", "cube")
    assert cube.shape == (20, 28, 31) and cube.dtype == np.float32
    assert read_cube(tmp_path / "mat" / "b.mat").shape == (31, 13, 9)
    assert main([*base, "--output", str(tmp_path / "npy"), "--format", "npy"]) == 0
    npy = np.load(tmp_path / "npy" / "a.npy")
    assert npy.shape == (31, 20, 28)
    assert np.allclose(npy, cube.transpose(2, 0, 1))
    # the numbers are the model's on the min-max normalised image, clipped to [0, 1] (as the official test code)
    rgb = np.asarray(Image.open(tmp_path / "in" / "a.png"), dtype=np.float32)
    rgb = (rgb - rgb.min()) / (rgb.max() - rgb.min())
    expected = glmha.restore(model.eval(), torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])[0].clamp(0, 1)
    assert np.allclose(npy, expected.numpy(), atol=1e-5)
    # the band centres travel with each cube: 'bands' in the .mat (as NTIRE 2022's files), <name>.json beside the .npy
    wavelengths = list(range(400, 701, 10))
    assert np.allclose(read_mat(tmp_path / "mat" / "a.mat", "bands"), [wavelengths])
    assert json.loads((tmp_path / "npy" / "a.json").read_text())["wavelengths_nm"] == wavelengths


def test_cassi_measurements_and_cubes_to_cubes(tmp_path):
    model = glmha.create_model("mst_s", **MST).eval()
    checkpoint = glmha.save_weights(model, tmp_path / "mst.safetensors")
    mask = random_mask(16, 16, seed=3)
    np.save(tmp_path / "mask.npy", mask.numpy())
    cube = torch.rand(1, 8, 16, 16)
    meas = measure(cube, mask_3d(mask, 8))  # 1 x 16 x 30
    (tmp_path / "in").mkdir()
    write_mat(tmp_path / "in" / "snap.mat", {"meas": meas[0].numpy()})
    write_mat(tmp_path / "in" / "scene.mat", {"img": cube[0].numpy().transpose(1, 2, 0).copy()}, version="5")
    args = ["reconstruct", str(tmp_path / "in"), "--mask", str(tmp_path / "mask.npy"), "--model", "mst_s",
            "--model-kwargs", json.dumps(MST), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), "--format", "npy"]
    assert main(args) == 0
    out_snap, out_scene = np.load(tmp_path / "out" / "snap.npy"), np.load(tmp_path / "out" / "scene.npy")
    assert out_snap.shape == (8, 16, 16)
    assert np.allclose(out_snap, out_scene, atol=1e-5)  # a cube is measured through the mask first
    with torch.no_grad():
        expected = model(shift_back(meas / 8 * 2, bands=8), mask_input(mask_3d(mask, 8), "Phi"))[0]
    assert np.allclose(out_snap, expected.numpy(), atol=1e-5)


def test_cassi_measurement_of_the_wrong_size_is_reported(tmp_path, capsys):
    model = glmha.create_model("mst_s", **MST)
    checkpoint = glmha.save_weights(model, tmp_path / "mst.safetensors")
    np.save(tmp_path / "mask.npy", random_mask(16, 16).numpy())
    np.save(tmp_path / "meas.npy", np.zeros((16, 20), np.float32))
    args = ["reconstruct", str(tmp_path / "meas.npy"), "--mask", str(tmp_path / "mask.npy"), "--model", "mst_s",
            "--model-kwargs", json.dumps(MST), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]
    assert main(args) == 1
    err = error_line(capsys.readouterr().err)
    assert "does not fit the 16x16 mask with 8 bands (expected 16x30)" in err


def test_mask_guided_model_needs_a_mask(tmp_path, capsys):
    model = glmha.create_model("mst_s", **MST)
    checkpoint = glmha.save_weights(model, tmp_path / "mst.safetensors")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["reconstruct", str(tmp_path / "a.png"), "--model", "mst_s", "--model-kwargs", json.dumps(MST),
                 "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]) == 1
    assert "pass the coded aperture with --mask" in error_line(capsys.readouterr().err)


def test_reconstruct_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["reconstruct", "--help"])
    assert info.value.code == 0 and "examples:" in capsys.readouterr().out


REAL = {"dim": 4, "stage": 1, "num_blocks": [1, 1]}  # tiny, but the official 28 bands (660 x 714 measurements)


def _real_reference(model, meas: np.ndarray) -> np.ndarray:
    # The official real test: clip the measurement to [0, 1], scale it to a maximum of 0.8, clip the output.
    y = np.clip(meas, 0, 1)
    y = y / y.max() * 0.8
    with torch.no_grad():
        return model(torch.from_numpy(y).float()[None]).clamp(0, 1)[0].numpy()


def test_real_measurements_to_cubes(tmp_path):
    model = glmha.create_model("mst_s_real", **REAL).eval()
    checkpoint = glmha.save_weights(model, tmp_path / "real.safetensors")
    rng = np.random.default_rng(0)
    (tmp_path / "Measurements").mkdir()
    meas = rng.uniform(-0.05, 1.2, (660, 714))  # the official meas_real files: 660 x 714, v5
    write_mat(tmp_path / "Measurements" / "scene1.mat", {"meas_real": meas}, version="5")
    write_mat(tmp_path / "mask.mat", {"mask": rng.uniform(0, 1, (660, 660))}, version="5")
    base = ["reconstruct", str(tmp_path / "Measurements"), "--model", "mst_s_real", "--model-kwargs", json.dumps(REAL),
            "--checkpoint", str(checkpoint)]
    assert main([*base, "--mask", str(tmp_path / "mask.mat"), "--output", str(tmp_path / "out")]) == 0
    cube = read_mat(tmp_path / "out" / "scene1.mat", "cube")
    assert cube.shape == (660, 660, 28)
    np.testing.assert_allclose(cube.transpose(2, 0, 1), _real_reference(model, meas), atol=1e-5)

    # Any size: no mask needed (the network does not use it); a 30 x 45 scene is not a multiple of 4.
    small = rng.uniform(0, 0.7, (30, 45 + 54)).astype(np.float32)
    np.save(tmp_path / "small.npy", small)
    assert main([*base[:1], str(tmp_path / "small.npy"), *base[2:], "--output", str(tmp_path / "npy"), "--format", "npy", "--preview"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "npy" / "small.npy"), _real_reference(model, small), atol=1e-5)
    with Image.open(tmp_path / "npy" / "small_srgb.png") as srgb:  # 28 CASSI bands: a rendering is known
        assert srgb.size == (45, 30)


def test_real_measurement_errors(tmp_path, capsys):
    model = glmha.create_model("mst_s_real", **REAL)
    checkpoint = glmha.save_weights(model, tmp_path / "real.safetensors")
    np.save(tmp_path / "mask.npy", np.ones((16, 16), np.float32))
    np.save(tmp_path / "meas.npy", np.ones((16, 60), np.float32))
    np.save(tmp_path / "cube.npy", np.ones((28, 16, 16), np.float32))
    base = ["reconstruct", "--model", "mst_s_real", "--model-kwargs", json.dumps(REAL), "--checkpoint", str(checkpoint),
            "--output", str(tmp_path / "out")]
    assert main([*base, str(tmp_path / "meas.npy"), "--mask", str(tmp_path / "mask.npy")]) == 1
    assert "measurement (16, 60) does not fit the 16x16 mask with 28 bands (expected 16x70)" in error_line(capsys.readouterr().err)
    assert main([*base, str(tmp_path / "cube.npy")]) == 1
    assert "needs --mask to be measured" in error_line(capsys.readouterr().err)
    np.save(tmp_path / "meas.npy", np.zeros((16, 70), np.float32))
    assert main([*base, str(tmp_path / "meas.npy")]) == 1
    assert "zero everywhere" in error_line(capsys.readouterr().err)
    # a cube with the mask is measured first, then reconstructed like a measurement
    assert main([*base, str(tmp_path / "cube.npy"), "--mask", str(tmp_path / "mask.npy"), "--format", "npy"]) == 0
    meas = measure(torch.ones(1, 28, 16, 16), mask_3d(torch.ones(16, 16), 28))[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out" / "cube.npy"), _real_reference(model.eval(), meas), atol=1e-5)


def test_preview_renders_srgb_and_a_band_strip(tmp_path):
    model = glmha.create_model("mst_plus_plus", **MSTPP)
    checkpoint = glmha.save_model(model, tmp_path / "mstpp.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["reconstruct", str(tmp_path / "a.png"), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"),
                 "--preview", "--precision", "bf16"]) == 0
    cube = read_cube(tmp_path / "out" / "a.mat")
    with Image.open(tmp_path / "out" / "a_srgb.png") as srgb:
        assert srgb.size == (28, 20) and srgb.mode == "RGB"
        assert np.array_equal(np.asarray(srgb), glmha.io.images.to_uint8(torch.from_numpy(
            glmha.inference.reconstruction.render_srgb(cube, range(400, 701, 10)).transpose(2, 0, 1).copy())))
    with Image.open(tmp_path / "out" / "a_bands.png") as strip:
        assert strip.size[0] > 28 * 8


def test_render_srgb_follows_the_cie_observer():
    import colour

    # colour checker reflectances: the rendering is CIE 1931 XYZ under D65, to sRGB, relative to a perfect white
    wavelengths = np.arange(400, 701, 10)
    checker = colour.SDS_COLOURCHECKERS["ColorChecker N Ohta"]
    names = ["dark skin", "blue sky", "foliage"]
    spectra = [np.ones_like(wavelengths, dtype=float)] + [np.interp(wavelengths, checker[n].wavelengths, checker[n].values) for n in names]
    cube = np.stack(spectra, axis=1)[:, None, :]  # bands x 1 x 4: white first
    srgb = glmha.inference.reconstruction.render_srgb(cube, wavelengths)
    assert np.allclose(srgb[0, 0], 1, atol=1e-6)
    shape = colour.SpectralShape(400, 700, 10)
    for index, name in enumerate(names, start=1):
        with colour.utilities.suppress_warnings(colour_runtime_warnings=True):  # colour says how it aligned the tables
            xyz = colour.sd_to_XYZ(checker[name].copy().align(shape), illuminant=colour.SDS_ILLUMINANTS["D65"].copy().align(shape)) / 100
        expected = colour.XYZ_to_sRGB(xyz)
        assert np.abs(srgb[0, index] - np.clip(expected, 0, 1)).max() < 0.03, name


def test_preview_needs_known_wavelengths(tmp_path, capsys):
    model = glmha.create_model("mst_s", **MST)
    checkpoint = glmha.save_model(model, tmp_path / "mst.safetensors")
    np.save(tmp_path / "mask.npy", random_mask(16, 16).numpy())
    np.save(tmp_path / "meas.npy", np.zeros((16, 30), np.float32))
    assert main(["reconstruct", str(tmp_path / "meas.npy"), "--mask", str(tmp_path / "mask.npy"), "--checkpoint", str(checkpoint),
                 "--output", str(tmp_path / "out"), "--preview"]) == 1
    assert "--preview needs the band wavelengths, known for 31 (NTIRE 2022) and 28 (CASSI) bands, not 8" in error_line(capsys.readouterr().err)


def test_official_cassi_file_with_its_preset(tmp_path):
    model = glmha.create_model("mst_s")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "mst_s.pth")
    mask = random_mask(16, 16, seed=1)
    np.save(tmp_path / "mask.npy", mask.numpy())
    cube = torch.rand(1, 28, 16, 16)
    np.save(tmp_path / "meas.npy", measure(cube, mask_3d(mask, 28))[0].numpy())
    assert main(["reconstruct", str(tmp_path / "meas.npy"), "--mask", str(tmp_path / "mask.npy"), "--preset", "mst_s",
                 "--checkpoint", str(tmp_path / "mst_s.pth"), "--output", str(tmp_path / "out"), "--preview"]) == 0
    from glmha.data.synthetic_hsi import CASSI_WAVELENGTHS

    assert np.allclose(read_mat(tmp_path / "out" / "meas.mat", "bands"), [CASSI_WAVELENGTHS])
    assert (tmp_path / "out" / "meas_srgb.png").is_file() and (tmp_path / "out" / "meas_bands.png").is_file()
