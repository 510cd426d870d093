"""Inference on images of any size: pad to the network's multiple, or tile large images."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .validation import InputError, check_image_batch


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


@torch.inference_mode()
def restore(
    model: nn.Module,
    x: torch.Tensor,
    tile: int | None = None,
    overlap: int = 32,
    pad_mode: str = "reflect",
) -> torch.Tensor:
    """Run ``model`` on a ``B x C x H x W`` batch of any size and return the output at H x W.

    Without ``tile`` the whole image is padded to the model's ``size_multiple`` and run at
    once. With ``tile`` the image is cut into ``tile x tile`` windows that overlap by
    ``overlap`` pixels, each run separately (on the model's device, so a large image can stay
    on the CPU) and blended with a ramp window: peak memory is bounded by the tile size.
    """
    check_image_batch(x, getattr(model, "in_channels", None))
    multiple = int(getattr(model, "size_multiple", 1))
    device = next(model.parameters()).device
    h, w = x.shape[-2:]

    def run(patch: torch.Tensor) -> torch.Tensor:
        ph, pw = patch.shape[-2:]
        out = model(pad_to_multiple(patch.to(device), multiple, pad_mode))
        return out[..., :ph, :pw].to(x.device)

    if tile is None or (h <= tile and w <= tile):
        return run(x)
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise InputError(f"need tile > overlap >= 0, got tile={tile}, overlap={overlap}")
    if tile % multiple:
        raise InputError(f"tile ({tile}) must be a multiple of the model's size multiple ({multiple})")

    tile_h, tile_w = min(tile, h), min(tile, w)
    stride = tile - overlap
    out = weight_sum = window = None
    for top in _tile_starts(h, tile_h, stride):
        for left in _tile_starts(w, tile_w, stride):
            pred = run(x[..., top : top + tile_h, left : left + tile_w])
            if out is None:
                out = torch.zeros(x.shape[0], pred.shape[1], h, w, device=x.device, dtype=pred.dtype)
                weight_sum = torch.zeros(h, w, device=x.device, dtype=pred.dtype)
                window = _blend_window(tile_h, tile_w, overlap, x.device, pred.dtype)
            out[..., top : top + tile_h, left : left + tile_w] += pred * window
            weight_sum[top : top + tile_h, left : left + tile_w] += window
    return out.div_(weight_sum)  # in place: no third full-size buffer
