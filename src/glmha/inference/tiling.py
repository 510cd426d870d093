"""Cutting an image into overlapping tiles and putting the outputs back together.

Two ways to tile: ``"blend"`` (this package's) pads each tile to the model's multiple and
blends the overlaps with a ramp, so tile seams fade out; ``"official"`` reproduces the
official Restormer ``demo.py``: the whole image is padded first, cut into square tiles of
``min(tile, H, W)``, and overlaps are averaged uniformly.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

from ..validation import InputError
from .memory import ActivationCost, format_bytes, format_duration

log = logging.getLogger(__name__)

TILE_MODES = ("blend", "official")


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
    tile_memory: float | None = None,
) -> int | None:
    """The tile side for :func:`restore` under ``max_memory`` bytes: None when the whole image fits.

    ``image_bytes_per_pixel`` is what a tiled run keeps at full image size in the same memory
    (the input, the weighted output sum and the weight sum, when the model runs on the CPU).
    A tile is a multiple of ``multiple`` and larger than ``overlap``; an image shorter than the
    tile gets tiles as tall as the image and as wide as the budget allows.

    ``tile_memory`` caps one forward (the whole image's or a tile's) further, for speed rather
    than memory: on the CPU larger tiles run slower (:data:`~glmha.inference.memory.CPU_TILE_MEMORY`).
    The cap never makes a plan fail: at worst the tiles are the smallest the overlap allows.
    """
    padded = math.ceil(height / multiple) * multiple * math.ceil(width / multiple) * multiple
    whole = _SAFETY * cost.bytes_for(padded, batch)
    if whole + _MARGIN <= max_memory and (tile_memory is None or whole <= tile_memory):
        return None
    smallest = (overlap // multiple + 1) * multiple

    def largest_side(forward_bytes: float) -> int:  # the largest tile whose forward fits forward_bytes
        pixels = (forward_bytes / _SAFETY / batch - cost.fixed_bytes) / max(cost.bytes_per_pixel, 1e-9)
        side = int(math.isqrt(max(int(pixels), 0)))
        if side >= min(height, width):  # tiles as tall (or wide) as the image, longer the other way
            side = int(pixels // min(height, width))
        return side // multiple * multiple

    side = largest_side(max_memory - _MARGIN - image_bytes_per_pixel * height * width)
    if side < smallest:
        need = _SAFETY * cost.bytes_for(smallest * smallest, batch) + _MARGIN + image_bytes_per_pixel * height * width
        raise InputError(
            f"a memory budget of {format_bytes(max_memory)} is too small for a {height}x{width} image: the smallest tile "
            f"({smallest}x{smallest}, overlap {overlap}) needs about {format_bytes(need)}"
        )
    if tile_memory is not None:
        side = min(side, max(largest_side(tile_memory), smallest))
    return side


def count_tiles(height: int, width: int, tile: int, overlap: int, mode: str = "blend", multiple: int = 1) -> tuple[int, int, int]:
    """``(number of tiles, tile height, tile width)`` of a ``height x width`` image cut as :func:`run_blended_tiles`
    (``mode="blend"``) or :func:`run_official_tiles` (``"official"``) cut it."""
    if mode == "official":
        height, width = math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple
        tile_h = tile_w = min(tile, height, width)
    else:
        tile_h, tile_w = min(tile, height), min(tile, width)
    stride = max(tile - overlap, 1) if mode != "official" else max(tile_h - overlap, 1)
    count = len(_tile_starts(height, tile_h, stride)) * len(_tile_starts(width, tile_w, stride))
    return count, tile_h, tile_w


def announce(message: str, progress: bool) -> None:
    """``message`` on stderr as ``glmha: message`` when ``progress`` (above a tqdm bar, if one is drawn),
    else to the ``glmha`` logger at INFO."""
    if not progress:
        log.info(message)
        return
    from tqdm import tqdm

    tqdm.write(f"glmha: {message}", file=sys.stderr)


def announce_plan(
    height: int, width: int, side: int, overlap: int, progress: bool, *, mode: str = "blend", multiple: int = 1,
    budget: float | None = None, tile_memory: float | None = None,
) -> str:
    """Say how an image is tiled: ``tiling 4000x3000 into 48 tiles of 544 px (overlap 32) within a 7.81 GiB budget``
    (:func:`announce`); returns the line. ``budget``: the memory budget of ``tile="auto"``; ``tile_memory``:
    the CPU's cap on one tile's forward when it, not the budget, set the tile size."""
    count, tile_h, tile_w = count_tiles(height, width, side, overlap, mode, multiple)
    size = f"{tile_h} px" if tile_h == tile_w else f"{tile_h}x{tile_w} px"
    message = f"tiling {height}x{width} into {count} tile{'s' if count != 1 else ''} of {size} (overlap {overlap})"
    if budget is not None:
        message += f" within a {format_bytes(budget)} budget"
    if tile_memory is not None:
        message += f", each tile's forward under {format_bytes(tile_memory)} (the CPU default: larger tiles run slower)"
    announce(message, progress)
    return message


PROGRESS_INTERVAL = 10.0  # seconds between two progress lines of a tiled run


class TileProgress:
    """``tile 3/20, ~4 min left`` on stderr (:func:`announce`) after a tile, at most once every ``interval`` seconds
    (:data:`PROGRESS_INTERVAL`).

    The estimate is the mean time per tile so far times the tiles left. Nothing is said for a
    single tile, nor when the tiles are done before the first ``interval`` has passed; once
    something was said, the last tile says ``done in ...``.
    """

    def __init__(self, total: int, enabled: bool, interval: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.enabled, self.clock = total, enabled and total > 1, clock
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self.start = self.last = clock()
        self.done = 0
        self.said: list[str] = []

    def step(self) -> None:
        """One more tile is done."""
        self.done += 1
        if not self.enabled:
            return
        now = self.clock()
        elapsed = now - self.start
        if self.done >= self.total:
            if self.said:
                self._say(f"tile {self.done}/{self.total}, done in {format_duration(elapsed)}")
            return
        if now - self.last >= self.interval:
            left = elapsed / self.done * (self.total - self.done)
            self._say(f"tile {self.done}/{self.total}, ~{format_duration(left)} left")
            self.last = now

    def _say(self, message: str) -> None:
        self.said.append(message)
        announce(message, True)


def round_tile(tile: int, multiple: int) -> int:
    """``tile`` rounded down to a multiple of ``multiple`` (at least one multiple); says so when it changes."""
    rounded = max(multiple, tile // multiple * multiple)
    if rounded != tile:
        log.warning("tile %d is not a multiple of the model's size multiple %d: using %d", tile, multiple, rounded)
    return rounded




Runner = Callable[[torch.Tensor], torch.Tensor]  # a patch of any size -> the output at that size


def run_blended_tiles(run: Runner, x: torch.Tensor, tile: int, overlap: int, progress: bool = False) -> torch.Tensor:
    """``run`` over ``tile x tile`` windows of ``x`` that overlap by ``overlap``, blended with a ramp.

    ``run`` pads each window to the model's multiple itself; windows at the image's border
    are shifted inwards (the last one ends at the border), and an image shorter than ``tile``
    gets windows as tall (wide) as the image.
    """
    h, w = x.shape[-2:]
    if tile <= 0 or overlap >= tile:
        raise InputError(f"need tile > overlap >= 0, got tile={tile}, overlap={overlap}")
    tile_h, tile_w = min(tile, h), min(tile, w)
    stride = tile - overlap
    starts = [(top, left) for top in _tile_starts(h, tile_h, stride) for left in _tile_starts(w, tile_w, stride)]
    out = weight_sum = window = None
    tiles = TileProgress(len(starts), progress)
    for top, left in starts:
        pred = run(x[..., top : top + tile_h, left : left + tile_w])
        if out is None:
            out = torch.zeros(x.shape[0], pred.shape[1], h, w, device=x.device, dtype=pred.dtype)
            weight_sum = torch.zeros(h, w, device=x.device, dtype=pred.dtype)
            window = _blend_window(tile_h, tile_w, overlap, x.device, pred.dtype)
        out[..., top : top + tile_h, left : left + tile_w] += pred * window
        weight_sum[top : top + tile_h, left : left + tile_w] += window
        tiles.step()
    return out.div_(weight_sum)  # in place: no third full-size buffer


def run_official_tiles(
    run: Runner, x: torch.Tensor, tile: int, overlap: int, multiple: int, pad_mode: str = "reflect", progress: bool = False
) -> torch.Tensor:
    """The official Restormer ``demo.py`` tiling: pad the image, square tiles, overlaps averaged.

    The image is padded at the bottom/right to ``multiple``; tiles are ``min(tile, H, W)``
    square with stride ``tile - overlap`` (the last row and column of tiles end at the padded
    border); each tile's output is added to a sum and a count, the sum divided by the count,
    and the padding cropped. ``tile`` must be a multiple of ``multiple``.
    """
    h, w = x.shape[-2:]
    padded = pad_to_multiple(x, multiple, pad_mode)
    height, width = padded.shape[-2:]
    side = min(tile, height, width)
    if side % multiple:
        raise InputError(f"the official tiling needs a tile that is a multiple of {multiple}, got {tile}")
    if side <= overlap:
        raise InputError(f"need tile > overlap >= 0, got tile={side} (the image's shorter side caps it), overlap={overlap}")
    stride = side - overlap
    starts = [(top, left) for top in _tile_starts(height, side, stride) for left in _tile_starts(width, side, stride)]
    total = count = None
    tiles = TileProgress(len(starts), progress)
    for top, left in starts:
        pred = run(padded[..., top : top + side, left : left + side])
        if total is None:
            total = torch.zeros(x.shape[0], pred.shape[1], height, width, device=x.device, dtype=pred.dtype)
            count = torch.zeros_like(total)
        total[..., top : top + side, left : left + side] += pred
        count[..., top : top + side, left : left + side] += 1
        tiles.step()
    return total.div_(count)[..., :h, :w]
