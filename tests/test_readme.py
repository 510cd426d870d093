"""The README's Python examples run as printed, on the files they name.

The files are made here in their real formats (an official-layout release file with random
weights, a training run's folder, a ``glmha rank`` ranks file). Only image sizes are made
smaller, so that the full-size model runs in seconds on a CPU: the code is otherwise the
README's, line for line.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import glmha

README = Path(__file__).resolve().parents[1] / "README.md"
# Image sizes of the examples -> sizes that keep the full-size Restormer within seconds on a CPU.
SMALLER = {"2160, 3840": "72, 120", "500, 333": "50, 33", "256, 256": "32, 32"}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture
def release_files(tmp_path, monkeypatch):
    """The files the examples read, in the current folder: deraining.pth, a run, ranks.json."""
    monkeypatch.chdir(tmp_path)
    official = glmha.create_model("restormer", attention="csa")  # the deraining release's architecture
    torch.save({"params": official.state_dict()}, "deraining.pth")  # the release files' layout
    run = Path("runs/restormer_deraining_glmha")
    run.mkdir(parents=True)
    glmha.save_model(glmha.create_model("restormer", attention="glmha", dim=8, num_blocks=[1, 1, 1, 1],
                                        num_refinement_blocks=1, heads=[1, 1, 2, 2]), run / "model.safetensors")
    ranks = {name: module.project_out.in_channels // 2  # half of each layer's channels: a multiple of its heads
             for name, module in official.named_modules() if type(module).__name__ == "MDTA"}
    assert ranks
    Path("glmha-rank").mkdir()
    Path("glmha-rank/ranks.json").write_text(json.dumps({"ranks": ranks}))
    return tmp_path


def test_readme_has_the_python_examples():
    blocks = python_blocks()
    assert len(blocks) >= 2 and all(size in "".join(blocks) for size in SMALLER)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(index, release_files, capsys):
    code = python_blocks()[index]
    for size, smaller in SMALLER.items():
        code = code.replace(size, smaller)
    namespace: dict = {}
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
    if "cube" in namespace:
        assert tuple(namespace["cube"].shape) == (1, 31, 64, 64)
    if "restored" in namespace:
        assert torch.isfinite(namespace["restored"]).all()


def test_readme_says_what_swap_attention_does_by_default():
    """The README's words on swap_attention agree with it: init="random" by default, in place, the same model returned."""
    import inspect

    text = " ".join(README.read_text().split())
    assert inspect.signature(glmha.swap_attention).parameters["init"].default == "random"
    assert 'replaces the attention of any model built here in place (and returns that same model): by default (`init="random"`)' in text
    assert "with an SVD warm start" not in text.split("## Quick start")[0]  # the old claim, as if SVD were the default
    model = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2])
    before = {name for name, module in model.named_modules() if type(module).__name__ == "MDTA"}
    assert before and glmha.swap_attention(model, "glmha") is model
    assert {name for name, module in model.named_modules() if type(module).__name__ == "GLMHA"} == before
