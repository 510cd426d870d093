"""The official golden outputs (tests/models/*) reproduced on the device, in float32 with TF32 off.

The Restormer fixtures ship with the tests (tests/data/golden); the MST ones are read from the
shared reference folder beside the checkout and skipped when it is absent, as in tests/models.
"""
import pytest
import torch

import glmha
from tests.conftest import DATA, SHARED_REFERENCE, load_golden

from .conftest import GOLDEN_TOLERANCE, exact_fp32

pytestmark = pytest.mark.cuda

# fixture file -> (model name, whether the constructor arguments come from the file's metadata)
GOLDEN = {
    "restormer_tiny": ("restormer", DATA / "golden", True),
    "restormer_tiny_biasfree_dualpixel": ("restormer", DATA / "golden", True),
    "mst_plus_plus": ("mst_plus_plus", SHARED_REFERENCE / "golden", False),  # the official sizes: our defaults
    "mst_s": ("mst_s", SHARED_REFERENCE / "golden", False),
    "mst_s_real": ("mst_s_real", SHARED_REFERENCE / "golden", False),
}


@pytest.mark.parametrize("fixture", list(GOLDEN))
def test_golden_output_on_device(fixture, device):
    name, folder, use_kwargs = GOLDEN[fixture]
    path = folder / f"{fixture}.safetensors"
    if not path.exists():
        pytest.skip(f"{path} not available")
    kwargs, state, inputs, expected = load_golden(path)
    model = glmha.create_model(name, **(kwargs if use_kwargs else {})).eval()
    model.load_state_dict(state, strict=True)
    model = model.to(device)
    with torch.no_grad(), exact_fp32():
        out = model(*(x.to(device) for x in inputs))
    assert out.device.type == device.type and out.shape == expected.shape
    error = (out.cpu() - expected).abs().max().item()
    assert error < GOLDEN_TOLERANCE[device.type], f"max abs error {error:.2e}"
