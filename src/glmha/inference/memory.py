"""How much memory a model's forward needs, and how much there is to give it.

:func:`activation_cost` tracks every tensor the forward allocates on the meta device (no
memory, no arithmetic), so the per-pixel number is the model's, not a guess;
:func:`default_memory_budget` is a safe share of what the device has free;
:func:`tile_memory_limit` the CPU's cap on one forward, for speed.
"""
from __future__ import annotations

import math
import os
import re
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..validation import InputError


@dataclass(frozen=True)
class ActivationCost:
    """Peak memory of one forward of a single image: ``fixed_bytes + bytes_per_pixel x pixels``."""

    bytes_per_pixel: float
    fixed_bytes: float

    def bytes_for(self, pixels: int, batch: int = 1) -> float:
        return batch * (self.fixed_bytes + self.bytes_per_pixel * pixels)


class _PeakTensorMemory(TorchDispatchMode):
    """Counts the bytes of the tensors that operators allocate and are still alive; keeps the peak."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.refs: dict[int, weakref.ref] = {}
        self.current = self.peak = 0

    def _freed(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)
        self.refs.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self.live:  # views and in-place results share a storage counted once
                    self.live[key] = storage.nbytes()
                    self.current += self.live[key]
                    self.peak = max(self.peak, self.current)
                    self.refs[key] = weakref.ref(storage, lambda _ref, key=key: self._freed(key))
        return out


def activation_cost(model: nn.Module, sizes: tuple[int, int] = (64, 128)) -> ActivationCost:
    """Measure the peak memory of ``model``'s forward per pixel, for a single-input image model.

    Runs the forward at two square sizes on the meta device (parameters replaced by meta
    tensors of the same shapes, so nothing is computed or allocated) while counting the bytes
    of every tensor the forward creates and keeping the peak of those alive at once; the two
    peaks give the per-pixel slope and the fixed part. Float32, no autograd (inference).
    """
    module = getattr(model, "module", model)  # glmha.optimize's wrapper: measure the model itself
    multiple = int(getattr(module, "size_multiple", 1))
    channels = int(getattr(module, "in_channels", 3))
    meta = {name: torch.empty_like(t, device="meta") for name, t in [*module.named_parameters(), *module.named_buffers()]}
    peaks = []
    sides = [math.ceil(side / multiple) * multiple for side in sizes]
    for side in sides:
        x = torch.zeros(1, channels, side, side, device="meta")
        with torch.inference_mode(), _PeakTensorMemory() as tracker:
            torch.func.functional_call(module, meta, (x,))
        peaks.append(tracker.peak)
    per_pixel = (peaks[1] - peaks[0]) / (sides[1] ** 2 - sides[0] ** 2)
    return ActivationCost(bytes_per_pixel=per_pixel, fixed_bytes=max(0.0, peaks[0] - per_pixel * sides[0] ** 2))


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_memory(text: str) -> int:
    """``"1GB"`` -> 10**9, ``"512MiB"`` -> 512 * 2**20, ``"2e9"`` -> 2 * 10**9 bytes."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in _UNITS:
        raise InputError(f"memory must be a number of bytes with an optional unit (KB, MB, GB, MiB, GiB, ...), got {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value <= 0:
        raise InputError(f"memory must be positive, got {text!r}")
    return int(value)


# On the CPU a tiled run is fastest with small tiles: large forwards spend their time in the
# kernel (page faults of fresh activations; more system than user time). Measured on 2 cores,
# both a width-16 Restormer at 1500x2000 and the official one at 512x768 ran fastest with one
# forward under 128-256 MiB (17-20 s and 49-52 s) and slowest whole or under 1 GiB (36-44 s,
# 57-66 s). So on the CPU one forward (with tiling's safety factor) is kept under this, whatever
# the budget; on GPUs the budget alone decides.
# measured: docs/benchmarks.md ("Tile size on the CPU", benchmarks/tile_sweep.py)
CPU_TILE_MEMORY = 256 * 2**20


def tile_memory_limit(device: str | torch.device) -> int | None:
    """The most one forward of ``tile="auto"`` may take for speed: :data:`CPU_TILE_MEMORY` on the CPU, None (no cap) elsewhere."""
    return CPU_TILE_MEMORY if torch.device(device).type == "cpu" else None


def default_memory_budget(device: str | torch.device) -> int:
    """A safe share of the memory free now: 80% of the GPU's free memory, or half of the available RAM.

    On the CPU the tiles are smaller still, for speed: :func:`tile_memory_limit`."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    return int(0.5 * _available_ram())


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30  # no way to ask: assume a small machine


def format_duration(seconds: float) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``1.5 h``."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
