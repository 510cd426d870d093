"""Measuring: interleaved timing, the peak memory of one call, and what machine it ran on.

Shared by ``benchmarks/bench.py`` and ``benchmarks/gpu_check.py``.

Timing: after warm-up calls, the variants of one configuration are called in turn
(A, B, A, B, ...) and the median per variant is reported, so a load that comes and goes
hits all variants alike. ``Clock("process")`` times CPU seconds of this process instead of
wall seconds (steadier on a shared machine with one thread). On CUDA every sample is taken
between ``torch.cuda.synchronize`` calls.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the call minus what was
allocated before it. On the CPU PyTorch keeps no allocator statistics, so the peak resident
set size is used: the kernel's high-water mark is reset (``/proc/self/clear_refs``), the call
runs, and the peak is ``VmHWM`` minus the ``VmRSS`` before the call. A script measuring CPU
peaks should re-execute itself with ``MALLOC_MMAP_THRESHOLD_=65536`` (:func:`reexec_with_mmap_threshold`)
so that glibc returns every large freed block to the system at once; otherwise freed memory
stays resident and later peaks are under-counted. Either way the number is the extra memory
one call needs (activations, workspaces, output, gradients), beyond the weights and inputs
that exist before it.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


@dataclass
class Timing:
    """Seconds per call of one variant, over the timed repeats."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")


class Clock:
    def __init__(self, device: torch.device, kind: str):
        self.device = device
        self.kind = kind

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        return time.process_time() if self.kind == "process" else time.perf_counter()


def time_interleaved(fns: dict[str, Callable[[], object]], clock: Clock, warmup: int, repeats: int) -> dict[str, Timing]:
    """Warm each variant up, then time them in turn; returns the samples per variant."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    clock.sync()
    timings = {name: Timing() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            clock.sync()
            start = clock.now()
            fn()
            clock.sync()
            timings[name].samples.append(clock.now() - start)
    return timings


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def cpu_peak_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status_bytes("VmHWM:")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Extra bytes one call of ``fn`` needs at its peak (see the module docstring), or None."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return peak
    if not cpu_peak_supported():
        return None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident size
    before = _proc_status_bytes("VmRSS:")
    result = fn()
    peak = _proc_status_bytes("VmHWM:") - before
    del result
    return peak


def reexec_with_mmap_threshold() -> None:
    """Re-run this script with large blocks mmapped (once), so that CPU peak memory is measured honestly."""
    if MMAP_ENV not in os.environ:
        env = dict(os.environ, **{MMAP_ENV: "65536"})
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def machine_description(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = platform.processor() or platform.machine()
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
            model = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), hw)
            hw = model
        except (OSError, subprocess.CalledProcessError):
            pass
    return (f"{hw}, {os.cpu_count()} CPUs visible, torch {torch.__version__} ({threads} threads), "
            f"Python {platform.python_version()}")
