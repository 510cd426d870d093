"""Datasets of the image restoration tasks, in the official folder layouts, and their
built-in synthetic versions.

Every dataset yields ``{"input": C x H x W, "target": C x H x W, "name": str}`` float32
tensors in ``[0, 1]`` (Gaussian-noisy inputs are not clipped). An item is addressed either
by its index (evaluation: deterministic, full image) or by ``(index, sample_number)``
(training: the random crop, flip/rotation and on-the-fly noise are drawn from a generator
seeded by ``(seed, index, sample_number)``, so a resumed or distributed run sees exactly
the samples an uninterrupted run would).

Official layouts (see ``docs/data.md``):

- deraining: ``Datasets/train/Rain13K/{input,target}``, ``Datasets/test/<set>/{input,target}``
- motion deblurring: ``Datasets/train/GoPro/{input,target}``, ``Datasets/test/{GoPro,HIDE}/{input,target}``
- defocus deblurring (DPDD): ``{inputC,inputL,inputR,target}``; single image reads ``inputC``,
  dual pixel stacks ``inputL`` and ``inputR`` into 6 channels
- Gaussian denoising: folders of clean images (``Datasets/train/DFWB``, ``Datasets/test/CBSD68`` ...),
  noise added on the fly
- real denoising: ``Datasets/train/SIDD/{input_crops,target_crops}`` and the SIDD validation
  blocks ``ValidationNoisyBlocksSrgb.mat`` / ``ValidationGtBlocksSrgb.mat``
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io.mat import read_mat
from ..validation import error_message
from . import degradations as deg

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset folder or file cannot be used; the message names the path."""


def read_image(path: str | os.PathLike, grayscale: bool = False, bit_depth: int = 8) -> np.ndarray:
    """Read an image file as float32 ``H x W x C`` in ``[0, 1]``, decoded as the official code decodes it.

    The official Restormer scripts read every image with OpenCV, and so does this function
    (:func:`glmha.io.images.decode_image` with ``decoder="opencv"``, which first checks the file
    and refuses modes and 32-bit files the official loaders do not read): ``bit_depth=8`` is
    ``cv2.imread`` in colour (16-bit files come back as their high byte, as the official 8-bit
    loaders see them), ``grayscale=True`` is ``cv2.IMREAD_GRAYSCALE`` (colour files converted by
    the decoder, as the official grey denoising code converts them), and ``bit_depth=16`` keeps
    16-bit files at full precision (``cv2.IMREAD_UNCHANGED``, the official dual-pixel loader;
    with ``grayscale``, ``IMREAD_ANYDEPTH``). Values are divided by 255 or 65535; alpha is
    dropped and grey files are repeated to RGB unless ``grayscale``.
    """
    from ..io.images import decode_image
    from ..validation import InputError

    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    try:
        image = decode_image(path, "opencv", bit_depth, grey=grayscale)
    except InputError as err:
        message = str(err)
        raise DatasetError(message if str(path) in message else f"cannot read image {path}: {message}") from None
    if image.shape[-1] == 1 and not grayscale:
        image = np.repeat(image, 3, axis=-1)
    scale = 255.0 if image.dtype == np.uint8 else 65535.0
    return np.ascontiguousarray(image.astype(np.float32) / np.float32(scale))


def natural_key(name: str) -> list:
    """Sort key comparing digit runs as numbers ("img2" before "img10"), the order of natsort's
    ``natsorted`` that the official scripts list files in."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files of ``folder`` in natural order; an error if it is missing or has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()), key=lambda p: natural_key(p.name))
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def match_files(folders: Sequence[Path]) -> list[list[Path]]:
    """Group files of the same name across ``folders``; an error lists names not in all of them."""
    listings = [{p.name: p for p in list_images(f)} for f in folders]
    common = set(listings[0]).intersection(*listings[1:])
    for folder, listing in zip(folders, listings):
        unmatched = sorted(set(listing) - common)
        if unmatched:
            others = ", ".join(str(f) for f in folders if f != folder)
            shown = ", ".join(unmatched[:5]) + (f" (and {len(unmatched) - 5} more)" if len(unmatched) > 5 else "")
            raise DatasetError(f"{len(unmatched)} file(s) in {folder} have no partner of the same name in {others}: {shown}")
    return [[listing[name] for listing in listings] for name in sorted(common, key=natural_key)]


def augment_geometric(arrays: Sequence[np.ndarray], mode: int) -> list[np.ndarray]:
    """One of the 8 flips/rotations of the square's symmetry group (``mode`` in 0..7), the same for all arrays."""
    out = []
    for a in arrays:
        if mode & 4:
            a = a[:, ::-1]
        out.append(np.ascontiguousarray(np.rot90(a, k=mode & 3)))
    return out


