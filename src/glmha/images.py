"""Image files for the command line: find them, read them as tensors, write PNGs, restore a batch of files."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import atomic_write
from .validation import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def find_images(specs: Sequence[str | os.PathLike], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Files named by ``specs``: files, folders (their files with ``suffixes``, sorted) or glob patterns.

    Raises :class:`InputError` naming the spec that matched nothing.
    """
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not matches:
                raise InputError(f"folder {path} holds no {', '.join(suffixes)} files")
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
            if not matches:
                raise InputError(f"no such file, folder or matching files: {spec}")
        found.extend(m for m in matches if m not in found)
    return found


def read_image(path: str | os.PathLike, channels: int = 3, grey_conversion: str | None = None) -> torch.Tensor:
    """Read an image file as a ``1 x channels x H x W`` float tensor in [0, 1] (see :func:`read_image_and_depth`)."""
    return read_image_and_depth(path, channels, grey_conversion)[0]


def read_image_and_depth(path: str | os.PathLike, channels: int = 3, grey_conversion: str | None = None) -> tuple[torch.Tensor, int]:
    """Read an image file as a ``1 x channels x H x W`` float tensor in [0, 1], and its bit depth (8 or 16).

    ``channels`` is 3 (RGB; grey images are repeated, alpha dropped) or 1 (luminance,
    0.299 R + 0.587 G + 0.114 B; with ``grey_conversion="opencv"`` OpenCV's own
    ``IMREAD_GRAYSCALE`` decoding, as the official Restormer grey-denoising test reads its
    inputs). 8- and 16-bit files keep their full range (16-bit PNGs of any colour type are
    decoded at 16 bits). The EXIF orientation is applied. Unreadable files raise
    :class:`InputError`.
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise InputError(f"images can be read with 1 or 3 channels, the model expects {channels}")
    path = Path(path)
    try:
        if channels == 1 and grey_conversion == "opencv":
            array = _read_grey_opencv(path)  # OpenCV applies the orientation itself
        else:
            with Image.open(path) as image:
                orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
                if _is_png16(path):  # Pillow would decode 16-bit colour PNGs to 8 bits
                    array = _read_png16(path)
                else:
                    image.load()
                    array = np.asarray(image)
            array = apply_exif_orientation(array, orientation)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise InputError(f"cannot read image {path}: {err}") from None
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    # 16-bit files arrive as uint16 ("I;16") or as 32-bit integers (mode "I")
    depth = 16 if array.dtype.kind in "iu" and array.dtype.itemsize > 1 else 8
    scale = 1.0 if array.dtype.kind == "f" else (65535.0 if depth == 16 else 255.0)
    array = array.astype(np.float32) / scale
    if array.ndim == 2:
        array = array[..., None]
    array = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
    if channels == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif channels == 1 and array.shape[-1] == 3:
        array = array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].clamp_(0, 1), depth


_EXIF_ORIENTATION = 0x0112


def apply_exif_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an ``H x W (x C)`` array as EXIF orientation 1-8 says (what ``PIL.ImageOps.exif_transpose`` does)."""
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(transforms[orientation](array)) if orientation in transforms else array


def _read_grey_opencv(path: Path) -> np.ndarray:
    import cv2

    array = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if array is None:
        raise ValueError("OpenCV cannot decode it")
    return array


def _is_png16(path: Path) -> bool:
    # Pillow decodes 16-bit RGB PNGs (DPDD) to 8 bits; those are decoded by OpenCV instead.
    if path.suffix.lower() != ".png" or not path.is_file():
        return False
    with open(path, "rb") as f:
        header = f.read(25)
    return len(header) == 25 and header[:8] == b"\x89PNG\r\n\x1a\n" and header[24] == 16


