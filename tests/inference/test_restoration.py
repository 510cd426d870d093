import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import glmha
from glmha import InputError
from glmha.inference.memory import ActivationCost, activation_cost, parse_memory
from glmha.inference.restoration import precision_context
from glmha.inference.tiling import pad_to_multiple, plan_tile


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


def test_tile_arguments_checked(tiny, caplog):
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(InputError, match="tile > overlap"):
        glmha.restore(tiny, x, tile=32, overlap=32)
    # a tile that is not a multiple of the model's is rounded down, with a message
    torch.testing.assert_close(glmha.restore(tiny, x, tile=30, overlap=4), glmha.restore(tiny, x, tile=24, overlap=4), rtol=0, atol=0)
    assert "tile 30 is not a multiple of the model's size multiple 8: using 24" in caplog.text


def test_tiling_bounds_the_size_the_model_sees(tiny):
    seen = []
    hook = tiny.patch_embed.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    try:
        glmha.restore(tiny, torch.rand(1, 3, 100, 70), tile=32, overlap=8)
    finally:
        hook.remove()
    assert len(seen) > 1 and max(max(s) for s in seen) <= 32


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("precision, bound", [("bf16", 0.05), ("fp16", 0.01)])
def test_reduced_precision_runs_on_cpu_close_to_fp32(tiny, precision, bound):
    x = torch.rand(1, 3, 24, 40)
    reference = glmha.restore(tiny, x)
    out = glmha.restore(tiny, x, precision=precision)
    assert out.dtype == torch.float32 and (out - reference).abs().max() < bound
    with precision_context(precision, "cpu"):
        assert torch.get_autocast_dtype("cpu") == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with pytest.raises(InputError, match="precision must be one of"):
        precision_context("int8", "cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_run(tiny, dtype):
    half = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).eval()
    half.load_state_dict(tiny.state_dict())
    half.to(dtype)
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        out = half(x.to(dtype))
    assert out.dtype == dtype and (out.float() - glmha.restore(tiny, x)).abs().max() < 0.05


# ----------------------------------------------------------------------------- memory and automatic tiles
def test_activation_cost_counts_the_tensors_alive_at_once():
    # conv1's output (8 channels) is alive while conv2's (2 channels) is made: peak 10 floats per pixel
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 2, 1))
    cost = activation_cost(model)
    assert cost.bytes_per_pixel == pytest.approx(10 * 4) and cost.fixed_bytes == pytest.approx(0)


def test_activation_cost_of_a_restormer_is_linear_in_pixels(tiny):
    cost = activation_cost(tiny)
    assert cost.bytes_per_pixel > 0
    bigger = activation_cost(tiny, sizes=(96, 160))
    assert bigger.bytes_per_pixel == pytest.approx(cost.bytes_per_pixel, rel=1e-6)
    assert not any(p.is_meta for p in tiny.parameters())  # measured on the meta device, the model untouched


def test_plan_tile():
    cost = ActivationCost(bytes_per_pixel=1000.0, fixed_bytes=0.0)
    margin = glmha.inference.tiling._MARGIN  # what a command holds besides the model's tensors
    assert plan_tile(100, 100, cost, 1e9, multiple=8) is None  # fits whole
    side = plan_tile(4000, 6000, cost, 2**30, multiple=8, overlap=32, image_bytes_per_pixel=28)
    assert side % 8 == 0 and 1.5 * 1000 * side**2 + margin + 28 * 4000 * 6000 <= 2**30
    assert 1.5 * 1000 * (side + 8) ** 2 + margin + 28 * 4000 * 6000 > 2**30  # the largest such tile
    wide = plan_tile(40, 100_000, cost, 2**30, multiple=8)  # shorter than a square tile: as tall as the image
    assert wide > 40 and 1.5 * 1000 * 40 * wide <= 2**30
    with pytest.raises(InputError, match="too small for a 4000x6000 image: the smallest tile"):
        plan_tile(4000, 6000, cost, 700 * 2**20, multiple=8, image_bytes_per_pixel=28)