class PairedSamples(Dataset):
    """Base of the restoration datasets: random crop, flips/rotations and on-the-fly degradation.

    Subclasses implement ``__len__``, ``name(index)`` and ``load(index, rng)`` returning
    ``(input or None, target)``; with ``None`` the input is made by ``degrade(target, rng)``
    after cropping (noise on the crop, as the official denoising code does), or by
    ``degrade_for_test(target, index)`` when the item is read by index (evaluation).

    Training crops follow the official loaders: an image smaller than ``patch_size`` is first
    padded at the bottom and right by mirroring with the edge pixel repeated (OpenCV's
    ``BORDER_REFLECT``), then a ``patch_size`` window is cut at a random position.
    """

    def __init__(self, patch_size: int | None = None, augment: bool = False, seed: int = 0):
        self.patch_size = patch_size
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    def load(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray]:
        raise NotImplementedError

    def degrade(self, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no on-the-fly degradation")

    def degrade_for_test(self, target: np.ndarray, index: int, rng: np.random.Generator) -> np.ndarray:
        return self.degrade(target, rng)

    def set_patch_size(self, patch_size: int | None) -> None:
        """Change the training crop size."""
        self.patch_size = patch_size

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, sample = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), -1)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = np.random.default_rng([self.seed, index, sample + 1])
        inp, target = self.load(index, rng)
        if self.patch_size:
            inp, target = self._crop(inp, target, index, rng)
        if self.augment:
            mode = int(rng.integers(8))
            inp, target = (augment_geometric([inp, target], mode) if inp is not None else (None, augment_geometric([target], mode)[0]))
        if inp is None:
            inp = self.degrade(target, rng) if sample >= 0 else self.degrade_for_test(target, index, rng)
        return {"input": _to_tensor(inp), "target": _to_tensor(target), "name": self.name(index)}

    def _crop(self, inp, target, index, rng):
        size = self.patch_size
        h, w = target.shape[:2]
        if inp is not None and inp.shape[:2] != (h, w):
            raise DatasetError(f"{self.name(index)}: input {inp.shape[:2]} and target {(h, w)} differ in size")
        if h < size or w < size:
            inp, target = (None if inp is None else pad_reflect(inp, size)), pad_reflect(target, size)
            h, w = target.shape[:2]
        top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        window = (slice(top, top + size), slice(left, left + size))
        return (None if inp is None else inp[window]), target[window]


def pad_reflect(image: np.ndarray, size: int) -> np.ndarray:
    """Pad an ``H x W x C`` image at the bottom and right to at least ``size x size`` as the official
    loaders do with ``cv2.copyMakeBorder(..., cv2.BORDER_REFLECT)``: mirrored with the edge pixel
    repeated, and mirrored again when the pad is longer than the image (NumPy's "symmetric")."""
    pad_h, pad_w = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if pad_h == 0 and pad_w == 0:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w)) + ((0, 0),) * (image.ndim - 2), mode="symmetric")


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


