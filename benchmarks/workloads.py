"""What the benchmarks run: settings, the forward and training-step calls, MAC counts, specs.

Shared by ``benchmarks/bench.py`` and ``benchmarks/gpu_check.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

import glmha
from timing import Clock


@dataclass
class Settings:
    device: torch.device
    autocast: torch.dtype | None
    clock: Clock
    warmup: int
    repeats: int
    compile: bool
    compile_scope: str = "blocks"


def autocast_context(settings: Settings):
    if settings.autocast is None:
        return torch.autocast(settings.device.type, enabled=False)
    return torch.autocast(settings.device.type, dtype=settings.autocast)


def forward_fn(model: torch.nn.Module, inputs: tuple, settings: Settings) -> Callable[[], object]:
    """The plain eager forward: ``torch.no_grad`` (what a user writes), autocast if asked."""

    def run():
        with torch.no_grad(), autocast_context(settings):
            return model(*inputs)

    return run


def train_step_fn(model: torch.nn.Module, inputs: tuple, settings: Settings) -> Callable[[], object]:
    """One AdamW step on the mean of the output (forward, backward, update)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def run():
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(settings):
            loss = model(*inputs).float().mean()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return run


def count_macs(build: Callable[[], torch.nn.Module], shape_inputs: Callable[[torch.nn.Module], tuple]) -> int:
    """MACs of one forward, counted on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = build()
        inputs = shape_inputs(model)
    return glmha.profile(model, *inputs).macs


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected a shape CxHxW such as 3x256x256, got {text!r}")
    c, h, w = (int(p) for p in parts)
    return c, h, w


def parse_model_spec(spec: str) -> tuple[str, tuple[int, int, int]]:
    if "@" not in spec:
        raise ValueError(f"expected NAME@CxHxW such as restormer@3x256x256, got {spec!r}")
    name, shape = spec.split("@", 1)
    return name, parse_shape(shape)


def layer_heads(channels: int) -> int:
    # Restormer's levels: 48 channels / 1 head, 96 / 2, 192 / 4, 384 / 8.
    return max(1, channels // 48)