def _read_png16(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError("OpenCV cannot decode it")
    if image.ndim == 3:
        image = image[..., 2::-1] if image.shape[-1] >= 3 else image  # BGR(A) -> RGB
    return np.ascontiguousarray(image)


def read_dual_pixel_pair(left: str | os.PathLike, right: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """The left and right views of a dual-pixel image stacked as ``1 x 6 x H x W`` (left first), and the bit depth."""
    left_image, depth = read_image_and_depth(left)
    right_image, right_depth = read_image_and_depth(right)
    if left_image.shape != right_image.shape:
        raise InputError(f"dual-pixel views differ in size: {left} is {tuple(left_image.shape[-2:])}, {right} is {tuple(right_image.shape[-2:])}")
    return torch.cat([left_image, right_image], dim=1), max(depth, right_depth)


def find_dual_pixel_pairs(specs: Sequence[str | os.PathLike], right_specs: Sequence[str | os.PathLike] | None = None) -> list[tuple[Path, Path]]:
    """Left/right view pairs: folders in the DPDD layout (``inputL/`` and ``inputR/``, files of the same
    name), or the left views ``specs`` with the right views ``right_specs``, paired in order."""
    if right_specs:
        left, right = find_images(specs), find_images(right_specs)
        if len(left) != len(right):
            raise InputError(f"{len(left)} left view(s) but {len(right)} right view(s); give the same number, in the same order")
        return list(zip(left, right))
    pairs = []
    for spec in specs:
        folder = Path(spec)
        if not (folder / "inputL").is_dir() or not (folder / "inputR").is_dir():
            raise InputError(f"{spec}: dual-pixel inputs are a folder with inputL/ and inputR/ (the DPDD layout), or left views with --right")
        left = {p.name: p for p in find_images([folder / "inputL"])}
        right = {p.name: p for p in find_images([folder / "inputR"])}
        if set(left) != set(right):
            unmatched = sorted(set(left) ^ set(right))
            raise InputError(f"{folder}: {len(unmatched)} view(s) without a partner of the same name in inputL/ and inputR/: {', '.join(unmatched[:5])}")
        pairs += [(left[name], right[name]) for name in sorted(left)]
    return pairs


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``C x H x W`` or ``1 x C x H x W`` tensor in [0, 1] to an ``H x W (x 3)`` uint8 array."""
    return quantize(image, 8)


def quantize(image: torch.Tensor, bit_depth: int = 8) -> np.ndarray:
    """``C x H x W`` or ``1 x C x H x W`` tensor in [0, 1] to an ``H x W (x 3)`` uint8 or uint16 array (clipped, rounded)."""
    if bit_depth not in (8, 16):
        raise InputError(f"bit depth must be 8 or 16, got {bit_depth}")
    image = image.detach().float().cpu()
    if image.dim() == 4:
        image = image[0]
    top, dtype = (255.0, torch.uint8) if bit_depth == 8 else (65535.0, torch.int32)
    array = (image.clamp(0, 1) * top).round().to(dtype).permute(1, 2, 0).numpy()
    array = array if bit_depth == 8 else array.astype(np.uint16)
    return array[..., 0] if array.shape[-1] == 1 else array


def write_png(path: str | os.PathLike, image: torch.Tensor | np.ndarray, bit_depth: int = 8) -> Path:
    """Write a [0, 1] tensor (or a uint8 / uint16 array) as an 8- or 16-bit PNG, atomically."""
    array = image if isinstance(image, np.ndarray) else quantize(image, bit_depth)
    if array.dtype == np.uint16:
        import png

        planes = 1 if array.ndim == 2 else array.shape[-1]
        writer = png.Writer(array.shape[1], array.shape[0], greyscale=planes == 1, bitdepth=16)
        rows = array.reshape(array.shape[0], -1)

        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:
                writer.write(f, rows)

        return atomic_write(path, save)
    from PIL import Image

    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def builtin_photographs(count: int = 4, size: int = 128, channels: int = 3) -> list[torch.Tensor]:
    """Centre crops of photographs shipped with scikit-image (no download), ``1 x C x size x size``."""
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
    if count > len(names):
        raise InputError(f"there are {len(names)} built-in photographs, asked for {count}")
    images = []
    for name in names[:count]:
        array = getattr(data, name)().astype(np.float32) / 255.0
        h, w = array.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = torch.from_numpy(np.ascontiguousarray(array[top : top + side, left : left + side].transpose(2, 0, 1)))[None]
        crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if channels == 1:
            crop = (crop * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        images.append(crop.clamp(0, 1))
    return images


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
) -> tuple[list[Path], list[str]]:
    """Restore each image file with ``model`` and write ``<output_dir>/<stem>.png`` (same size as the input).

    Runs on the model's device; images are read and written on the CPU, run whole or tiled as
    ``tile`` says (a side, ``"auto"`` for the memory budget ``max_memory``, or None: whole;
    see :func:`glmha.restore`) in ``precision``. A dual-pixel model takes ``(left, right)``
    path pairs. PNGs are written with ``bit_depth`` bits (default: the input's, 8 or 16).
    ``grey_conversion`` is how a 1-channel model reads colour files (:func:`read_image_and_depth`).
    A file that cannot be read is skipped and reported: returns the written paths and one
    message per skipped file.
    """
    from tqdm import tqdm

    from .inference import activation_cost, default_memory_budget, restore

    paths = list(paths)
    output_dir = Path(output_dir)
    channels = int(getattr(model, "in_channels", 3))
    dual_pixel = bool(getattr(getattr(model, "module", model), "dual_pixel_task", False))
    if tile == "auto":  # measured once for all images
        cost = activation_cost(model)
        max_memory = max_memory or default_memory_budget(next(model.parameters()).device)
    else:
        cost = None
    written, failed = [], []
    used: set[str] = set()
    for path in tqdm(paths, desc="restoring", unit="image", disable=not progress):
        try:
            if dual_pixel:
                if not isinstance(path, tuple):
                    raise InputError(f"{path}: the dual-pixel model takes left/right view pairs")
                image, depth = read_dual_pixel_pair(*path)
                path = Path(path[0])
            else:
                image, depth = read_image_and_depth(path, channels, grey_conversion)
        except InputError as err:
            failed.append(str(err))
            continue
        output = restore(model, image, tile=tile, overlap=overlap, max_memory=max_memory, precision=precision,
                         progress=progress, cost=cost)
        # inputs with the same stem (a.jpg and a.png, or two folders) must not overwrite each other
        name, n = path.stem, 1
        while name in used:
            n += 1
            name = f"{path.stem}_{n}"
        used.add(name)
        written.append(write_png(output_dir / f"{name}.png", output, bit_depth or depth))
    return written, failed
