"""Inference on images of any size: pad to the network's multiple, tile large images, pick the precision.

- :func:`restore` runs a model on an image of any size: whole, or in overlapping tiles of a
  given side, or (``tile="auto"``) in the largest tiles that fit a memory budget
  (:mod:`glmha.inference.memory`, :mod:`glmha.inference.tiling`), optionally as the x8
  geometric self-ensemble (:mod:`glmha.inference.ensemble`).
- :func:`restore_files` does it for image files, with the outputs checked before anything runs.
- :func:`precision_context` is the autocast for ``"fp32"``, ``"bf16"`` or ``"fp16"``; the models
  keep their norms and softmax in float32 under it (as :func:`glmha.optimize` does).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..io.files import OutputExistsError, claim_outputs
from ..validation import InputError, check_finite_output, check_image_batch
from .ensemble import check_ensemble, self_ensemble
from .memory import ActivationCost, activation_cost, default_memory_budget, tile_memory_limit
from .tiling import TILE_MODES, announce_plan, pad_to_multiple, plan_tile, round_tile, run_blended_tiles, run_official_tiles

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
    tile_mode: str = "blend",
    ensemble: str = "none",
) -> torch.Tensor:
    """Run ``model`` on a ``B x C x H x W`` batch of any size and return the output at H x W.

    Without ``tile`` the whole image is padded to the model's ``size_multiple`` and run at
    once. With ``tile`` the image is cut into ``tile x tile`` windows that overlap by
    ``overlap`` pixels, each run separately (on the model's device, so a large image can stay
    on the CPU): peak memory is bounded by the tile size. A tile that is not a multiple of
    the model's size multiple is rounded down (with a logged message). ``tile_mode="blend"``
    pads each window and blends the overlaps with a ramp; ``"official"`` tiles as the
    official Restormer ``demo.py`` does (:func:`~glmha.inference.tiling.run_official_tiles`).

    ``tile="auto"`` runs the image whole when it fits ``max_memory`` bytes (default: a safe
    share of the free memory of the model's device, :func:`default_memory_budget`) and
    otherwise in the largest tiles that fit, from the model's measured activation memory
    (:func:`activation_cost`, or ``cost``); on the CPU one forward is also kept under
    :func:`~glmha.inference.memory.tile_memory_limit`, where larger tiles run slower. On CUDA an out-of-memory error then retries with
    tiles half as large, and says so. ``precision`` is ``"fp32"``, ``"bf16"`` or ``"fp16"``
    (autocast, :func:`precision_context`); an input of another floating dtype than the
    weights (float64, float16, bfloat16) is cast to theirs, and the output comes back in
    ``x``'s dtype. ``ensemble="mean"`` or ``"median"`` runs all of this on the 8 flips and
    rotations of the image and combines the outputs (8 forwards,
    :func:`~glmha.inference.ensemble.self_ensemble`). ``progress`` says on stderr how a tiled image is cut
    (tile size, number of tiles, budget) and, every few seconds, how many tiles are done and the time
    left; without it the plan goes to the ``glmha`` logger at INFO
    (:func:`~glmha.inference.tiling.announce_plan`).
    """
    check_image_batch(x, getattr(model, "in_channels", None))
    check_ensemble(ensemble, model)
    if tile_mode not in TILE_MODES:
        raise InputError(f"tile_mode must be one of {list(TILE_MODES)}, got {tile_mode!r}")
    if overlap < 0:
        raise InputError(f"overlap must be >= 0, got {overlap}")
    multiple = int(getattr(model, "size_multiple", 1))
    device = next(model.parameters()).device
    if isinstance(tile, int) and tile > 0:
        tile = round_tile(tile, multiple)
    if tile == "auto":
        max_memory = max_memory or default_memory_budget(device)
        cost = cost or activation_cost(model)
    weight_dtype = next(model.parameters()).dtype  # float64/float16/bfloat16 inputs run in the weights' dtype

    def run(patch: torch.Tensor) -> torch.Tensor:
        ph, pw = patch.shape[-2:]
        with precision_context(precision, device):
            out = model(pad_to_multiple(patch.to(device=device, dtype=weight_dtype), multiple, pad_mode))
        return out[..., :ph, :pw].to(device=patch.device, dtype=patch.dtype)

    def run_tiled(image: torch.Tensor, side: int | None) -> torch.Tensor:
        h, w = image.shape[-2:]
        if side is None or (h <= side and w <= side):
            return run(image)
        if tile_mode == "official":
            return run_official_tiles(run, image, side, overlap, multiple, pad_mode, progress)
        return run_blended_tiles(run, image, side, overlap, progress)

    said: list[str] = []  # the plan is said once per call (the self-ensemble runs 8 images)

    def run_image(image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        if tile != "auto":
            if tile and max(h, w) > tile and not said:
                said.append(announce_plan(h, w, tile, overlap, progress, mode=tile_mode, multiple=multiple))
            return run_tiled(image, tile)
        # Full-size planes a tiled run keeps next to the tiles when both live in the same memory.
        planes = image.shape[0] * (image.shape[1] + int(getattr(model, "out_channels", image.shape[1]) or image.shape[1])) + 1
        image_bytes = 4 * planes if image.device.type == device.type else 0.0
        limit = tile_memory_limit(device)
        chosen = plan_tile(h, w, cost, max_memory, multiple, overlap, image.shape[0], image_bytes, tile_memory=limit)
        if chosen is not None and not said:  # the cap is named when it, not the budget, set the size
            capped = limit is not None and chosen != plan_tile(h, w, cost, max_memory, multiple, overlap, image.shape[0], image_bytes)
            said.append(announce_plan(h, w, chosen, overlap, progress, mode=tile_mode, multiple=multiple, budget=max_memory,
                                      tile_memory=limit if capped else None))
        while True:
            try:
                return run_tiled(image, chosen)
            except torch.OutOfMemoryError:  # raised by the accelerators' allocators (CUDA and others), not the CPU's
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                previous = chosen or max(h, w)
                chosen = previous // 2 // multiple * multiple
                if chosen <= overlap:
                    raise
                what = "the whole image" if previous == max(h, w) else f"tiles of {previous}"
                log.warning("%s out of memory with %s; retrying with tiles of %d", device.type.upper(), what, chosen)

    return self_ensemble(run_image, x, ensemble)


def restore_files(
    model: nn.Module,
    paths: Iterable[Path | tuple[Path, Path]],
    output_dir: str | os.PathLike,
    tile: int | str | None = None,
    overlap: int = 32,
    progress: bool = True,
    *,
    max_memory: int | None = None,
    precision: str = "fp32",
    bit_depth: int | None = None,
    grey_conversion: str | None = None,
    overwrite: bool = False,
    tile_mode: str = "blend",
    ensemble: str = "none",
    read_depth: str = "native",
) -> tuple[list[Path], list[str]]:
    """Restore each image file with ``model`` and write ``<output_dir>/<stem>.png`` (same size as the input).

    Runs on the model's device; images are read and written on the CPU, run whole or tiled as
    ``tile`` says (a side, ``"auto"`` for the memory budget ``max_memory``, or None: whole;
    see :func:`glmha.restore`, also for ``tile_mode`` and ``ensemble``) in ``precision``. A dual-pixel model takes ``(left, right)``
    path pairs. PNGs are written with ``bit_depth`` bits (default: the input's, 8 or 16).
    ``grey_conversion`` is how a 1-channel model reads colour files, ``read_depth`` whether files
    keep their precision (``"native"``) or are read at 8 bits as the official scripts read them
    (``"8"``; :func:`~glmha.io.images.read_image_and_depth`).

    Before anything runs, the outputs are checked (:func:`plan_outputs`): none may be an
    input, and none may exist unless ``overwrite``. A file that cannot be read or restored
    (or whose output holds NaN or Inf) is skipped: returns the written paths and one message
    per skipped file.
    """
    from tqdm import tqdm

    from ..io.images import plan_outputs, prepare_output_dir, read_dual_pixel_pair, read_image_and_depth, write_png

    check_ensemble(ensemble, model)  # before any file is read
    paths = list(paths)
    output_dir = prepare_output_dir(output_dir)
    names = plan_outputs(paths, output_dir, [".png"], overwrite)
    channels = int(getattr(model, "in_channels", 3))
    dual_pixel = bool(getattr(getattr(model, "module", model), "dual_pixel_task", False))
    if tile == "auto":  # measured once for all images
        cost = activation_cost(model)
        max_memory = max_memory or default_memory_budget(next(model.parameters()).device)
    else:
        cost = None
    written, failed = [], []
    with claim_outputs([output_dir / f"{name}.png" for name in names]):  # a second writer into these names stops here
        for path, name in tqdm(list(zip(paths, names)), desc="restoring", unit="image", disable=not progress):
            try:
                if dual_pixel:
                    if not isinstance(path, tuple):
                        raise InputError(f"{path}: the dual-pixel model takes left/right view pairs")
                    image, depth = read_dual_pixel_pair(*path)
                    path = Path(path[0])
                else:
                    image, depth = read_image_and_depth(path, channels, grey_conversion, read_depth)
                output = restore(model, image, tile=tile, overlap=overlap, max_memory=max_memory, precision=precision,
                                 progress=progress, cost=cost, tile_mode=tile_mode, ensemble=ensemble)
                check_finite_output(output, path)
            except OutputExistsError:
                raise
            except InputError as err:
                failed.append(str(err) if str(path) in str(err) else f"{path}: {err}")
                continue
            # without overwrite, only created: a file another process wrote meanwhile stops the run, unreplaced
            written.append(write_png(output_dir / f"{name}.png", output, bit_depth or depth, replace=overwrite))
    return written, failed