class PairedImageFolder(PairedSamples):
    """Input/target images of the same file name in sibling folders of ``root``.

    ``input_dirs`` with several folders stacks them on the channel axis (dual-pixel defocus:
    ``["inputL", "inputR"]`` gives 6 channels). ``bit_depth`` and ``grayscale`` choose how files
    are decoded (:func:`read_image`). ``groups`` names subsets of the images for separate
    averages, each a ``.npy`` file (relative to ``root``) of 1-based indices into the images in
    natural order, as DPDD's ``indoor_labels.npy`` and ``outdoor_labels.npy``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        input_dirs: str | Sequence[str] = "input",
        target_dir: str = "target",
        patch_size: int | None = None,
        augment: bool = False,
        grayscale: bool = False,
        bit_depth: int = 8,
        groups: dict[str, str] | None = None,
        seed: int = 0,
    ):
        super().__init__(patch_size, augment, seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        input_dirs = [input_dirs] if isinstance(input_dirs, str) else list(input_dirs)
        self.grayscale, self.bit_depth = grayscale, bit_depth
        self.files = match_files([self.root / d for d in (*input_dirs, target_dir)])
        self.groups = {name: self._read_group(self.root / path) for name, path in (groups or {}).items()}

    def _read_group(self, path: Path) -> list[int]:
        if not path.is_file():
            raise DatasetError(f"group label file not found: {path}")
        try:
            labels = np.asarray(np.load(path, allow_pickle=False)).ravel()
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot read group labels {path}: {err}") from None
        if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 1 or labels.max() > len(self.files):
            raise DatasetError(f"{path} must hold 1-based image indices between 1 and {len(self.files)}")
        return [int(i) - 1 for i in labels]

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return str(self.files[index][0])

    def load(self, index, rng):
        *inputs, target = (read_image(p, self.grayscale, self.bit_depth) for p in self.files[index])
        for path, image in zip(self.files[index], inputs):
            if image.shape[:2] != target.shape[:2]:
                raise DatasetError(f"{path} is {image.shape[:2]} but its target {self.files[index][-1]} is {target.shape[:2]}")
        return np.concatenate(inputs, axis=-1), target


class NoisyImageFolder(PairedSamples):
    """Clean images of ``root`` with additive Gaussian noise (Gaussian denoising).

    ``sigma`` is on the 0..255 scale; a ``[low, high]`` pair draws it per sample (blind
    training). Training noise is drawn per sample. An item read by index (evaluation) gets
    the official test noise: NumPy's legacy generator reseeded with 0 for every image,
    ``normal(0, sigma / 255, H x W x C)`` added to the float32 image, as the official test
    scripts do, so the noisy inputs equal theirs.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        sigma: float | Sequence[float] = 25.0,
        patch_size: int | None = None,
        augment: bool = False,
        grayscale: bool = False,
        seed: int = 0,
    ):
        super().__init__(patch_size, augment, seed)
        self.files = list_images(root)
        self.sigma = sigma if isinstance(sigma, (int, float)) else tuple(sigma)
        self.grayscale = grayscale

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return str(self.files[index])

    def load(self, index, rng):
        return None, read_image(self.files[index], self.grayscale)

    def degrade(self, target, rng):
        return deg.add_gaussian_noise(target, rng, self.sigma)

    def degrade_for_test(self, target, index, rng):
        if not isinstance(self.sigma, (int, float)):
            raise DatasetError(f"a test set needs one noise level; sigma is the range {list(self.sigma)}")
        return official_test_noise(target, self.sigma)


def official_test_noise(image: np.ndarray, sigma: float) -> np.ndarray:
    """The noisy test input of the official Gaussian denoising scripts: ``np.random.seed(0)`` then
    ``image += np.random.normal(0, sigma / 255, image.shape)`` on a float32 image."""
    noise = np.random.RandomState(0).normal(0, sigma / 255.0, image.shape)
    return (image + noise).astype(np.float32)


