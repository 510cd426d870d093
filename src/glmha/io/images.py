"""Image files for the command line: find them, read them as tensors, write PNGs, restore a batch of files."""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .files import atomic_write
from ..validation import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def find_images(specs: Sequence[str | os.PathLike], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Files named by ``specs``: files, folders (their files with ``suffixes``, sorted) or glob patterns.

    Raises :class:`InputError` naming the spec that matched nothing, or a named path that is
    neither a file nor a folder (a FIFO, a device). Entries of a folder that are not regular
    files are listed too, for the reader to report and skip them.
    """
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if not p.is_dir() and p.suffix.lower() in suffixes)
            if not matches:
                raise InputError(f"folder {path} holds no {', '.join(suffixes)} files")
        elif path.is_file():
            matches = [path]
        elif path.exists():
            raise InputError(f"{path} is not a regular file (a FIFO, socket or device)")
        else:
            matches = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if not Path(p).is_dir())
            if not matches:
                raise InputError(f"no such file, folder or matching files: {spec}")
        found.extend(m for m in matches if m not in found)
    return found


def check_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` if it is a non-empty regular file; otherwise :class:`InputError` saying what it is.

    Checked before opening: opening a FIFO would block, a folder or device cannot be decoded.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"no such {what}: {path}") from None
    except OSError as err:
        raise InputError(f"cannot access {what} {path}: {err.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path} is a folder, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a regular file but a FIFO, socket or device (expected: {what})")
    if info.st_size == 0:
        raise InputError(f"{path} is empty (0 bytes)")
    return path


# Pillow modes the readers decode; any other (LAB, HSV, I;16S, ...) is refused by name.
# Alpha is dropped, not composited: the colours are read as stored.
_GREY_MODES = {"1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_COLOUR_MODES = {"P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
READABLE_MODES = tuple(sorted(_GREY_MODES | _COLOUR_MODES))
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
_TIFF_BITS_PER_SAMPLE = 258


def _open_pillow(path: Path):
    """Pillow's lazy open (the header only), with its decompression bomb warning made an error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"cannot read image {path}: {_bomb_message(str(err))}") from None
    except UnidentifiedImageError:
        raise InputError(f"cannot read image {path}: not an image file (or a format Pillow does not know)") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"cannot read image {path}: {err}") from None


def _bomb_message(text: str) -> str:
    numbers = re.findall(r"\d+", text)
    if len(numbers) >= 2:
        return (f"{int(numbers[0]):,} pixels, more than the {int(numbers[1]):,} Pillow allows (PIL.Image.MAX_IMAGE_PIXELS): "
                "a decompression bomb? Raise that limit to read it")
    return text


def check_image_file(path: str | os.PathLike) -> Path:
    """For readers that decode with OpenCV themselves (the official scoring): a non-empty regular
    file, and, for PNG and JPEG names, not cut short."""
    path = check_regular_file(path, "image file")
    _check_complete(path, {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower()))
    return path


def _check_complete(path: Path, image_format: str | None) -> None:
    """Refuse PNG and JPEG files cut short: OpenCV would decode their missing rows as grey without an error."""
    if image_format not in ("PNG", "JPEG"):
        return
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 4096))
        tail = f.read()
    if image_format == "PNG" and not tail.endswith(_PNG_END):
        raise InputError(f"cannot read image {path}: the PNG file is truncated (no IEND chunk at its end)")
    if image_format == "JPEG" and b"\xff\xd9" not in tail:  # JPEG data never holds this marker before the end
        raise InputError(f"cannot read image {path}: the JPEG file is truncated (no end-of-image marker)")


def _bits_per_sample(path: Path, image) -> int:
    if image.format == "PNG":
        with open(path, "rb") as f:
            header = f.read(25)
        return header[24] if len(header) == 25 and header[:8] == _PNG_SIGNATURE else 8
    if image.format == "TIFF":
        bits = image.tag_v2.get(_TIFF_BITS_PER_SAMPLE, (8,))
        return int(bits[0] if isinstance(bits, tuple) else bits)
    return 16 if image.mode.startswith("I;16") else 8


