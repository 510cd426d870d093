import pytest
import torch

from glmha.engine.tasks import LOSSES


def test_relative_l1_divides_by_the_target_with_a_floor():
    pred = torch.tensor([0.30, 0.10, -0.02, 0.50])
    target = torch.tensor([0.20, 0.0001, -0.04, 0.50])
    # |0.1| / 0.2, |0.0999| / 0.001 (floor), |0.02| / 0.04 (magnitude of a negative target), 0
    expected = (0.5 + 99.9 + 0.5 + 0.0) / 4
    assert float(LOSSES["relative_l1"](pred, target)) == pytest.approx(expected, rel=1e-6)


def test_relative_l1_gradient_flows_to_the_prediction_only():
    pred = torch.tensor([0.3, 0.1], requires_grad=True)
    target = torch.tensor([0.2, 0.4], requires_grad=True)
    LOSSES["relative_l1"](pred, target).backward()
    assert torch.allclose(pred.grad, torch.tensor([1 / 0.2, -1 / 0.4]) / 2)
    # the denominator is a weight, not something to push: only the numerator's sign term reaches the target
    assert torch.allclose(target.grad, torch.tensor([-1 / 0.2, 1 / 0.4]) / 2)


def test_mrae_is_the_official_relative_error():
    pred, target = torch.tensor([0.3, 0.1]), torch.tensor([0.2, 0.4])
    assert float(LOSSES["mrae"](pred, target)) == pytest.approx((0.1 / 0.2 + 0.3 / 0.4) / 2)