class InputImages(PairedSamples):
    """Degraded images alone, for distillation (``glmha distill``): there is no ground truth.

    Items are ``{"input", "target", "name"}`` with ``target`` a copy of the input, a placeholder
    that distillation replaces with the teacher's output. ``normalize="minmax"`` maps each image's
    minimum and maximum to 0 and 1, as the official MST++ loader prepares RGB inputs.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        patch_size: int | None = None,
        augment: bool = False,
        grayscale: bool = False,
        bit_depth: int = 8,
        normalize: str = "none",
        seed: int = 0,
    ):
        super().__init__(patch_size, augment, seed)
        if normalize not in ("none", "minmax"):
            raise DatasetError(f"normalize must be 'none' or 'minmax', got {normalize!r}")
        self.files = list_images(root)
        self.grayscale, self.bit_depth, self.normalize = grayscale, bit_depth, normalize

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return str(self.files[index])

    def load(self, index, rng):
        image = read_image(self.files[index], self.grayscale, self.bit_depth)
        if self.normalize == "minmax":
            low, high = image.min(), image.max()
            image = (image - low) / (high - low) if high > low else np.zeros_like(image)
        return image, image.copy()


class SIDDBlocks(PairedSamples):
    """The SIDD sRGB validation blocks: two ``.mat`` files of ``N x B x H x W x 3`` uint8 arrays.

    Blocks are named ``<image>_<block>`` (1-based, ``0001_01``) as the official test script names its PNGs.
    """

    def __init__(
        self,
        noisy_mat: str | os.PathLike,
        target_mat: str | os.PathLike,
        noisy_key: str = "ValidationNoisyBlocksSrgb",
        target_key: str = "ValidationGtBlocksSrgb",
        seed: int = 0,
    ):
        super().__init__(None, False, seed)
        self.noisy = read_mat_array(noisy_mat, noisy_key)
        self.target = read_mat_array(target_mat, target_key)
        if self.noisy.shape != self.target.shape or self.noisy.ndim != 5:
            raise DatasetError(
                f"SIDD blocks must be two N x B x H x W x 3 arrays of one shape, got {self.noisy.shape} ({noisy_mat}) "
                f"and {self.target.shape} ({target_mat})"
            )
        self.blocks = self.noisy.shape[1]

    def __len__(self) -> int:
        return self.noisy.shape[0] * self.blocks

    def name(self, index: int) -> str:
        return f"{index // self.blocks + 1:04d}_{index % self.blocks + 1:02d}"

    def load(self, index, rng):
        i, j = divmod(index, self.blocks)
        return self.noisy[i, j].astype(np.float32) / np.float32(255), self.target[i, j].astype(np.float32) / np.float32(255)


class DNDImages(Dataset):
    """The DND benchmark (``info.mat`` and ``images_srgb/0001.mat`` ... in MATLAB v7.3): for each image
    the 20 noisy patches the benchmark scores, cut at the bounding boxes of ``info.mat``.

    Items are ``{"input": 20 x 3 x h x w, "name": "0001"}``; there is no ground truth (the
    benchmark scores submissions online), see :func:`glmha.metrics.protocols.write_dnd_submission`.
    """

    def __init__(self, root: str | os.PathLike):
        import h5py

        self.root = Path(root)
        info_path = self.root / "info.mat"
        if not info_path.is_file():
            raise DatasetError(f"DND info file not found: {info_path}")
        try:
            with h5py.File(info_path, "r") as f:
                info = f["info"]
                refs = info["boundingboxes"]
                # MATLAB stores boxes column-major: each is 4 x 20, rows (top, left, bottom, right), 1-based inclusive
                self.boxes = [np.asarray(info[refs[0][i]]).T.astype(int) for i in range(refs.shape[1])]
        except (OSError, KeyError, ValueError) as err:
            raise DatasetError(f"cannot read DND bounding boxes from {info_path}: {err}") from None
        self.paths = [self.root / "images_srgb" / f"{i + 1:04d}.mat" for i in range(len(self.boxes))]
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} DND image file(s) missing, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key) -> dict:
        import h5py

        index = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        try:
            with h5py.File(self.paths[index], "r") as f:
                noisy = np.asarray(f["InoisySRGB"], dtype=np.float32).T  # H x W x 3
        except (OSError, KeyError) as err:
            raise DatasetError(f"cannot read {self.paths[index]} (variable InoisySRGB): {err}") from None
        patches = [noisy[top - 1 : bottom, left - 1 : right] for top, left, bottom, right in self.boxes[index]]
        if len({p.shape for p in patches}) != 1:
            raise DatasetError(f"{self.paths[index]}: the bounding boxes differ in size")
        return {"input": torch.from_numpy(np.ascontiguousarray(np.stack(patches).transpose(0, 3, 1, 2))), "name": f"{index + 1:04d}"}


def read_mat_array(path: str | os.PathLike, key: str) -> np.ndarray:
    """Array ``key`` of a MATLAB ``.mat`` file (:func:`glmha.io.mat.read_mat`); problems raise :class:`DatasetError`."""
    try:
        return read_mat(path, key)
    except (OSError, ValueError, KeyError) as err:
        raise DatasetError(error_message(err)) from None


SYNTHETIC_TASKS = (
    "deraining",
    "motion_deblurring",
    "defocus_deblurring",
    "dual_pixel_defocus_deblurring",
    "gaussian_denoising",
    "real_denoising",
)


class SyntheticPairs(PairedSamples):
    """Built-in data for a restoration task: crops of scikit-image's photographs, degraded.

    ``num_images`` crops of ``image_size`` pixels are cut from the sample photographs (in turn)
    and degraded once, deterministically from ``seed``; training crops and flips are then drawn
    per sample like the folder datasets. Gaussian noise is drawn per sample (``sigma`` on the
    0..255 scale, a range for blind denoising). See ``docs/data.md``, "Synthetic restoration data".
    """

    def __init__(
        self,
        task: str,
        num_images: int = 8,
        image_size: int = 64,
        patch_size: int | None = None,
        augment: bool = False,
        grayscale: bool = False,
        sigma: float | Sequence[float] = 25.0,
        seed: int = 0,
    ):
        if task not in SYNTHETIC_TASKS:
            raise ValueError(f"unknown synthetic task {task!r}; available: {SYNTHETIC_TASKS}")
        super().__init__(patch_size, augment, seed)
        self.task = task
        self.sigma = sigma if isinstance(sigma, (int, float)) else tuple(sigma)
        photos = deg.load_sample_photos(grayscale=grayscale)
        self.pairs = []
        for i in range(num_images):
            rng = np.random.default_rng([seed, i, 0])
            photo = photos[i % len(photos)]
            h, w = photo.shape[:2]
            if min(h, w) < image_size:
                raise ValueError(f"image_size {image_size} exceeds the smallest sample photo ({h}x{w})")
            top, left = int(rng.integers(h - image_size + 1)), int(rng.integers(w - image_size + 1))
            clean = np.ascontiguousarray(photo[top : top + image_size, left : left + image_size])
            self.pairs.append((self._degrade_once(clean, rng), clean))

    def _degrade_once(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        if self.task == "deraining":
            return deg.add_rain(clean, rng)
        if self.task == "motion_deblurring":
            return deg.convolve(clean, deg.camera_shake_kernel(rng))
        if self.task == "defocus_deblurring":
            return deg.convolve(clean, deg.disk_kernel(rng.uniform(1.5, 5.0)))
        if self.task == "dual_pixel_defocus_deblurring":
            left, right = deg.dual_pixel_kernels(rng.uniform(1.5, 5.0))
            return np.concatenate([deg.convolve(clean, left), deg.convolve(clean, right)], -1)
        if self.task == "real_denoising":
            return deg.add_sensor_noise(clean, rng)
        return None  # Gaussian denoising: noise drawn per sample

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return f"synthetic_{self.task}_{index:03d}"

    def load(self, index, rng):
        return self.pairs[index]

    def degrade(self, target, rng):
        return deg.add_gaussian_noise(target, rng, self.sigma)


def write_synthetic_folder(
    root: str | os.PathLike,
    task: str,
    num_images: int = 4,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a synthetic task in its official folder layout under ``root`` (8-bit PNGs).

    deraining / motion deblurring / real denoising: ``root/{input,target}``; defocus:
    ``root/{inputC,inputL,inputR,target}``; Gaussian denoising: clean images in ``root``.
    Useful to try the folder datasets and the evaluation protocols without the real data.
    """
    from skimage.io import imsave

    root = Path(root)

    def save(folder: str, name: str, image: np.ndarray) -> None:
        (root / folder).mkdir(parents=True, exist_ok=True)
        imsave(root / folder / name, (np.clip(image, 0, 1) * 255).round().astype(np.uint8), check_contrast=False)

    defocus = task in ("defocus_deblurring", "dual_pixel_defocus_deblurring")
    data = SyntheticPairs("dual_pixel_defocus_deblurring" if defocus else task, num_images, image_size, seed=seed)
    for i, (inp, clean) in enumerate(data.pairs):
        name = f"{i:04d}.png"
        if task == "gaussian_denoising":
            save(".", name, clean)
        elif defocus:
            left, right = inp[..., :3], inp[..., 3:]
            save("inputL", name, left)
            save("inputR", name, right)
            save("inputC", name, (left + right) / 2)
            save("target", name, clean)
        else:
            save("input", name, inp)
            save("target", name, clean)
    return root
