"""ONNX and TorchScript exports take any height and width and compute what the PyTorch model computes."""
import warnings

import pytest
import torch

import glmha
from glmha.cli import main
from glmha.inference.export import export_model, export_sizes

MODELS = {
    "restormer": ("restormer", {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}),
    "mst_plus_plus": ("mst_plus_plus", {"stage": 1}),
    "mst": ("mst_s", {"num_blocks": [1, 1, 1]}),  # CASSI: two inputs, H and W multiples of 4
}
# Restormer pads 37 x 91 to 40 x 96 inside the file; the CASSI model takes its sizes as they are.
SIZES = {"restormer": ((64, 64), (37, 91)), "mst_plus_plus": ((64, 64), (37, 91)), "mst": ((64, 64), (48, 80))}


def _model(key, attention):
    name, kwargs = MODELS[key]
    torch.manual_seed(0)
    return glmha.create_model(name, attention=attention, **kwargs).eval()


@pytest.mark.parametrize("attention", ["csa", "glmha"])
@pytest.mark.parametrize("key", sorted(MODELS))
def test_torchscript_matches_pytorch_at_two_sizes(tmp_path, key, attention):
    result = export_model(_model(key, attention), tmp_path / "m.pt", "torchscript", sizes=SIZES[key])
    assert result.checked_sizes == list(SIZES[key]) and result.max_abs_diff < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["csa", "glmha"])
@pytest.mark.parametrize("key", sorted(MODELS))
def test_onnx_runs_in_onnxruntime_and_matches_pytorch_at_two_sizes(tmp_path, key, attention):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _model(key, attention)
    result = export_model(model, tmp_path / "m.onnx", "onnx", sizes=SIZES[key])
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5  # measured: 1e-7 to 1e-6
    # and at a third size, through the file alone
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    inputs = [torch.rand(1, 28, 32, 40), (torch.rand(1, 28, 32, 94) > 0.5).float()] if key == "mst" else [torch.rand(1, 3, 19, 45)]
    got = session.run(None, {name: t.numpy() for name, t in zip(["x", "mask"], inputs)})[0]
    with torch.no_grad():
        expected = glmha.restore(model, inputs[0]).clamp(0, 1) if key != "mst" else model(*inputs)  # as the commands write them
    assert got.shape == tuple(expected.shape) and abs(got - expected.numpy()).max() < 1e-5


def test_export_sizes_check_a_second_size_and_refuse_what_the_model_cannot_take():
    # Restormer pads: the second size is off its multiple of 8; the CASSI MST takes multiples of 4 only
    assert export_sizes(_model("restormer", "csa"), 64, 64) == ((64, 64), (77, 93))
    assert export_sizes(_model("mst", "csa"), 64, 64) == ((64, 64), (76, 84))
    with pytest.raises(ValueError, match="size must be at least 8"):
        export_sizes(_model("restormer", "csa"), 4, 64)
    with pytest.raises(ValueError, match=r"multiple of 4 for CASSI models\), got 64 66"):
        export_sizes(_model("mst", "csa"), 64, 66)


def test_export_command(tmp_path, capsys):
    checkpoint = glmha.save_model(_model("restormer", "glmha"), tmp_path / "m.safetensors")
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--output", str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr().out
    assert "checked against PyTorch at 64x64 and 77x93: max abs difference" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in PyTorch; its files still load
        loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.rand(1, 3, 21, 30)
    # the file clips as glmha restore writes its PNGs
    torch.testing.assert_close(loaded(x), glmha.restore(glmha.load_model(checkpoint), x).clamp(0, 1), rtol=0, atol=1e-5)
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "m4.pt"), "--size", "4", "4"]) == 1
    assert "--size must be at least 8" in capsys.readouterr().err
