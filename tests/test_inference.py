import pytest
import torch

import glmha
from glmha import InputError
from glmha.inference import pad_to_multiple


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).eval()


@pytest.mark.parametrize("size", [(17, 29), (8, 8), (3, 5), (33, 40)])
def test_any_size_returns_input_size(tiny, size):
    x = torch.rand(2, 3, *size)
    out = glmha.restore(tiny, x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_padding_is_reflect_and_cropped_back(tiny):
    x = torch.rand(1, 3, 13, 21)
    padded = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (16, 24)
    torch.testing.assert_close(padded[..., 13, :21], x[..., 11, :])  # reflect, not zeros
    with torch.no_grad():
        expected = tiny(padded)[..., :13, :21]
    torch.testing.assert_close(glmha.restore(tiny, x), expected)


def test_single_tile_equals_untiled(tiny):
    x = torch.rand(1, 3, 40, 56)
    torch.testing.assert_close(glmha.restore(tiny, x, tile=64, overlap=16), glmha.restore(tiny, x), atol=0, rtol=0)


def test_tiled_close_to_untiled(tiny):
    # Channel attention pools over the whole input, so tiles never match exactly; the overlap
    # blends the seams. Measured on this tiny random model, 96x120 image with values in [0, 1]:
    # tile 48/overlap 16: max 0.035, mean 0.0035; tile 64/overlap 32: max 0.019, mean 0.0017.
    x = torch.rand(1, 3, 96, 120)
    full = glmha.restore(tiny, x)
    for tile, overlap, max_bound, mean_bound in [(48, 16, 0.05, 0.005), (64, 32, 0.03, 0.0025)]:
        diff = (glmha.restore(tiny, x, tile=tile, overlap=overlap) - full).abs()
        assert diff.max() < max_bound and diff.mean() < mean_bound


def test_tile_arguments_checked(tiny):
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(InputError, match="tile > overlap"):
        glmha.restore(tiny, x, tile=32, overlap=32)
    with pytest.raises(InputError, match="multiple of the model's size multiple"):
        glmha.restore(tiny, x, tile=30, overlap=4)


def test_tiling_bounds_the_size_the_model_sees(tiny):
    seen = []
    hook = tiny.patch_embed.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    try:
        glmha.restore(tiny, torch.rand(1, 3, 100, 70), tile=32, overlap=8)
    finally:
        hook.remove()
    assert len(seen) > 1 and max(max(s) for s in seen) <= 32