def read_image(path: str | os.PathLike, channels: int = 3, grey_conversion: str | None = None) -> torch.Tensor:
    """Read an image file as a ``1 x channels x H x W`` float tensor in [0, 1] (see :func:`read_image_and_depth`)."""
    return read_image_and_depth(path, channels, grey_conversion)[0]


READ_DEPTHS = ("native", "8")


def read_image_and_depth(
    path: str | os.PathLike, channels: int = 3, grey_conversion: str | None = None, read_depth: str = "native"
) -> tuple[torch.Tensor, int]:
    """Read an image file as a ``1 x channels x H x W`` float tensor in [0, 1], and its bit depth (8 or 16).

    ``read_depth="native"`` keeps the file's precision (8 or 16 bits, float); ``"8"`` reads
    it as the official Restormer test scripts do, ``cv2.imread`` in 8-bit colour (a 16-bit
    file gives its high byte).

    Decoded by :func:`read_image_array` with Pillow: ``channels`` is 3 (RGB; grey images are
    repeated, alpha dropped) or 1 (luminance, 0.299 R + 0.587 G + 0.114 B; with
    ``grey_conversion="opencv"`` OpenCV's own ``IMREAD_GRAYSCALE`` decoding, as the official
    Restormer grey-denoising test reads its inputs). ``.npy`` arrays (``H x W`` or
    ``H x W x C``; float, uint8, uint16 or bool) are read too. Unreadable files raise
    :class:`InputError`.
    """
    if read_depth not in READ_DEPTHS:
        raise InputError(f"read depth must be one of {list(READ_DEPTHS)}, got {read_depth!r}")
    opencv_grey = channels == 1 and grey_conversion == "opencv"
    if opencv_grey:
        array, depth = read_image_array(path, channels, "opencv", 8 if read_depth == "8" else 16)
    elif read_depth == "8":
        array, depth = read_image_array(path, channels, "opencv", 8)
    else:
        array, depth = read_image_array(path, channels, "pillow")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None], depth


def read_image_array(
    path: str | os.PathLike, channels: int = 3, decoder: str = "pillow", bit_depth: int | None = None
) -> tuple[np.ndarray, int]:
    """An image file as float32 ``H x W x channels`` in [0, 1], and its bit depth (8 or 16; float files: 16).

    Decoded by :func:`decode_image`, scaled by :func:`image_to_float`; grey files are repeated
    to RGB, colour files made grey (``channels=1``) by the luma 0.299 R + 0.587 G + 0.114 B
    (with ``decoder="opencv"`` by OpenCV's own conversion).
    """
    if channels not in (1, 3):
        raise InputError(f"images can be read with 1 or 3 channels, the model expects {channels}")
    stored = decode_image(path, decoder, bit_depth, grey=channels == 1 and decoder == "opencv")
    array, depth = image_to_float(stored, path)
    if channels == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif channels == 1 and array.shape[-1] == 3:
        array = array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    return np.ascontiguousarray(array), depth