def test_parse_memory():
    assert parse_memory("1GB") == 10**9 and parse_memory("512MiB") == 512 * 2**20 and parse_memory("2e9") == 2 * 10**9
    with pytest.raises(InputError, match="memory must be"):
        parse_memory("lots")


def test_auto_tile_runs_whole_when_it_fits(tiny):
    x = torch.rand(1, 3, 40, 56)
    torch.testing.assert_close(glmha.restore(tiny, x, tile="auto", max_memory=2**30), glmha.restore(tiny, x), rtol=0, atol=0)


def test_auto_tile_tiles_within_the_budget(tiny):
    x = torch.rand(1, 3, 200, 150)
    cost = activation_cost(tiny)
    budget = int(glmha.inference.tiling._MARGIN + 1.5 * cost.bytes_for(96 * 96) + 7 * 4 * 200 * 150)
    seen = []
    hook = tiny.patch_embed.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    try:
        out = glmha.restore(tiny, x, tile="auto", max_memory=budget, overlap=16, cost=cost)
    finally:
        hook.remove()
    assert len(seen) > 1 and max(max(s) for s in seen) == 96
    torch.testing.assert_close(out, glmha.restore(tiny, x, tile=96, overlap=16), rtol=0, atol=0)


class _OutOfMemoryAbove(torch.nn.Module):
    """Stands for a model on an accelerator that runs out of memory above ``limit`` pixels."""

    size_multiple = 8
    in_channels = out_channels = 3

    def __init__(self, limit: int):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.limit = limit

    def forward(self, x):
        if not x.is_meta and x.shape[-2] * x.shape[-1] > self.limit:  # the memory probe runs on the meta device
            raise torch.OutOfMemoryError("out of memory")
        return x * self.scale


def test_out_of_memory_retries_with_smaller_tiles(caplog):
    x = torch.rand(1, 3, 256, 256)
    out = glmha.restore(_OutOfMemoryAbove(64 * 64), x, tile="auto", max_memory=2**30, overlap=8)
    torch.testing.assert_close(out, x)
    assert "out of memory with the whole image; retrying with tiles of 128" in caplog.text
    assert "out of memory with tiles of 128; retrying with tiles of 64" in caplog.text


@pytest.mark.slow
def test_large_image_stays_within_max_memory(tmp_path):
    # glmha restore of a 3 x 2000 x 3000 image under --max-memory 1GB, in a fresh process: its peak resident
    # memory (the kernel's high-water mark, reset after the imports) grows by less than 1 GB.
    model = glmha.create_model("restormer", dim=4, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
    checkpoint = glmha.save_model(model, tmp_path / "tiny.safetensors")
    ramp = np.linspace(0, 255, 3000, dtype=np.float32)[None, :, None] * np.ones((2000, 1, 3), np.float32)
    Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / "big.png", compress_level=1)
    script = textwrap.dedent(f"""
        import cv2, tqdm  # the command's own imports happen before the measurement, as they did at start-up
        import glmha.cli, glmha.cli.restore, glmha.inference.restoration, glmha.io.images
        glmha.cli.build_parser()
        def status(key):
            return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
        open("/proc/self/clear_refs", "w").write("5")
        before = status("VmRSS:")
        code = glmha.cli.main(["restore", {str(tmp_path / "big.png")!r}, "--checkpoint", {str(checkpoint)!r},
                               "--output", {str(tmp_path / "out")!r}, "--max-memory", "1GB"])
        print("PEAK", status("VmHWM:") - before, code)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    peak, code = next(line.split()[1:] for line in result.stdout.splitlines() if line.startswith("PEAK"))
    assert code == "0", result.stderr[-2000:]
    assert int(peak) < 10**9, f"peak {int(peak) / 2**20:.0f} MiB"
    with Image.open(tmp_path / "out" / "big.png") as image:
        assert image.size == (3000, 2000)
