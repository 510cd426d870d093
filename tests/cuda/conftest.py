"""The CUDA tests (``pytest -m cuda``): the device fixture, tiny models, tolerances.

Every test here is marked ``cuda`` and takes the ``device`` fixture: ``cuda`` normally (the
test is skipped when PyTorch sees no GPU), ``cpu`` when the environment variable
``GLMHA_TEST_DEVICE=cpu`` is set, so that ``GLMHA_TEST_DEVICE=cpu pytest -m cuda tests/cuda``
runs every path on the CPU (benchmarks/gpu_check.py does, and tests/benchmarks/test_gpu_check.py
runs that in CI). Sizes are tiny: each test takes seconds on a CPU.
"""
from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch

import glmha

DEVICE_ENV = "GLMHA_TEST_DEVICE"
# cuBLAS is deterministic only with a fixed workspace; read when its first handle is created,
# so set before any test runs (the exact-resume test trains with train.deterministic=true).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# Tiny widths of every model family (the official sizes are benchmarked by gpu_check.py).
TINY = {
    "restormer": {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2]},
    "mst_plus_plus": {"stage": 1},  # MST++ stages are 31 channels wide by construction
    "mst_s": {"dim": 8, "stage": 1, "num_blocks": [1, 1]},
}
ATTENTIONS = ["csa", "glmha"]
PRECISIONS = ["fp32", "bf16", "fp16"]
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Relative error, ||y - y_ref|| / ||y_ref|| over all elements, against the same model in float64
# on the CPU: of the output, and of all parameter gradients taken as one vector. They are set to
# catch a wrong kernel or a broken cast on the device (errors of order 1), with room for rounding:
# - fp32 (TF32 off, see ``exact_fp32``): float32 rounding, ~1e-7 measured on the CPU; reductions
#   run in another order on a GPU, so 100x that for outputs and the 10x larger gradient errors.
# - bf16 autocast: 8 significant bits (eps 3.9e-3) in convolutions and matrix products, norms
#   and softmax in float32; outputs measured up to 4.1e-3 and gradients up to 7.3e-2 on the CPU
#   (6 seeds x every model and attention), so about 3x to 8x that.
# - fp16 autocast: 11 significant bits (eps 4.9e-4); measured up to 5.2e-4 (outputs) and 2.0e-2
#   (gradients), so about 3x to 8x that.
OUTPUT_TOLERANCE = {"fp32": 1e-5, "bf16": 3e-2, "fp16": 4e-3}
GRADIENT_TOLERANCE = {"fp32": 1e-4, "bf16": 0.2, "fp16": 0.06}
# Golden outputs (max abs against the official code's float32 output, values of order 1): the
# model tests use 1e-5 on the CPU; a GPU sums in another order, so 1e-4 there (TF32 off).
GOLDEN_TOLERANCE = {"cpu": 1e-5, "cuda": 1e-4}


@pytest.fixture(scope="session")
def device() -> torch.device:
    name = os.environ.get(DEVICE_ENV, "cuda").strip().lower()
    if name not in ("cuda", "cpu"):
        raise pytest.UsageError(f"{DEVICE_ENV} must be cuda or cpu, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"needs CUDA (set {DEVICE_ENV}=cpu to run these tests on the CPU)")
    return torch.device(name)


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # Tiny models run faster on one thread on a shared CPU; nothing changes on a GPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def exact_fp32():
    """TF32 off: float32 convolutions and matrix products in full float32 (cuDNN allows TF32 by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def autocast(device: torch.device, precision: str):
    dtype = AUTOCAST[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def tiny_model(name: str, attention: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return glmha.create_model(name, attention=attention, **TINY[name])


def reference_inputs(model: torch.nn.Module, side: int = 16, seed: int = 0) -> list[torch.Tensor]:
    """Float64 CPU inputs of the model's example shapes, uniform in [0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(t.shape, generator=generator, dtype=torch.float64) for t in model.example_inputs(side, side)]


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    return ((value - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).cpu().double()
