"""Inference on the device: glmha.optimize (compiled, fp32 and bf16, eval and train mode), and
tiled glmha.restore with tile="auto" under a memory budget, including its out-of-memory retry."""
import logging

import pytest
import torch
from torch import nn

import glmha

from .conftest import GRADIENT_TOLERANCE, OUTPUT_TOLERANCE, exact_fp32, float64_copy, reference_inputs, relative_error, tiny_model

pytestmark = pytest.mark.cuda


def compile_backend(device: torch.device) -> str:
    # Inductor generates code for the device; on the CPU that takes a minute even for a tiny
    # Restormer (2 cores), so there the graphs are captured only (the same wrapper and graphs).
    return "inductor" if device.type == "cuda" else "eager"


# Each compile takes a while on a GPU too (about five block graphs): two cover both attentions and precisions.
@pytest.mark.parametrize("attention, precision", [("csa", "fp32"), ("glmha", "bf16")])
def test_optimize_on_device(attention, precision, device):
    model = tiny_model("restormer", attention).eval()
    reference = float64_copy(model)
    (x,) = reference_inputs(model, side=32)
    with torch.no_grad():
        expected = reference(x)
    fast = glmha.optimize(model.to(device), compile=True, autocast=None if precision == "fp32" else "bfloat16",
                          compile_backend=compile_backend(device))
    with exact_fp32():
        out = fast(x.to(device, torch.float32))
    assert out.device.type == device.type and out.dtype == torch.float32 and out.is_contiguous()
    error = relative_error(out, expected)
    assert error < OUTPUT_TOLERANCE[precision], f"output relative error {error:.2e}"


def test_optimized_training_step_on_device(device):
    """bf16 autocast + compiled blocks in train mode (what gpu_check.py's compiled training step runs)."""
    model = tiny_model("restormer", "glmha").train()
    reference = float64_copy(model)
    (x,) = reference_inputs(model, side=32)
    reference(x).sum().backward()
    fast = glmha.optimize(model.to(device), compile=True, autocast="bfloat16", compile_backend=compile_backend(device))
    fast.train()
    fast(x.to(device, torch.float32)).double().sum().backward()
    grads = torch.cat([p.grad.flatten().cpu() for p in model.parameters()])
    error = relative_error(grads, torch.cat([p.grad.flatten() for p in reference.parameters()]))
    assert error < GRADIENT_TOLERANCE["bf16"], f"gradient relative error {error:.2e}"


class Recorder(nn.Module):
    """Runs the model and records the input sizes; raises an out-of-memory error above ``oom_above`` pixels a side.

    The model is ``.module`` (as in glmha.optimize's wrapper), so restore() measures its activations.
    """

    def __init__(self, model: nn.Module, oom_above: int | None = None):
        super().__init__()
        self.module = model
        self.in_channels, self.out_channels = model.in_channels, model.out_channels
        self.size_multiple = model.size_multiple
        self.oom_above = oom_above
        self.sides: list[int] = []

    def forward(self, x):
        self.sides.append(max(x.shape[-2:]))
        if self.oom_above is not None and self.sides[-1] > self.oom_above:
            raise torch.OutOfMemoryError(f"simulated: {self.sides[-1]} pixels a side")
        return self.module(x)


def test_tile_auto_under_a_memory_budget(device):
    model = tiny_model("restormer", "glmha").eval()
    reference = float64_copy(model)
    recorder = Recorder(model.to(device))
    x = torch.rand(1, 3, 128, 192)  # the image stays on the CPU, the tiles run on the device

    def tiles_under(budget: int) -> str:
        recorder.sides.clear()
        try:
            with exact_fp32():
                tiles_under.out = glmha.restore(recorder, x, tile="auto", max_memory=budget, overlap=8)
        except glmha.InputError:  # the smallest tile does not fit
            return "too small"
        return "tiled" if len(recorder.sides) > 1 else "whole"

    # bisect for a budget under which restore() tiles: between "too small" and "whole"
    low, high = 2**20, 2**32
    assert tiles_under(low) == "too small" and tiles_under(high) == "whole"
    for _ in range(40):
        middle = (low + high) // 2
        verdict = tiles_under(middle)
        if verdict == "tiled":
            break
        low, high = (middle, high) if verdict == "too small" else (low, middle)
    assert verdict == "tiled", "restore() never tiled"
    tile, out = recorder.sides[0], tiles_under.out
    assert tile < 192 and tile % model.size_multiple == 0 and out.shape == (1, 3, 128, 192)
    expected = glmha.restore(reference, x.double(), tile=tile, overlap=8)
    assert (out.double() - expected).abs().max().item() < 1e-4


def test_out_of_memory_retries_with_smaller_tiles(device, caplog):
    """The retry logic, on any device: the model raises torch.OutOfMemoryError above 48 pixels a side."""
    model = tiny_model("restormer", "csa").eval()
    reference = float64_copy(model)
    recorder = Recorder(model.to(device), oom_above=48)
    x = torch.rand(1, 3, 80, 160)
    with caplog.at_level(logging.WARNING), exact_fp32():
        out = glmha.restore(recorder, x, tile="auto", max_memory=2**36, overlap=8)  # the budget says: whole
    assert recorder.sides[:2] == [160, 80] and set(recorder.sides[2:]) == {40}  # whole, a tile of 80, tiles of 40
    assert "out of memory with the whole image; retrying with tiles of 80" in caplog.text
    assert "out of memory with tiles of 80; retrying with tiles of 40" in caplog.text
    expected = glmha.restore(reference, x.double(), tile=40, overlap=8)
    assert (out.double() - expected).abs().max().item() < 1e-4


def test_genuine_cuda_out_of_memory_retries(device, caplog):
    """A real CUDA out-of-memory error: the process may use only 256 MiB more than it holds."""
    if device.type != "cuda":
        pytest.skip("a genuine out-of-memory error needs CUDA's allocator (the retry itself is tested above on every device)")
    model = tiny_model("restormer", "glmha").eval().to(device)
    recorder = Recorder(model)
    x = torch.rand(1, 3, 1024, 1024, device=device)  # the whole image needs about 1.5 GB (tiles of 256: about 0.1 GB)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved(device) + 256 * 2**20) / total, device)
    try:
        with caplog.at_level(logging.WARNING), exact_fp32():
            out = glmha.restore(recorder, x, tile="auto", max_memory=2**40, overlap=32)  # the budget says: whole
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    assert "CUDA out of memory with the whole image" in caplog.text
    tile = recorder.sides[-1]
    assert tile < 1024 and torch.isfinite(out).all()
    with exact_fp32():
        expected = glmha.restore(model, x, tile=tile, overlap=32)  # cuDNN may pick other kernels without the limit
    assert (out - expected).abs().max().item() < 1e-4
