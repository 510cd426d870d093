"""Shared helpers of the engine tests: the configs folder, quiet training overrides, the smoke deraining config."""
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUIET = ["train.progress=false", "train.tensorboard=false"]
DERAIN = CONFIGS / "restormer" / "deraining_csa.yaml"


def same_weights(a, b, atol=0.0):
    """Assert that two safetensors files hold the same tensors (exactly, or within ``atol``)."""
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=k)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny models run faster on one thread, and the tests share the CPU.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
