"""Every model and attention, forward and backward on the device in fp32, bf16 and fp16 autocast,
against the same model in float64 on the CPU (tolerances and their reasons: conftest.py)."""
import pytest
import torch

from .conftest import (
    ATTENTIONS,
    GRADIENT_TOLERANCE,
    OUTPUT_TOLERANCE,
    PRECISIONS,
    TINY,
    autocast,
    exact_fp32,
    float64_copy,
    reference_inputs,
    relative_error,
    tiny_model,
)

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("name", list(TINY))
def test_forward_and_backward_against_float64(name, attention, precision, device):
    model = tiny_model(name, attention)
    reference = float64_copy(model)
    inputs = reference_inputs(model)
    expected = reference(*inputs)
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (expected * weights).sum().backward()  # a loss whose gradients are of order 1 (no fp16 underflow)

    model = model.to(device)
    with exact_fp32():
        with autocast(device, precision):
            out = model(*(x.to(device, torch.float32) for x in inputs))
        assert out.device.type == device.type and torch.isfinite(out).all()
        (out.double() * weights.to(device)).sum().backward()

    out_error = relative_error(out, expected)
    grads = torch.cat([p.grad.flatten().double().cpu() for p in model.parameters()])
    expected_grads = torch.cat([p.grad.flatten() for p in reference.parameters()])
    grad_error = relative_error(grads, expected_grads)
    assert torch.isfinite(grads).all()
    assert out_error < OUTPUT_TOLERANCE[precision], f"output relative error {out_error:.2e}"
    assert grad_error < GRADIENT_TOLERANCE[precision], f"gradient relative error {grad_error:.2e}"
    assert all(p.grad is not None for p in model.parameters())
