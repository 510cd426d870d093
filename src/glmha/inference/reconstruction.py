"""Spectral reconstruction of files for the command line: RGB images with MST++, CASSI measurements with MST.

Real CASSI measurements (the official ``meas_real`` files, 660 x 714) go to the real-data MST
(:class:`glmha.models.mst_real.RealMST`), normalised as the official real test code does.

Cubes are written as ``.mat`` (MATLAB v7.3, variable ``cube``, ``H x W x bands`` as the
NTIRE 2022 and KAIST files hold them, and the band centres in nm as ``bands``, as NTIRE's)
or ``.npy`` (``bands x H x W``, float32, with the band centres in ``<name>.json``). Previews:
an sRGB rendering of each cube through the CIE 1931 observer and a strip of its bands, each
with its own colour scale.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..io.files import atomic_write, claim_outputs
from ..validation import InputError, error_message

log = logging.getLogger(__name__)

CUBE_FORMATS = ("mat", "npy")
MEASUREMENT_SUFFIXES = (".mat", ".npy")
# Variable names tried, in order, for a CASSI measurement in a .mat file.
MEASUREMENT_KEYS = ("meas", "meas_real", "measurement", "y", "Y")


def band_wavelengths(bands: int) -> tuple[float, ...] | None:
    """The band centres (nm) of this package's spectral models by band count: 31 (NTIRE 2022, MST++) or 28 (CASSI, MST)."""
    from ..data.synthetic_hsi import CASSI_WAVELENGTHS, RGB2HSI_WAVELENGTHS

    return {len(RGB2HSI_WAVELENGTHS): RGB2HSI_WAVELENGTHS, len(CASSI_WAVELENGTHS): CASSI_WAVELENGTHS}.get(bands)


def write_cube(path: str | os.PathLike, cube: torch.Tensor | np.ndarray, fmt: str = "mat", wavelengths: Sequence[float] | None = None) -> Path:
    """Write a ``bands x H x W`` cube atomically as ``.mat`` (``cube``, H x W x bands) or ``.npy`` (bands x H x W).

    ``wavelengths`` (band centres, nm) go into the ``.mat`` file as ``bands`` (1 x bands, as
    the NTIRE 2022 files hold them), or beside the ``.npy`` file as ``<name>.json``.
    """
    from ..data.hyperspectral import write_mat

    array = cube.detach().float().cpu().numpy() if isinstance(cube, torch.Tensor) else np.asarray(cube, np.float32)
    if array.ndim == 4:
        array = array[0]
    if wavelengths is not None and len(wavelengths) != array.shape[0]:
        raise InputError(f"{len(wavelengths)} wavelengths for a cube of {array.shape[0]} bands")
    if fmt == "mat":
        variables = {"cube": np.ascontiguousarray(array.transpose(1, 2, 0))}
        if wavelengths is not None:
            variables["bands"] = np.asarray(wavelengths, np.float64)[None]
        return write_mat(path, variables)  # atomic itself
    if fmt == "npy":
        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:  # np.save on a path would append ".npy" to the temporary name
                np.save(f, np.ascontiguousarray(array))

        if wavelengths is not None:
            about = {"layout": "bands x H x W", "wavelengths_nm": [float(w) for w in wavelengths]}
            atomic_write(Path(path).with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(about, indent=1) + "\n"))
        return atomic_write(path, save)
    raise InputError(f"cube format must be one of {CUBE_FORMATS}, got {fmt!r}")


