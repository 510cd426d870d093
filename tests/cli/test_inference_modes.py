"""--ensemble, --tile-mode and --read-depth on the commands: the library's results, refusals in one line."""
import cv2
import numpy as np
import pytest
import torch

import glmha
from glmha.cli import main
from glmha.io.images import read_image


@pytest.fixture
def setup(tmp_path):
    model = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).eval()
    checkpoint = glmha.save_model(model, tmp_path / "m.safetensors")
    cv2.imwrite(str(tmp_path / "x.png"), (np.random.default_rng(0).random((37, 53, 3)) * 65535).astype(np.uint16))
    return model, checkpoint, tmp_path


@pytest.mark.parametrize("extra, kwargs", [
    (["--ensemble", "mean"], {"ensemble": "mean"}),
    (["--tile", "16", "--overlap", "4", "--tile-mode", "official"], {"tile": 16, "overlap": 4, "tile_mode": "official"}),
])
def test_restore_modes_write_what_glmha_restore_computes(setup, extra, kwargs):
    model, checkpoint, root = setup
    assert main(["restore", str(root / "x.png"), "--checkpoint", str(checkpoint), "--output", str(root / "out"), *extra]) == 0
    expected = glmha.restore(model, read_image(root / "x.png"), **kwargs)
    written = read_image(root / "out" / "x.png")
    assert (written - expected.clamp(0, 1)).abs().max() <= 0.5 / 65535 + 1e-6


def test_read_depth_8_reads_as_the_official_scripts(setup):
    model, checkpoint, root = setup
    assert main(["restore", str(root / "x.png"), "--checkpoint", str(checkpoint), "--output", str(root / "o8"),
                 "--read-depth", "8", "--bit-depth", "8"]) == 0
    official = torch.from_numpy(np.float32(cv2.cvtColor(cv2.imread(str(root / "x.png")), cv2.COLOR_BGR2RGB)) / 255.0)
    expected = glmha.restore(model, official.permute(2, 0, 1)[None])
    assert (read_image(root / "o8" / "x.png") - expected.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6


def test_cassi_reconstruct_refuses_the_ensemble(tmp_path, capsys):
    from glmha.io.mat import write_mat

    model = glmha.create_model("mst_s")
    checkpoint = glmha.save_model(model, tmp_path / "mst.safetensors")
    write_mat(tmp_path / "mask.mat", {"mask": np.ones((16, 16))})
    write_mat(tmp_path / "meas.mat", {"meas": np.ones((16, 16 + 54))})
    code = main(["reconstruct", str(tmp_path / "meas.mat"), "--mask", str(tmp_path / "mask.mat"), "--checkpoint", str(checkpoint),
                 "--output", str(tmp_path / "out"), "--ensemble", "mean"])
    err = capsys.readouterr().err
    assert code == 1 and "--ensemble is for RGB inputs" in err and len(err.strip().splitlines()) == 1
