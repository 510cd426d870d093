"""Export a model to ONNX or TorchScript with dynamic height and width, and check the file against PyTorch.

Image models (Restormer, MST++) are exported behind :class:`AnySize`, which pads the input
to the network's size multiple and crops the output back, as :func:`glmha.restore` does, so
the exported file takes images of any size (at least the multiple on each side), and clips
the output to [0, 1] as ``glmha restore`` and ``glmha reconstruct`` do (:func:`clips_output`). The
CASSI MST takes the shifted-back measurement and the shifted mask as they are (H and W multiples
of 4, the mask ``2 (bands - 1)`` columns wider); its output is not clipped, as the commands keep it.
:func:`input_convention` says, in one line, what a file takes and gives.

ONNX goes through PyTorch's ``torch.export``-based exporter (``dynamo=True``): the older
TorchScript-based exporter cannot express the channel layer norm's permutes with symbolic
sizes. TorchScript files are traced; the padding is scripted so that its arithmetic on the
input size stays dynamic.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..io.files import atomic_write

FORMATS = ("onnx", "torchscript")


@torch.jit.script_if_tracing
def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    # The padded size is written as a multiple of ``multiple`` so that torch.export can prove
    # the network's divisibility check; reflect padding as glmha.restore.
    h, w = x.shape[-2], x.shape[-1]
    return F.pad(x, [0, (w + multiple - 1) // multiple * multiple - w, 0, (h + multiple - 1) // multiple * multiple - h], mode="reflect")


@torch.jit.script_if_tracing
def _crop_like(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return out[:, :, : x.shape[-2], : x.shape[-1]]


class AnySize(nn.Module):
    """``model`` on images of any size: reflect-pad to its size multiple, run, crop back; with ``clip``,
    the output clipped to [0, 1] as the commands write it."""

    def __init__(self, model: nn.Module, clip: bool = False):
        super().__init__()
        self.model = model
        self.multiple = int(getattr(model, "size_multiple", 1))
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _crop_like(self.model(_pad_to(x, self.multiple)), x)
        return out.clamp(0, 1) if self.clip else out  # a constant branch: traced and exported as one path


@dataclass
class ExportResult:
    path: Path
    format: str
    checked_sizes: list[tuple[int, int]]
    max_abs_diff: float | None  # None when the runtime to check with is not installed
    convention: str = ""  # what the file takes and gives (input_convention)


def clips_output(model: nn.Module) -> bool:
    """Whether the commands clip ``model``'s output to [0, 1]: ``glmha restore`` writes PNGs (the
    official Restormer scripts clamp too), ``glmha reconstruct`` clips MST++ and real-CASSI cubes as
    the official test code does; the CASSI simulation MST's cubes are written as they come."""
    from ..models.jobs import CASSI, model_job

    return model_job(model) != CASSI


def input_convention(model: nn.Module, clip: bool | None = None) -> str:
    """One line: the inputs an exported ``model`` takes (range, channel order, layout, sizes) and the output it gives."""
    from ..models.jobs import CASSI, REAL_CASSI, RGB_TO_HSI, model_job

    module = getattr(model, "module", model)
    job = model_job(module)
    clip = clips_output(module) if clip is None else clip
    multiple = int(getattr(module, "size_multiple", 1))
    bands = int(getattr(module, "out_channels", 0))
    output = f"output float32 N x {bands} x H x W{', clipped to [0, 1]' if clip else ''}"
    if job == CASSI:
        return (f"inputs x (the measurement shifted back and scaled by 2 / {bands}) float32 N x {bands} x H x W and mask (the "
                f"shifted 3-D coded aperture, values in [0, 1]) N x {bands} x H x (W + {module.mask_width_extra}), H and W multiples of "
                f"{multiple}, no padding inside; {output}")
    sizes = (f"any H and W (reflect-padded inside to a multiple of {multiple}, the output cropped back)" if multiple > 1
             else "any H and W")
    if job == REAL_CASSI:
        return (f"input x: the raw measurement float32 N x 1 x H x (W + {module.measurement_extra_width}), clipped to [0, 1] "
                f"and scaled to a maximum of 0.8 as the official real-data test code does; {sizes}; {output}")
    if job == RGB_TO_HSI:
        return (f"input x: float32 N x 3 x H x W (NCHW), RGB, each image min-max normalised to [0, 1] ((x - min) / (max - min), "
                f"as the official MST++ test code); {sizes}; {output}")
    channels = int(getattr(module, "in_channels", 3))
    order = {1: "grey", 3: "RGB", 6: "the left then the right view, RGB each (dual pixel)"}.get(channels, f"{channels} channels")
    return (f"input x: float32 N x {channels} x H x W (NCHW), {order}, values in [0, 1] (8-bit / 255, 16-bit / 65535); "
            f"{sizes}; {output}")


def _exportable(model: nn.Module, clip: bool | None = None) -> tuple[nn.Module, bool]:
    module = getattr(model, "module", model)  # glmha.optimize's wrapper: export the model itself
    mask_guided = bool(getattr(module, "mask_guided", False))
    if mask_guided:  # the CASSI MST takes its two inputs as they are, and its output is not clipped
        return module.eval(), True
    return AnySize(module, clips_output(module) if clip is None else clip).eval(), False


