import pytest
import torch

import glmha
from glmha import InputError


@pytest.fixture(scope="module")
def tiny():
    return glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).eval()


def test_wrong_channel_count_says_expected(tiny):
    with pytest.raises(InputError, match="has 4 channels but the model expects 3"):
        tiny(torch.rand(1, 4, 16, 16))


def test_not_four_d(tiny):
    with pytest.raises(InputError, match="must be a 4-D tensor.*got 3-D.*unsqueeze"):
        tiny(torch.rand(3, 16, 16))
    with pytest.raises(InputError, match="must be a torch.Tensor"):
        tiny([[1.0]])


def test_empty_spatial_size(tiny):
    with pytest.raises(InputError, match="is empty"):
        tiny(torch.rand(1, 3, 0, 16))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values(tiny, bad):
    x = torch.rand(1, 3, 16, 16)
    x[0, 1, 2, 3] = bad
    with pytest.raises(InputError, match="1 non-finite values"):
        tiny(x)


def test_integer_input(tiny):
    with pytest.raises(InputError, match="floating-point"):
        tiny(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_restore_checks_input_too(tiny):
    with pytest.raises(InputError, match="expects 3"):
        glmha.restore(tiny, torch.rand(1, 1, 30, 30))
