"""Tiling: the official Restormer demo.py tiling, written out here as its definition, against ours."""
import pytest
import torch
import torch.nn.functional as F

import glmha
from glmha import InputError


@pytest.fixture
def tiny():
    return glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).eval()


def demo_tiling(model, image, tile, overlap, multiple=8):
    """The official demo.py: pad to a multiple of 8 (reflect), square tiles of min(tile, H, W),
    stride tile - overlap, outputs summed and divided by how many tiles cover a pixel, then cropped."""
    height, width = image.shape[2], image.shape[3]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    x = F.pad(image, (0, pad_w, 0, pad_h), "reflect")
    b, c, h, w = x.shape
    tile = min(tile, h, w)
    assert tile % 8 == 0
    stride = tile - overlap
    h_idx_list = list(range(0, h - tile, stride)) + [h - tile]
    w_idx_list = list(range(0, w - tile, stride)) + [w - tile]
    E = torch.zeros(b, c, h, w).type_as(x)
    W = torch.zeros_like(E)
    for h_idx in h_idx_list:
        for w_idx in w_idx_list:
            out_patch = model(x[..., h_idx:h_idx + tile, w_idx:w_idx + tile])
            E[..., h_idx:h_idx + tile, w_idx:w_idx + tile].add_(out_patch)
            W[..., h_idx:h_idx + tile, w_idx:w_idx + tile].add_(torch.ones_like(out_patch))
    return E.div_(W)[:, :, :height, :width]


@pytest.mark.parametrize("size, tile, overlap", [((37, 53), 16, 4), ((40, 24), 32, 8), ((61, 70), 24, 0), ((20, 90), 64, 16)])
def test_official_tile_mode_is_the_demo_tiling(tiny, size, tile, overlap):
    image = torch.rand(1, 3, *size)
    with torch.no_grad():
        expected = demo_tiling(tiny, image, tile, overlap)
    ours = glmha.restore(tiny, image, tile=tile, overlap=overlap, tile_mode="official")
    assert ours.shape == image.shape
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_official_and_blend_modes_differ_only_at_the_seams(tiny):
    image = torch.rand(1, 3, 48, 64)
    whole = glmha.restore(tiny, image)
    for mode in ("blend", "official"):
        tiled = glmha.restore(tiny, image, tile=32, overlap=8, tile_mode=mode)
        assert (tiled - whole).abs().max() < 0.5  # same model, tiles see less context near their edges


def test_unknown_tile_mode_is_refused(tiny):
    with pytest.raises(InputError, match="tile_mode must be one of"):
        glmha.restore(tiny, torch.rand(1, 3, 16, 16), tile=8, tile_mode="square")


def test_official_tiles_need_a_tile_larger_than_the_overlap(tiny):
    with pytest.raises(InputError, match="tile > overlap"):
        glmha.restore(tiny, torch.rand(1, 3, 16, 64), tile=32, overlap=16, tile_mode="official")  # capped at 16
