"""Shared fixtures: the golden files of the official implementations and the layouts."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

DATA = Path(__file__).parent / "data"
# The full reference folder beside the checkout (large fixtures are read from there).
SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def official_layouts() -> dict:
    return json.loads((DATA / "official_state_dicts.json").read_text())


def parse_constructor(call: str) -> tuple[str, dict]:
    """'Restormer(dim=8, num_blocks=[1,1,1,2])' -> ('Restormer', {'dim': 8, ...}).

    Text after the call (a comment, or '; inputs: ...' notes in the golden metadata) is ignored.
    """
    match = re.match(r"\s*(\w+)\(([^()]*)\)", call)
    assert match, call
    tree = ast.parse(f"f({match.group(2)})", mode="eval").body
    return match.group(1), {kw.arg: ast.literal_eval(kw.value) for kw in tree.keywords}


def load_golden(path: Path) -> tuple[dict, dict[str, torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Return (constructor kwargs, state dict, inputs, expected output) of a golden file."""
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        constructor = f.metadata()["constructor"]
    state = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
    n_inputs = sum(k.startswith("input.") for k in tensors)
    inputs = [tensors[f"input.{i}"] for i in range(n_inputs)]
    return parse_constructor(constructor)[1], state, inputs, tensors["output"]