def render_srgb(cube: torch.Tensor | np.ndarray, wavelengths: Sequence[float]) -> np.ndarray:
    """An sRGB rendering (``H x W x 3`` in [0, 1], gamma-encoded) of a ``bands x H x W`` cube.

    Each pixel's spectrum is read as a reflectance under CIE illuminant D65 and integrated
    against the CIE 1931 2-degree observer at the band centres (colour-science's tables,
    trapezoid weights); the XYZ values go to linear sRGB, are white-balanced so that a flat
    spectrum is neutral over the bands the cube covers, scaled so that the 99th percentile is
    1 (an exposure for viewing) and encoded with the sRGB transfer function.
    """
    import colour

    array = cube.detach().float().cpu().numpy() if isinstance(cube, torch.Tensor) else np.asarray(cube, np.float32)
    array = array[0] if array.ndim == 4 else array
    wl = np.asarray(wavelengths, np.float64)
    if array.shape[0] != len(wl):
        raise InputError(f"{len(wl)} wavelengths for a cube of {array.shape[0]} bands")
    cmfs = colour.MSDS_CMFS["CIE 1931 2 Degree Standard Observer"]
    d65 = colour.SDS_ILLUMINANTS["D65"]
    observer = np.stack([np.interp(wl, cmfs.wavelengths, cmfs.values[:, i]) for i in range(3)], axis=1)  # bands x 3
    weights = observer * (np.interp(wl, d65.wavelengths, d65.values) * np.gradient(wl))[:, None]
    xyz = np.tensordot(array.astype(np.float64), weights, axes=([0], [0]))  # H x W x 3
    white = colour.XYZ_to_sRGB(weights.sum(0), apply_cctf_encoding=False)
    linear = colour.XYZ_to_sRGB(xyz, apply_cctf_encoding=False) / white
    linear = linear / max(float(np.percentile(linear, 99)), 1e-12)
    return np.asarray(colour.cctf_encoding(np.clip(linear, 0, 1), function="sRGB"), np.float32)


