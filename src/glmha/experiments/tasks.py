"""The types ``glmha demo`` and its report share: a built-in task and a trained model's results.

They live here, below both :mod:`glmha.experiments.demo` and :mod:`glmha.experiments.report`, so the imports
run one way: the demo imports the report, and both import these types.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class DemoTask:
    """One built-in task: an engine config (without the attention) and how to show its results."""

    name: str  # the engine's task name
    title: str
    kind: str  # "image" (image out) or "spectral" (cube out)
    config: dict  # engine config: task, seed, model, data (train, test), optimizer, scheduler, train
    metrics: dict[str, bool]  # metric name -> higher is better
    wavelengths: tuple[float, ...] = ()  # band centres of a spectral task, in nm

    def engine_task(self):
        from ..engine.tasks import get_task

        return get_task(self.config["task"])

    def model_inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        """The forward inputs of a (device) test batch, for profiling and the eigen-analysis."""
        task = self.engine_task()
        if hasattr(task, "inputs"):  # CASSI: measurement and mask simulated from the cube
            return tuple(task.inputs(batch))
        return (batch["input"],)

    def shown_input(self, batch: dict) -> torch.Tensor:
        """What the figures show as the input: the image, or the CASSI snapshot (the 2-D measurement)."""
        if "input" in batch:
            return batch["input"]
        from ..data.cassi import measure

        cube = batch["target"]
        mask3d = batch["mask"].to(cube.dtype).unsqueeze(1).expand_as(cube)
        meas = measure(cube, mask3d, self.config["task"].get("step", 2))
        return (meas / meas.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)).unsqueeze(1)


@dataclass
class ModelResult:
    """A trained model of one task and its numbers."""

    task: str
    attention: str
    params: int
    macs: int
    metrics: dict[str, float]
    latency_ms: float  # median over the repeats
    train_seconds: float
    iterations: int
    weights: str
    size: tuple[int, int]  # image size MACs and latency refer to
    latency_min_ms: float = float("nan")  # fastest and slowest of the repeats
    latency_max_ms: float = float("nan")
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    predictions: list[torch.Tensor] = field(default_factory=list, repr=False, compare=False)  # per test image, on the CPU
    per_image: list[dict[str, float]] = field(default_factory=list, repr=False, compare=False)  # metrics per test image