def decode_image(path: str | os.PathLike, decoder: str = "pillow", bit_depth: int | None = None, grey: bool = False) -> np.ndarray:
    """Decode an image file to an ``H x W x C`` array of its stored values, RGB order, C = 1 (grey) or 3.

    The one image reader of the package: the restore, rank and reconstruct commands and the
    datasets all call it. Every file is first checked: a non-empty regular file, a known
    Pillow mode (:data:`READABLE_MODES`; others are refused by name), not cut short, not
    larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb). Alpha is dropped, not
    composited. Then it is decoded by

    - ``decoder="pillow"``: palette, CMYK and YCbCr files become RGB (Pillow's conversions);
      1-bit files ``bool`` (0/1); 8-bit ``uint8``; 16-bit files of any colour type ``uint16``
      (16-bit colour PNGs and TIFFs by OpenCV: Pillow reduces them to 8 bits); 32-bit float
      files (and float colour TIFFs) float32 as stored; 32-bit integer files ``uint16`` when
      their values fit 0..65535, else an error (their scale is unknown). The EXIF orientation
      is applied. ``.npy`` arrays (``H x W`` or ``H x W x C``) of float, uint8, uint16 or bool.
    - ``decoder="opencv"``: ``cv2.imread`` as the official Restormer and MST++ code reads files:
      ``bit_depth=8`` (default) the 8-bit colour read (16-bit files give their high byte),
      ``bit_depth=16`` keeps 16 bits, ``grey=True`` OpenCV's own grey conversion. 32-bit files
      are refused: the official loaders do not read them.

    Unreadable or unsupported files raise :class:`InputError` naming the file.
    """
    if decoder not in ("pillow", "opencv"):
        raise InputError(f"decoder must be 'pillow' or 'opencv', got {decoder!r}")
    if bit_depth not in (None, 8, 16):
        raise InputError(f"bit depth must be 8 or 16, got {bit_depth}")
    path = check_regular_file(path, "image file")
    if decoder == "pillow" and path.suffix.lower() == ".npy":
        array = _read_npy_image(path)
    else:
        try:
            image = _open_pillow(path)
        except InputError:
            if decoder != "pillow" or path.suffix.lower() not in (".tif", ".tiff"):
                raise
            array = read_opencv(path, _cv2_flags("stored"), quiet=True)  # float colour TIFFs, which Pillow cannot open
            if array is None or array.dtype.kind != "f":
                raise
        else:
            try:
                with image:
                    array = _decode_opened(path, image, decoder, bit_depth, grey)
            except InputError:
                raise
            except (OSError, ValueError, SyntaxError) as err:  # e.g. a corrupt EXIF block
                raise InputError(f"cannot read image {path}: {err}") from None
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"{path}: expected an H x W image with 1 to 4 channels, got shape {array.shape}")
    return np.ascontiguousarray(array[..., :3] if array.shape[-1] >= 3 else array[..., :1])  # alpha dropped


def _decode_opened(path: Path, image, decoder: str, bit_depth: int | None, grey: bool) -> np.ndarray:
    frames = int(getattr(image, "n_frames", 1) or 1)
    if frames > 1 and image.format != "MPO":  # a camera's MPO JPEG holds the photo first and previews after it
        raise InputError(f"{path} holds {frames} frames ({image.format}, animated or multi-page); one image per file is read, "
                         "not its first frame alone: split it into one file per frame first "
                         "(e.g. `ffmpeg -i name.gif name_f%03d.png`, or `tiffsplit` for multi-page TIFF)")
    mode = image.mode
    if mode not in READABLE_MODES:
        raise InputError(f"{path}: unsupported image mode {mode!r} ({image.format}); readable modes: {', '.join(READABLE_MODES)}")
    _check_complete(path, image.format)
    if decoder == "opencv":
        if mode in ("I", "F"):
            raise InputError(f"{path}: 32-bit images (mode {mode!r}) are not read by the official protocol's OpenCV "
                             "decoding; save them as 8- or 16-bit PNGs")
        if grey:
            return read_opencv(path, _cv2_flags("grey16" if bit_depth == 16 else "grey"))
        return read_opencv(path, _cv2_flags("stored" if bit_depth == 16 else "colour"))
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    if _bits_per_sample(path, image) == 16 and mode not in _GREY_MODES:
        array = read_opencv(path, _cv2_flags("stored"))  # Pillow would decode 16-bit colour to 8 bits
    else:
        array = _read_pillow(path, image)
    return apply_exif_orientation(array, orientation)