def plot_band_strip(cube: torch.Tensor | np.ndarray, wavelengths: Sequence[float] | None, path: str | os.PathLike, columns: int = 8) -> Path:
    """A PNG of every band of a ``bands x H x W`` cube, each with its own colour scale (and colour bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    array = cube.detach().float().cpu().numpy() if isinstance(cube, torch.Tensor) else np.asarray(cube, np.float32)
    array = array[0] if array.ndim == 4 else array
    bands = array.shape[0]
    columns = min(columns, bands)
    rows = -(-bands // columns)
    aspect = array.shape[1] / array.shape[2]
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.2 * rows * aspect + 0.4), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index >= bands:
            continue
        band = array[index]
        shown = ax.imshow(band, cmap="gray", vmin=float(band.min()), vmax=float(band.max()))
        ax.set_title(f"{wavelengths[index]:.1f} nm" if wavelengths is not None else f"band {index + 1}", fontsize=8)
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=6)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def write_cube_outputs(
    output_dir: Path, name: str, cube: torch.Tensor, fmt: str, wavelengths: Sequence[float] | None, preview: bool
) -> Path:
    """The cube file, and with ``preview`` ``<name>_srgb.png`` and ``<name>_bands.png`` beside it."""
    from ..io.images import write_png

    written = write_cube(output_dir / f"{name}.{fmt}", cube, fmt, wavelengths)
    if preview:
        if wavelengths is None:
            raise InputError(f"a preview needs the band wavelengths, which are unknown for a {cube.shape[-3]}-band model")
        srgb = render_srgb(cube, wavelengths)
        write_png(output_dir / f"{name}_srgb.png", torch.from_numpy(np.ascontiguousarray(srgb.transpose(2, 0, 1))))
        plot_band_strip(cube, wavelengths, output_dir / f"{name}_bands.png")
    return written


def read_cassi_input(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """A CASSI measurement (``H x W'``) or a cube to simulate one from (3-D), from ``.mat`` or ``.npy``, as float32.

    Integer values (camera counts) are converted to float as they are, without scaling, and a
    warning says so: the simulation models expect the measurement of a [0, 1] cube, the
    real-data ones normalise each measurement anyway. Complex values, MATLAB structs and
    cells, NaN or Inf, and other shapes are errors naming the file.
    """
    from ..data.hyperspectral import read_cube, read_mat
    from ..io.images import check_regular_file

    path = check_regular_file(path, "measurement file")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.dtype.kind not in "biuf":
                raise ValueError(f"unsupported array type {array.dtype}; expected real numbers")
        elif path.suffix.lower() == ".mat":
            array = None
            for name in [key] if key else MEASUREMENT_KEYS:
                try:
                    array = read_mat(path, name)
                    break
                except KeyError:
                    if key:
                        raise
            if array is None:  # no measurement: a scene cube, as the KAIST test files hold
                array = read_cube(path)
        else:
            raise InputError(f"{path}: unsupported file type {path.suffix!r}; use .mat or .npy")
    except (ValueError, KeyError, OSError, EOFError) as err:
        message = (error_message(err) or type(err).__name__).splitlines()[0]
        raise InputError(message if str(path) in message else f"cannot read {path}: {message}") from None
    if array.ndim not in (2, 3):
        raise InputError(f"{path}: expected a 2-D measurement or a 3-D cube, got shape {array.shape}")
    if min(array.shape) == 0:
        raise InputError(f"{path}: the array is empty, shape {array.shape}")
    if array.dtype.kind in "iu":
        log.warning("%s: integer values (%s) converted to float as they are, without scaling", path, array.dtype)
    array = np.array(array, dtype=np.float32)  # a copy: .npy inputs are memory-mapped
    if not np.isfinite(array).all():
        raise InputError(f"{path}: {int((~np.isfinite(array)).sum())} value(s) are NaN or infinite")
    return array


def _plan(paths: list[Path], output_dir: str | os.PathLike, fmt: str, bands: int, preview: bool, overwrite: bool
          ) -> tuple[Path, dict[Path, str], list[Path]]:
    """The checked output folder, each input's output name (see :func:`glmha.io.images.plan_outputs`) and the files to claim."""
    from ..io.images import plan_outputs, prepare_output_dir

    if fmt not in CUBE_FORMATS:
        raise InputError(f"cube format must be one of {CUBE_FORMATS}, got {fmt!r}")
    suffixes = [f".{fmt}"] + ([".json"] if fmt == "npy" and band_wavelengths(bands) else []) + (["_srgb.png", "_bands.png"] if preview else [])
    output_dir = prepare_output_dir(output_dir)
    names = plan_outputs(paths, output_dir, suffixes, overwrite)
    return output_dir, dict(zip(paths, names)), [output_dir / f"{name}{suffix}" for name in names for suffix in suffixes]


@torch.no_grad()
def reconstruct_rgb_files(
    model: nn.Module,
    paths: Iterable[Path],
    output_dir: str | os.PathLike,
    fmt: str = "mat",
    tile: int | str | None = None,
    overlap: int = 32,
    progress: bool = True,
    *,
    max_memory: int | None = None,
    precision: str = "fp32",
    preview: bool = False,
    overwrite: bool = False,
    ensemble: str = "none",
    read_depth: str = "native",
    tile_mode: str = "blend",
) -> tuple[list[Path], list[str]]:
    """RGB images to cubes with an MST++-style model, as the official test code: each image
    min-max normalised, the cube clipped to [0, 1].

    ``read_depth="native"`` keeps the precision of 16-bit and float files (8-bit files are
    decoded as the official ``cv2.imread``); ``"8"`` reads every file at 8 bits, as the
    official script does. ``ensemble="mean"`` or ``"median"`` is the official
    ``forward_ensemble`` (:func:`glmha.inference.ensemble.self_ensemble`, 8 forwards).

    ``tile`` (a side, ``"auto"`` within ``max_memory`` bytes, or None), ``tile_mode``, ``precision`` and
    the tile progress bar as in :func:`glmha.restore`; the cubes carry their band
    wavelengths, ``preview`` adds the renderings (:func:`write_cube_outputs`). Returns the
    written paths and one message per file that could not be read or gave NaN or Inf. The
    outputs are checked first as :func:`glmha.inference.restoration.restore_files` checks them (``overwrite``).
    """
    from tqdm import tqdm

    from ..data.hyperspectral import read_rgb
    from ..validation import check_finite_output
    from .memory import activation_cost, default_memory_budget
    from .restoration import restore

    bands = int(getattr(model, "out_channels", 0) or 0)
    wavelengths = band_wavelengths(bands)
    paths = list(paths)
    output_dir, names, claims = _plan(paths, output_dir, fmt, bands, preview, overwrite)
    cost = activation_cost(model) if tile == "auto" else None
    if tile == "auto":
        max_memory = max_memory or default_memory_budget(next(model.parameters()).device)
    written, failed = [], []
    with claim_outputs(claims):  # a second writer into these names stops here
        for path in tqdm(paths, desc="reconstructing", unit="image", disable=not progress):
            try:
                rgb = torch.from_numpy(read_rgb(path, normalize="minmax", read_depth=read_depth))[None]
                cube = restore(model, rgb, tile=tile, overlap=overlap, max_memory=max_memory, precision=precision, progress=progress,
                               cost=cost, ensemble=ensemble, tile_mode=tile_mode)
                check_finite_output(cube, path)
            except (ValueError, FileNotFoundError) as err:  # InputError included
                failed.append(str(err) if str(path) in str(err) else f"{path}: {err}")
                continue
            written.append(write_cube_outputs(output_dir, names[path], cube.clamp(0, 1), fmt, wavelengths, preview))
    return written, failed


def _measurements(
    paths: Iterable[Path], mask: torch.Tensor | None, bands: int, step: int, key: str | None, device: torch.device,
    failed: list[str], progress: bool,
) -> Iterator[tuple[Path, torch.Tensor]]:
    """Each input as a measurement ``H x W'`` on ``device``, a 3-D cube measured through ``mask`` first.

    With ``mask`` (``H x W``) every measurement must be ``H x (W + step (bands - 1))``. Inputs
    that cannot be read or do not fit get a message in ``failed`` and are skipped.
    """
    from tqdm import tqdm

    from ..data.cassi import mask_3d, measure

    if mask is not None and mask.dim() != 2:
        raise InputError(f"the mask must be a 2-D H x W coded aperture, got shape {tuple(mask.shape)}")
    mask3d = None if mask is None else mask_3d(mask, bands).to(device)
    for path in tqdm(list(paths), desc="reconstructing", unit="file", disable=not progress):
        try:
            array = read_cassi_input(path, key)
        except InputError as err:
            failed.append(str(err))
            continue
        data = torch.from_numpy(array).to(device)
        if data.dim() == 3:  # a scene cube: simulate its measurement
            if mask is None:
                failed.append(f"{path}: a cube {tuple(data.shape)} needs --mask to be measured")
                continue
            if tuple(data.shape) != (bands, *mask.shape):
                failed.append(f"{path}: cube {tuple(data.shape)} does not match {bands} bands of the {mask.shape[0]}x{mask.shape[1]} mask")
                continue
            data = measure(data[None], mask3d, step)[0]
        if mask is not None:
            h, w = mask.shape
            if tuple(data.shape) != (h, w + step * (bands - 1)):
                failed.append(f"{path}: measurement {tuple(data.shape)} does not fit the {h}x{w} mask with {bands} bands "
                              f"(expected {h}x{w + step * (bands - 1)})")
                continue
        yield path, data


@torch.no_grad()
def reconstruct_cassi_files(
    model: nn.Module,
    paths: Iterable[Path],
    mask: torch.Tensor,
    output_dir: str | os.PathLike,
    fmt: str = "mat",
    step: int = 2,
    key: str | None = None,
    progress: bool = True,
    *,
    precision: str = "fp32",
    preview: bool = False,
    overwrite: bool = False,
) -> tuple[list[Path], list[str]]:
    """CASSI measurements (or cubes, measured first through ``mask``) to cubes with an MST model.

    The network takes the official inputs: ``H`` (the shifted-back measurement scaled by
    2 / bands) and the shifted 3-D mask ``Phi``. A measurement is ``H x (W + step (bands - 1))``
    for an ``H x W`` mask. ``precision`` as in :func:`glmha.restore`; the cubes carry their
    band wavelengths, ``preview`` adds the renderings; outputs checked first (``overwrite``, as
    in :func:`reconstruct_rgb_files`). Returns the written paths and one
    message per file that failed.
    """
    from ..data.cassi import mask_3d, mask_input, shift_back
    from ..validation import check_finite_output
    from .restoration import precision_context

    bands = int(model.out_channels)
    multiple = int(getattr(model, "size_multiple", 1))
    if mask.dim() != 2 or mask.shape[0] % multiple or mask.shape[1] % multiple:
        raise InputError(f"the mask must be H x W with both divisible by {multiple} for this model, got {tuple(mask.shape)}")
    device = next(model.parameters()).device
    phi = mask_input(mask_3d(mask, bands).to(device), "Phi", step)
    paths = list(paths)
    output_dir, names, claims = _plan(paths, output_dir, fmt, bands, preview, overwrite)
    written, failed = [], []
    with claim_outputs(claims):  # a second writer into these names stops here
        for path, data in _measurements(paths, mask, bands, step, key, device, failed, progress):
            x = shift_back(data[None] / bands * 2, bands=bands, step=step)
            with precision_context(precision, device):
                cube = model(x, phi).float()
            try:
                check_finite_output(cube, path)
            except InputError as err:
                failed.append(str(err))
                continue
            written.append(write_cube_outputs(output_dir, names[path], cube, fmt, band_wavelengths(bands), preview))
    return written, failed


@torch.no_grad()
def reconstruct_real_cassi_files(
    model: nn.Module,
    paths: Iterable[Path],
    output_dir: str | os.PathLike,
    fmt: str = "mat",
    mask: torch.Tensor | None = None,
    key: str | None = None,
    progress: bool = True,
    *,
    precision: str = "fp32",
    preview: bool = False,
    overwrite: bool = False,
) -> tuple[list[Path], list[str]]:
    """Real CASSI measurements (or cubes, measured through ``mask`` first) to cubes with a real-data MST.

    Each measurement (``H x (W + step (bands - 1))``, e.g. the official ``meas_real``, 660 x
    714) is clipped to [0, 1] and scaled to a maximum of 0.8, and the output cube clipped to
    [0, 1], as the official real test code does. The network does not use the coded aperture;
    when ``mask`` is given, each measurement must fit it. Any size works. ``precision`` and
    ``preview`` as in :func:`reconstruct_cassi_files`. Returns the written paths and one
    message per file that failed.
    """
    from ..data.cassi import normalize_real_measurement
    from ..validation import check_finite_output
    from .restoration import precision_context

    device = next(model.parameters()).device
    bands = int(model.bands)
    paths = list(paths)
    output_dir, names, claims = _plan(paths, output_dir, fmt, bands, preview, overwrite)
    written, failed = [], []
    with claim_outputs(claims):  # a second writer into these names stops here
        for path, data in _measurements(paths, mask, bands, int(model.step), key, device, failed, progress):
            try:
                with precision_context(precision, device):
                    cube = model(normalize_real_measurement(data)[None]).float()
                check_finite_output(cube, path)
            except ValueError as err:  # InputError included: a measurement the model cannot take
                failed.append(str(err) if str(path) in str(err) else f"{path}: {err}")
                continue
            written.append(write_cube_outputs(output_dir, names[path], cube.clamp(0, 1), fmt, band_wavelengths(bands), preview))
    return written, failed


def builtin_real_cassi_inputs(count: int = 4, size: int = 64, seed: int = 0) -> list[tuple[torch.Tensor]]:
    """Real-data MST inputs ``(y,)``: built-in 28-band scenes through crops of a random 660 x 660 aperture, with shot noise."""
    from ..data.spectral_datasets import SyntheticRealCASSI

    scenes = SyntheticRealCASSI(count=count, size=size, seed=seed)
    return [(scenes[i]["input"][None],) for i in range(count)]


def builtin_cassi_inputs(count: int = 4, size: int = 64, seed: int = 0, step: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """MST inputs ``(H, Phi)`` of built-in 28-band scenes seen through a seeded random coded aperture."""
    from ..data.cassi import mask_3d, mask_input, measurement_input, random_mask
    from ..data.synthetic_hsi import SyntheticHSI

    scenes = SyntheticHSI(count=count, size=size, task="cassi", seed=seed)
    mask3d = mask_3d(random_mask(size, size, seed=seed), len(scenes.wavelengths))
    phi = mask_input(mask3d, "Phi", step)
    return [(measurement_input(scenes[i][None], mask3d, "H", step), phi) for i in range(count)]
