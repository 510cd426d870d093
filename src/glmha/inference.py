"""Inference on images of any size: pad to the network's multiple, tile large images, pick the precision.

- :func:`restore` runs a model on an image of any size: whole, or in overlapping tiles of a
  given side, or (``tile="auto"``) in the largest tiles that fit a memory budget.
- :func:`activation_cost` measures how much memory one forward needs per pixel: every tensor
  the forward allocates is tracked on the meta device (no memory, no arithmetic), so the
  number is the model's, not a guess.
- :func:`precision_context` is the autocast for ``"fp32"``, ``"bf16"`` or ``"fp16"``; the models
  keep their norms and softmax in float32 under it (as :func:`glmha.optimize` does).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .validation import InputError, check_image_batch

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_context(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """Autocast on ``device`` for ``precision`` (``"fp32"``: no autocast).

    Under it, convolutions and matrix products run in bf16/fp16 while the models keep layer
    norms, query/key norms and the attention softmax in float32. bf16 works on CPUs and GPUs;
    fp16 is meant for GPUs. Use it around a forward::

        with precision_context("bf16", "cpu"):
            out = model(x)
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


# --------------------------------------------------------------------------- memory
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


def default_memory_budget(device: str | torch.device) -> int:
    """A safe share of the memory free now: 80% of the GPU's free memory, or half of the available RAM."""
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


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> torch.Tensor:
    """Pad H and W at the bottom/right up to a multiple of ``multiple``.

    Reflect padding needs the pad to be smaller than the side; tinier images fall back to
    replicate padding rather than failing.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    if mode == "reflect" and (pad_h >= h or pad_w >= w):
        mode = "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _blend_window(tile_h: int, tile_w: int, overlap: int, device, dtype) -> torch.Tensor:
    # A separable ramp, 1 in the middle, falling towards the tile edges over ``overlap``
    # pixels; strictly positive, so every pixel gets weight from every tile covering it.
    def ramp(n: int) -> torch.Tensor:
        i = torch.arange(n, device=device, dtype=dtype)
        return torch.minimum(torch.minimum(i + 1, n - i), torch.tensor(overlap + 1.0, device=device, dtype=dtype)) / (overlap + 1)

    return ramp(tile_h)[:, None] * ramp(tile_w)[None, :]


# Measured activations are live tensor bytes; the allocator's slack, library workspaces (e.g.
# of dense 3x3 convolutions) and the copies around the forward (padding) come on top: peak
# RSS of small Restormers on the CPU measured 1.2x to 1.4x the tracked bytes. The margin holds
# what a command loads next to the model (image codecs, the libraries' code, the decoded file):
# a restore of a 2000x3000 PNG under a 1 GB budget peaked 0.96 GB over its start with 64 MiB.
_SAFETY = 1.5
_MARGIN = 160 * 2**20


def plan_tile(
    height: int,
    width: int,
    cost: ActivationCost,
    max_memory: float,
    multiple: int = 1,
    overlap: int = 32,
    batch: int = 1,
    image_bytes_per_pixel: float = 0.0,
) -> int | None:
    """The tile side for :func:`restore` under ``max_memory`` bytes: None when the whole image fits.

    ``image_bytes_per_pixel`` is what a tiled run keeps at full image size in the same memory
    (the input, the weighted output sum and the weight sum, when the model runs on the CPU).
    A tile is a multiple of ``multiple`` and larger than ``overlap``; an image shorter than the
    tile gets tiles as tall as the image and as wide as the budget allows.
    """
    padded = math.ceil(height / multiple) * multiple * math.ceil(width / multiple) * multiple
    if _SAFETY * cost.bytes_for(padded, batch) + _MARGIN <= max_memory:
        return None
    left = max_memory - _MARGIN - image_bytes_per_pixel * height * width
    pixels = (left / _SAFETY / batch - cost.fixed_bytes) / max(cost.bytes_per_pixel, 1e-9)
    smallest = (overlap // multiple + 1) * multiple
    side = int(math.isqrt(max(int(pixels), 0)))
    if side >= min(height, width):  # tiles as tall (or wide) as the image, longer the other way
        side = int(pixels // min(height, width))
    side = side // multiple * multiple
    if side < smallest:
        need = _SAFETY * cost.bytes_for(smallest * smallest, batch) + _MARGIN + image_bytes_per_pixel * height * width
        raise InputError(
            f"a memory budget of {_format_bytes(max_memory)} is too small for a {height}x{width} image: the smallest tile "
            f"({smallest}x{smallest}, overlap {overlap}) needs about {_format_bytes(need)}"
        )
    return side


def _format_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def round_tile(tile: int, multiple: int) -> int:
    """``tile`` rounded down to a multiple of ``multiple`` (at least one multiple); says so when it changes."""
    rounded = max(multiple, tile // multiple * multiple)
    if rounded != tile:
        log.warning("tile %d is not a multiple of the model's size multiple %d: using %d", tile, multiple, rounded)
    return rounded


@torch.inference_mode()
def restore(
    model: nn.Module,
    x: torch.Tensor,
    tile: int | str | None = None,
    overlap: int = 32,
    pad_mode: str = "reflect",
    *,
    max_memory: int | None = None,
    precision: str = "fp32",
    progress: bool = False,
    cost: ActivationCost | None = None,
) -> torch.Tensor:
    """Run ``model`` on a ``B x C x H x W`` batch of any size and return the output at H x W.

    Without ``tile`` the whole image is padded to the model's ``size_multiple`` and run at
    once. With ``tile`` the image is cut into ``tile x tile`` windows that overlap by
    ``overlap`` pixels, each run separately (on the model's device, so a large image can stay
    on the CPU) and blended with a ramp window: peak memory is bounded by the tile size. A
    tile that is not a multiple of the model's size multiple is rounded down (with a logged
    message).

    ``tile="auto"`` runs the image whole when it fits ``max_memory`` bytes (default: a safe
    share of the free memory of the model's device, :func:`default_memory_budget`) and
    otherwise in the largest tiles that fit, from the model's measured activation memory
    (:func:`activation_cost`, or ``cost``). On CUDA an out-of-memory error then retries with
    tiles half as large, and says so. ``precision`` is ``"fp32"``, ``"bf16"`` or ``"fp16"``
    (autocast, :func:`precision_context`); an input of another floating dtype than the
    weights (float64, float16, bfloat16) is cast to theirs, and the output comes back in
    ``x``'s dtype.
    ``progress`` shows a bar over the tiles.
    """
    check_image_batch(x, getattr(model, "in_channels", None))
    multiple = int(getattr(model, "size_multiple", 1))
    device = next(model.parameters()).device
    h, w = x.shape[-2:]
    if overlap < 0:
        raise InputError(f"overlap must be >= 0, got {overlap}")
    if tile != "auto":
        if isinstance(tile, int) and tile > 0:
            tile = round_tile(tile, multiple)
        return _restore_tiled(model, x, tile, overlap, pad_mode, precision, progress, device, multiple)

    if max_memory is None:
        max_memory = default_memory_budget(device)
    cost = cost or activation_cost(model)
    # Full-size planes a tiled run keeps next to the tiles when both live in the same memory.
    image_planes = x.shape[0] * (x.shape[1] + int(getattr(model, "out_channels", x.shape[1]) or x.shape[1])) + 1
    image_bytes = 4 * image_planes if x.device.type == device.type else 0.0
    chosen = plan_tile(h, w, cost, max_memory, multiple, overlap, x.shape[0], image_bytes)
    while True:
        try:
            return _restore_tiled(model, x, chosen, overlap, pad_mode, precision, progress, device, multiple)
        except torch.OutOfMemoryError:  # raised by the accelerators' allocators (CUDA and others), not the CPU's
            if device.type == "cuda":
                torch.cuda.empty_cache()
            previous = chosen or max(h, w)
            chosen = previous // 2 // multiple * multiple
            if chosen <= overlap:
                raise
            what = "the whole image" if previous == max(h, w) else f"tiles of {previous}"
            log.warning("%s out of memory with %s; retrying with tiles of %d", device.type.upper(), what, chosen)


def _restore_tiled(model, x, tile, overlap, pad_mode, precision, progress, device, multiple) -> torch.Tensor:
    from tqdm import tqdm

    h, w = x.shape[-2:]

    weight_dtype = next(model.parameters()).dtype  # float64/float16/bfloat16 inputs run in the weights' dtype

    def run(patch: torch.Tensor) -> torch.Tensor:
        ph, pw = patch.shape[-2:]
        with precision_context(precision, device):
            out = model(pad_to_multiple(patch.to(device=device, dtype=weight_dtype), multiple, pad_mode))
        return out[..., :ph, :pw].to(device=x.device, dtype=x.dtype)

    if tile is None or (h <= tile and w <= tile):
        return run(x)
    if tile <= 0 or overlap >= tile:
        raise InputError(f"need tile > overlap >= 0, got tile={tile}, overlap={overlap}")

    tile_h, tile_w = min(tile, h), min(tile, w)
    stride = tile - overlap
    starts = [(top, left) for top in _tile_starts(h, tile_h, stride) for left in _tile_starts(w, tile_w, stride)]
    out = weight_sum = window = None
    for top, left in tqdm(starts, desc="tiles", unit="tile", leave=False, disable=not progress):
        pred = run(x[..., top : top + tile_h, left : left + tile_w])
        if out is None:
            out = torch.zeros(x.shape[0], pred.shape[1], h, w, device=x.device, dtype=pred.dtype)
            weight_sum = torch.zeros(h, w, device=x.device, dtype=pred.dtype)
            window = _blend_window(tile_h, tile_w, overlap, x.device, pred.dtype)
        out[..., top : top + tile_h, left : left + tile_w] += pred * window
        weight_sum[top : top + tile_h, left : left + tile_w] += window
    return out.div_(weight_sum)  # in place: no third full-size buffer
