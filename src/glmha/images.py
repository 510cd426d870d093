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


def read_image(path: str | os.PathLike, channels: int = 3) -> torch.Tensor:
    """Read an image file as a ``1 x channels x H x W`` float tensor in [0, 1].

    ``channels`` is 3 (RGB; grey images are repeated, alpha dropped) or 1 (luminance).
    8- and 16-bit files keep their full range. Unreadable files raise :class:`InputError`.
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise InputError(f"images can be read with 1 or 3 channels, the model expects {channels}")
    try:
        with Image.open(path) as image:
            image.load()
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {err}") from None
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    # 16-bit files arrive as uint16 ("I;16") or as 32-bit integers (mode "I")
    scale = 1.0 if array.dtype.kind == "f" else (65535.0 if array.dtype.itemsize > 1 else 255.0)
    array = array.astype(np.float32) / scale
    if array.ndim == 2:
        array = array[..., None]
    array = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
    if channels == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif channels == 1 and array.shape[-1] == 3:
        array = array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].clamp_(0, 1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``C x H x W`` or ``1 x C x H x W`` tensor in [0, 1] to an ``H x W (x 3)`` uint8 array."""
    image = image.detach().float().cpu()
    if image.dim() == 4:
        image = image[0]
    array = (image.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def write_png(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> Path:
    """Write a [0, 1] tensor (or a uint8 array) as an 8-bit PNG, atomically."""
    from PIL import Image

    array = image if isinstance(image, np.ndarray) else to_uint8(image)
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
    paths: Iterable[Path],
    output_dir: str | os.PathLike,
    tile: int | None = None,
    overlap: int = 32,
    progress: bool = True,
) -> tuple[list[Path], list[str]]:
    """Restore each image file with ``model`` and write ``<output_dir>/<stem>.png`` (same size as the input).

    Runs on the model's device; images are read and written on the CPU, tiled when ``tile``
    is set (see :func:`glmha.restore`). A file that cannot be read is skipped and reported:
    returns the written paths and one message per skipped file.
    """
    from tqdm import tqdm

    from .inference import restore

    paths = list(paths)
    output_dir = Path(output_dir)
    channels = int(getattr(model, "in_channels", 3))
    written, failed = [], []
    used: set[str] = set()
    for path in tqdm(paths, desc="restoring", unit="image", disable=not progress):
        try:
            image = read_image(path, channels)
        except InputError as err:
            failed.append(str(err))
            continue
        output = restore(model, image, tile=tile, overlap=overlap)
        # inputs with the same stem (a.jpg and a.png, or two folders) must not overwrite each other
        name, n = path.stem, 1
        while name in used:
            n += 1
            name = f"{path.stem}_{n}"
        used.add(name)
        written.append(write_png(output_dir / f"{name}.png", output))
    return written, failed