def _example(module: nn.Module, mask_guided: bool, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    inner = getattr(module, "model", module)
    weight = next(inner.parameters())
    x = torch.rand(1, int(inner.in_channels), height, width, generator=generator).to(weight)
    if not mask_guided:
        return (x,)
    mask = (torch.rand(1, inner.dim, height, width + inner.mask_width_extra, generator=generator) > 0.5).to(weight)
    return x, mask


def export_sizes(model: nn.Module, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The ``sizes`` for :func:`export_model` of an example input of ``height x width``.

    That size, to trace, and a second one of other height and width, to check that the file's
    H and W are dynamic. Raises :class:`ValueError` for a size ``model`` cannot take: below its
    size multiple, or, for the CASSI MST (which takes its sizes as they are), not a multiple of it.
    """
    module = getattr(model, "module", model)  # glmha.optimize's wrapper, as export_model
    multiple = int(getattr(module, "size_multiple", 1))
    mask_guided = bool(getattr(module, "mask_guided", False))
    if min(height, width) < multiple or (mask_guided and (height % multiple or width % multiple)):
        raise ValueError(f"size must be at least {multiple} (and a multiple of {multiple} for CASSI models), got {height} {width}")
    # padded image models: sizes off the multiple exercise the padding too
    second = (height + multiple * 3, width + multiple * 5) if mask_guided else (height + 13, width + 29)
    return (height, width), second


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    fmt: str = "onnx",
    sizes: tuple[tuple[int, int], ...] = ((64, 64), (48, 80)),
    opset: int | None = None,
    *,
    overwrite: bool = True,
    clip: bool | None = None,
) -> ExportResult:
    """Write ``model`` as ``fmt`` (``"onnx"`` or ``"torchscript"``) with dynamic H and W, atomically.

    The first of ``sizes`` is the example input the export traces; the file is then run at
    every size (onnxruntime for ONNX, when installed; ``torch.jit.load`` for TorchScript) and
    compared with the PyTorch model. Returns the largest absolute difference seen. ``opset``
    (ONNX only) is honoured or refused (:func:`check_opset`), never silently replaced; with
    ``overwrite=False`` an existing ``path`` is never replaced. ``clip`` (default: as the commands,
    :func:`clips_output`) puts the clip of the output to [0, 1] into the file, so that it gives
    what ``glmha restore`` and ``glmha reconstruct`` write; :func:`input_convention` says what it takes.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if opset is not None:
        check_opset(opset, fmt)
    module, mask_guided = _exportable(model, clip)
    example = _example(module, mask_guided, *sizes[0])
    names = ["x", "mask"] if mask_guided else ["x"]
    path = Path(path)
    if fmt == "onnx":
        dynamic = {name: {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC} for name in ("x", "mask")[: len(example)]}
        if not mask_guided:
            dynamic = {"x": dynamic["x"]}

        def write(tmp: str) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, example, tmp, dynamo=True, dynamic_shapes=dynamic, input_names=names,
                                  output_names=["output"], opset_version=opset, external_data=False, verbose=False)
    else:
        def write(tmp: str) -> None:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, example, check_trace=False)
                torch.jit.save(traced, tmp)

    def write_checked(tmp: str) -> None:
        write(tmp)
        if fmt == "onnx" and opset is not None:
            written = _onnx_opset(tmp)
            if written != opset:  # the exporter converts to its own opset where it cannot write the one asked for
                raise ValueError(f"the exporter wrote ONNX opset {written}, not the requested {opset}; choose --opset {written} "
                                 "or leave --opset out")

    atomic_write(path, write_checked, replace=overwrite)
    diff = check_export(module, path, fmt, mask_guided, sizes)
    return ExportResult(path, fmt, list(sizes), diff, input_convention(model, getattr(module, "clip", False)))


# The first opset torch.onnx's exporter (dynamo=True) writes; older ones it converts up to this.
MIN_ONNX_OPSET = 18


def check_opset(opset: int, fmt: str = "onnx") -> None:
    """Refuse an ONNX opset the exporter cannot write (:class:`ValueError` saying which it can)."""
    if fmt != "onnx":
        raise ValueError(f"an opset applies to ONNX files only, not {fmt}; leave it out")
    try:
        import onnx
    except ImportError:
        raise ValueError("ONNX export needs the onnx package: pip install 'glmha[export]'") from None
    newest = int(onnx.defs.onnx_opset_version())
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_ONNX_OPSET <= opset <= newest:
        raise ValueError(f"ONNX opset {opset} cannot be written: this exporter writes opsets {MIN_ONNX_OPSET} to {newest}")


def _onnx_opset(path: str | os.PathLike) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(entry.version) for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def check_export(module: nn.Module, path: Path, fmt: str, mask_guided: bool, sizes) -> float | None:
    """Run the exported file at each size and return the largest absolute difference to PyTorch."""
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            return None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        run = lambda inputs: torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(["x", "mask"], inputs)})[0])  # noqa: E731
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in favour of torch.export
            loaded = torch.jit.load(str(path))
        run = lambda inputs: loaded(*inputs)  # noqa: E731
    worst = 0.0
    for index, (height, width) in enumerate(sizes):
        inputs = _example(module, mask_guided, height, width, seed=index + 1)
        with torch.no_grad():
            expected = module(*inputs)
            got = run(inputs)
        if got.shape != expected.shape:
            raise RuntimeError(f"the exported model gives shape {tuple(got.shape)} at {height}x{width}, PyTorch {tuple(expected.shape)}")
        worst = max(worst, float((got.float() - expected.float()).abs().max()))
    return worst
