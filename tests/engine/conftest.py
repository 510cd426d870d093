"""Shared helpers of the engine tests: the configs folder and quiet training overrides."""
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUIET = ["train.progress=false", "train.tensorboard=false"]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny models run faster on one thread, and the tests share the CPU.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
