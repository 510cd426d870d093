"""``glmha export``: the file gives what ``glmha reconstruct`` / ``restore`` write (the clip to [0, 1] included)
and the command says what the file takes."""
import warnings

import numpy as np
import torch
from PIL import Image

import glmha
from glmha.cli import main
from glmha.data.hyperspectral import read_rgb
from glmha.inference.export import clips_output, input_convention


def test_torchscript_of_mst_plus_plus_equals_reconstruct(tmp_path, capsys):
    torch.manual_seed(0)
    model = glmha.create_model("mst_plus_plus", stage=1).eval()
    checkpoint = glmha.save_model(model, tmp_path / "mst_plus_plus.safetensors")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)).save(photo)  # off the multiple of 8

    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--output", str(tmp_path / "m.pt")]) == 0
    printed = capsys.readouterr().out
    assert ("input x: float32 N x 3 x H x W (NCHW), RGB, each image min-max normalised to [0, 1] ((x - min) / (max - min), "
            "as the official MST++ test code); any H and W (reflect-padded inside to a multiple of 8, the output cropped back); "
            "output float32 N x 31 x H x W, clipped to [0, 1]") in printed
    assert main(["reconstruct", str(photo), "--checkpoint", str(checkpoint), "--output", str(tmp_path / "cubes"), "--format", "npy"]) == 0
    cube = np.load(tmp_path / "cubes" / "photo.npy")  # bands x H x W, as written

    x = torch.from_numpy(read_rgb(photo, normalize="minmax", read_depth="native"))[None]  # the stated input convention
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in PyTorch; its files still load
        exported = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        got = exported(x)[0].numpy()
        unclipped = glmha.restore(model, x)[0].numpy()
    assert unclipped.min() < 0 or unclipped.max() > 1  # the clip matters for this model
    assert got.shape == cube.shape and np.abs(got - cube).max() < 1e-5


def test_input_conventions_and_clips():
    tiny = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}
    grey = glmha.create_model("restormer", inp_channels=1, out_channels=1, **tiny)
    assert clips_output(grey)
    assert input_convention(grey).startswith("input x: float32 N x 1 x H x W (NCHW), grey, values in [0, 1] (8-bit / 255, 16-bit / 65535)")
    dual = glmha.create_model("restormer", inp_channels=6, dual_pixel_task=True, **tiny)
    assert "N x 6 x H x W (NCHW), the left then the right view, RGB each (dual pixel)" in input_convention(dual)
    cassi = glmha.create_model("mst_s", num_blocks=[1, 1, 1])
    assert not clips_output(cassi)  # reconstruct keeps CASSI cubes as they come
    assert input_convention(cassi).endswith("H and W multiples of 4, no padding inside; output float32 N x 28 x H x W")