def _read_pillow(path: Path, image) -> np.ndarray:
    mode = image.mode
    try:
        if mode in ("P", "PA", "CMYK", "YCbCr", "RGBa", "RGBX"):
            image = image.convert("RGBA" if mode in ("PA", "RGBa") or "transparency" in image.info else "RGB")
        elif mode == "La":
            image = image.convert("LA")
        else:
            image.load()
        array = np.asarray(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"cannot read image {path}: {err}") from None
    if mode.startswith("I;16"):
        return array.astype(np.uint16)
    if mode == "I":  # 32-bit integers: a 16-bit file's values (older Pillows decode those so), or of unknown scale
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise InputError(f"{path}: 32-bit integer values from {low} to {high} do not fit 16 bits and their scale is "
                             "unknown; save the image as 16-bit, or as float in [0, 1]")
        return array.astype(np.uint16)
    return array


def _cv2_flags(read: str) -> int:
    import cv2

    return {
        "stored": cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION,  # orientation applied by the caller
        "colour": cv2.IMREAD_COLOR,
        "grey": cv2.IMREAD_GRAYSCALE,
        "grey16": cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH,
    }[read]


def read_opencv(path: Path, flags: int, quiet: bool = False) -> np.ndarray | None:
    """``cv2.imread(path, flags)`` in RGB order (alpha dropped); None (``quiet``) or :class:`InputError` if it cannot decode."""
    import cv2

    try:
        array = opencv_decode(path, flags)
    except cv2.error as err:
        array = None
        reason = str(err).strip().splitlines()[-1]
    else:
        reason = "OpenCV cannot decode it"
    if array is None:
        if quiet:
            return None
        raise InputError(f"cannot read image {path}: {reason}")
    if array.ndim == 3 and array.shape[-1] >= 3:
        array = array[..., 2::-1]  # BGR(A) -> RGB, alpha dropped
    return np.ascontiguousarray(array)


def opencv_decode(path: str | os.PathLike, flags: int) -> np.ndarray | None:
    """``cv2.imread(path, flags)`` (BGR order, None if it cannot decode) for a file name in any bytes.

    OpenCV takes file names as UTF-8 text and crashes on names that are not (a byte 0xff, which
    Python keeps as a surrogate): the bytes are read by Python and decoded from memory instead,
    which gives the same array as ``cv2.imread``.
    """
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise InputError(f"cannot read image {path}: {err.strerror or err}") from None
    return cv2.imdecode(data, flags) if data.size else None


def _read_npy_image(path: Path) -> np.ndarray:
    try:  # no pickles; memory-mapped, so a header promising more than the file holds fails here
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot read {path} as a .npy array: {reason}") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"{path}: expected a .npy array, got an archive of several arrays")
    if array.dtype.kind not in "biuf" or (array.dtype.kind in "iu" and array.dtype not in (np.uint8, np.uint16)):
        raise InputError(f"{path}: unsupported array type {array.dtype}; expected float (values in [0, 1]), uint8, uint16 or bool")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise InputError(f"{path}: expected an H x W or H x W x C (C = 1, 3 or 4) image array, got shape {array.shape}")
    if min(array.shape[:2]) == 0:
        raise InputError(f"{path}: the image array is empty, shape {array.shape}")
    if array.dtype.kind == "f":
        return np.array(array, dtype=np.float32)  # float16 and float64 cast to float32; a copy of the mapped file
    return np.array(array)


