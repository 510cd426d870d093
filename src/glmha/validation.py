"""Input checks that turn bad input into one clear message instead of a deep PyTorch error."""
from __future__ import annotations

import os

import torch


class InputError(ValueError):
    """Raised when a model or function receives input it cannot use; the message says why."""


def error_message(err: BaseException) -> str:
    """The text of an error; a KeyError's str() is its repr, quotes included, so take its argument."""
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def check_image_batch(x: object, channels: int | None, what: str = "input", check_finite: bool = True) -> None:
    """Check that ``x`` is a ``B x C x H x W`` floating tensor with ``channels`` channels.

    Skipped while ``torch.compile`` traces, where data-dependent checks would break the graph;
    compiled models are checked by their eager first call.
    """
    if torch.compiler.is_compiling():
        return
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor of shape B x C x H x W, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(
            f"{what} must be a 4-D tensor B x C x H x W, got {x.dim()}-D with shape {tuple(x.shape)}"
            + (" (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else "")
        )
    b, c, h, w = x.shape
    if channels is not None and c != channels:
        raise InputError(f"{what} has {c} channels but the model expects {channels} (shape {tuple(x.shape)})")
    if b == 0 or h == 0 or w == 0:
        raise InputError(f"{what} is empty: shape {tuple(x.shape)} has a zero batch or spatial size")
    if not x.is_floating_point():
        raise InputError(f"{what} must be a floating-point tensor, got {x.dtype} (scale images to [0, 1] floats)")
    if check_finite and not x.is_meta and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"{what} contains {n_bad} non-finite values (NaN or Inf)")


def check_shifted_mask(mask: object, x: torch.Tensor, channels: int, extra_width: int) -> None:
    """Check MST's second input: the shifted 3-D mask ``B x channels x H x (W + extra_width)`` of input ``x``.

    The mask may have batch 1 (one mask shared by the batch) or the batch of ``x``.
    """
    if mask is None:
        raise InputError(
            f"MST needs the shifted 3-D mask Phi as second input ({channels} x H x (W + {extra_width})); "
            "build it with glmha.data.cassi.mask_input"
        )
    check_image_batch(mask, channels, what="mask")
    b, _, h, w = x.shape
    expected = (h, w + extra_width)
    if tuple(mask.shape[-2:]) != expected or mask.shape[0] not in (1, b):
        raise InputError(
            f"mask must be the shifted 3-D mask of shape {b} (or 1) x {channels} x {expected[0]} x {expected[1]} "
            f"for an input of {h}x{w} ({extra_width} extra columns of dispersion), got {tuple(mask.shape)}"
        )


def check_finite_output(output: torch.Tensor, path: str | os.PathLike) -> None:
    """:class:`InputError` naming ``path`` when the model's ``output`` holds NaN or Inf (nothing is written then)."""
    bad = int((~torch.isfinite(output)).sum())
    if bad:
        raise InputError(f"{path}: the model's output holds {bad} NaN or infinite value(s); nothing written "
                         "(fp16 overflow? try --precision fp32 or bf16)")
