"""The x8 self-ensemble against MST++'s official forward_ensemble, written out here as its definition."""
import itertools

import pytest
import torch

import glmha
from glmha import InputError


def forward_ensemble(x, forward_func, ensemble_mode="mean"):
    """MST++ predict_code/test.py: flip W, flip H, transpose; inverted in reverse order; mean or torch.median."""
    def transform(data, xflip, yflip, transpose, reverse=False):
        if not reverse:
            if xflip:
                data = torch.flip(data, [3])
            if yflip:
                data = torch.flip(data, [2])
            if transpose:
                data = torch.transpose(data, 2, 3)
        else:
            if transpose:
                data = torch.transpose(data, 2, 3)
            if yflip:
                data = torch.flip(data, [2])
            if xflip:
                data = torch.flip(data, [3])
        return data

    outputs = []
    for xflip, yflip, transpose in itertools.product((False, True), (False, True), (False, True)):
        outputs.append(transform(forward_func(transform(x.clone(), xflip, yflip, transpose)), xflip, yflip, transpose, reverse=True))
    if ensemble_mode == "mean":
        return torch.stack(outputs, 0).mean(0)
    return torch.stack(outputs, 0).median(0)[0]


@pytest.fixture
def mst_plus_plus():
    return glmha.create_model("mst_plus_plus", stage=1).eval()


@pytest.mark.parametrize("mode", ["mean", "median"])
def test_ensemble_is_the_official_forward_ensemble(mst_plus_plus, mode):
    x = torch.rand(1, 3, 24, 40)  # not square: the transposes change the shape the model sees
    with torch.no_grad():
        expected = forward_ensemble(x, mst_plus_plus, mode)
    torch.testing.assert_close(glmha.restore(mst_plus_plus, x, ensemble=mode), expected, rtol=0, atol=1e-6)


def test_median_of_eight_is_the_lower_middle_value():
    calls = iter(range(8))
    out = glmha.inference.ensemble.self_ensemble(lambda t: torch.full_like(t, float(next(calls))), torch.zeros(1, 1, 2, 2), "median")
    assert torch.all(out == 3.0)  # torch.median: the lower of 3 and 4, as the official script gets


def test_ensemble_with_tiles_and_precision_runs_each_transform_through_them():
    model = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).eval()
    x = torch.rand(1, 3, 40, 56)
    whole = glmha.restore(model, x, ensemble="mean")
    tiled = glmha.restore(model, x, ensemble="mean", tile=32, overlap=8)
    assert tiled.shape == x.shape and (tiled - whole).abs().max() < 0.5
    bf16 = glmha.restore(model, x, ensemble="mean", precision="bf16")
    assert bf16.dtype == x.dtype and (bf16 - whole).abs().max() < 0.1


def test_cassi_models_refuse_the_ensemble():
    mst = glmha.create_model("mst_s")
    with pytest.raises(InputError, match="self-ensemble is for image-to-image models"):
        glmha.restore(mst, torch.rand(1, 28, 16, 16), ensemble="mean")


def test_unknown_ensemble_is_refused(mst_plus_plus):
    with pytest.raises(InputError, match="ensemble must be one of"):
        glmha.restore(mst_plus_plus, torch.rand(1, 3, 16, 16), ensemble="max")