def image_to_float(array: np.ndarray, path: str | os.PathLike = "image") -> tuple[np.ndarray, int]:
    """A decoded image (:func:`decode_image`) as float32 in [0, 1], and its bit depth (8 or 16).

    ``uint8`` is divided by 255, ``uint16`` by 65535, ``bool`` gives 0/1. Float values are kept;
    NaN or Inf is an error, values outside [0, 1] are clipped with a warning naming the file.
    """
    if array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535.0), 16
    if array.dtype.kind != "f":
        return array.astype(np.float32) / np.float32(1.0 if array.dtype == bool else 255.0), 8
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"{path}: {int((~np.isfinite(array)).sum())} pixel value(s) are NaN or infinite")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        log.warning("%s: values from %.4g to %.4g lie outside [0, 1]; clipped to [0, 1]", path, low, high)
        array = np.clip(array, 0.0, 1.0)
    return array, 16  # float files are written back with 16 bits


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
    if not bool(torch.isfinite(image).all()):  # NaN would be written as black
        raise InputError("the image holds NaN or infinite values; nothing written")
    if image.dim() == 4:
        image = image[0]
    top, dtype = (255.0, torch.uint8) if bit_depth == 8 else (65535.0, torch.int32)
    array = (image.clamp(0, 1) * top).round().to(dtype).permute(1, 2, 0).numpy()
    array = array if bit_depth == 8 else array.astype(np.uint16)
    return array[..., 0] if array.shape[-1] == 1 else array


def write_png(path: str | os.PathLike, image: torch.Tensor | np.ndarray, bit_depth: int = 8, replace: bool = True) -> Path:
    """Write a [0, 1] tensor (or a uint8 / uint16 array) as an 8- or 16-bit PNG, atomically (``replace=False``: never over an existing file)."""
    array = image if isinstance(image, np.ndarray) else quantize(image, bit_depth)
    if array.dtype == np.uint16:
        import png

        planes = 1 if array.ndim == 2 else array.shape[-1]
        writer = png.Writer(array.shape[1], array.shape[0], greyscale=planes == 1, bitdepth=16)
        rows = array.reshape(array.shape[0], -1)

        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:
                writer.write(f, rows)

        return atomic_write(path, save, replace=replace)
    from PIL import Image

    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"), replace=replace)


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


def prepare_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` if needed and check that files can be written in it; :class:`InputError` says why not."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"the output {output_dir} exists and is not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):  # the real test: permissions, read-only file systems
            pass
    except OSError as err:
        raise InputError(f"cannot write to the output folder {output_dir}: {err.strerror or err}") from None
    return output_dir


def plan_outputs(
    inputs: Sequence[Path | tuple[Path, ...]], output_dir: Path, suffixes: Sequence[str], overwrite: bool = False
) -> list[str]:
    """The output name (the stem) of each input.

    Each input writes ``<output_dir>/<stem><suffix>`` for every suffix. Refuses
    (:class:`InputError`) inputs whose outputs would have the same name (``a.jpg`` and
    ``a.png``, or ``a.png`` of two folders), naming them: renaming one silently would make
    ``a.png`` the output of another input. Refuses too when one of the outputs is one of
    the inputs (the same path, or the same file through a link), and, unless ``overwrite``,
    when any of them exists already.
    """
    sources = [Path(p) for item in inputs for p in (item if isinstance(item, tuple) else (item,))]
    resolved = {p.resolve(): p for p in sources}
    inodes = {}
    for p in sources:
        with contextlib.suppress(OSError):
            info = os.stat(p)
            inodes[(info.st_dev, info.st_ino)] = p
    names, used, existing = [], {}, []
    for item in inputs:
        first = Path(item[0] if isinstance(item, tuple) else item)
        name = first.stem
        if name.casefold() in used:  # case-insensitive file systems (macOS, Windows) would merge A.png and a.png
            raise InputError(f"the inputs {used[name.casefold()]} and {first} would both be written to {output_dir / (name + suffixes[0])}; "
                             "rename one, or run them into separate output folders")
        used[name.casefold()] = first
        names.append(name)
        for suffix in suffixes:
            out = output_dir / f"{name}{suffix}"
            try:
                info = os.stat(out)
            except OSError:
                info = None
            source = resolved.get(out.resolve()) or (inodes.get((info.st_dev, info.st_ino)) if info else None)
            if source is not None:
                raise InputError(f"the output {out} would overwrite the input {source}; choose another output folder")
            if info is not None:
                existing.append(out)
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise InputError(f"the output {existing[0]} exists already{more}; pass --overwrite (overwrite=True) to replace")
    return names
