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
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from . import degradations as deg

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# ITU-R BT.601 luma, the weights OpenCV's grey conversion (and so the official code) uses.
_GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


class DatasetError(ValueError):
    """A dataset folder or file cannot be used; the message names the path."""


def read_image(path: str | os.PathLike, grayscale: bool = False) -> np.ndarray:
    """Read an image file as float32 ``H x W x C`` in ``[0, 1]`` (8- or 16-bit; alpha dropped)."""
    from skimage.io import imread

    path = Path(path)
    try:
        image = _read_png16(path) if _is_png16(path) else np.asarray(imread(path))
    except Exception as err:  # any decoder failure means the same to the user
        raise DatasetError(f"cannot read image {path}: {err}") from None
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    elif np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    else:
        raise DatasetError(f"image {path} has unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise DatasetError(f"image {path} has shape {image.shape}; expected H x W, H x W x 3 or H x W x 4")
    image = image[..., :3]
    if grayscale and image.shape[-1] == 3:
        image = (image @ _GREY_WEIGHTS)[..., None]
    elif not grayscale and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image)


def _is_png16(path: Path) -> bool:
    # Pillow decodes 16-bit RGB PNGs (DPDD) to 8 bits; those go through pypng instead.
    if path.suffix.lower() != ".png" or not path.is_file():
        return False
    with open(path, "rb") as f:
        header = f.read(25)
    return len(header) == 25 and header[:8] == b"\x89PNG\r\n\x1a\n" and header[24] == 16


def _read_png16(path: Path) -> np.ndarray:
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    image = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    return image.reshape(height, width, info["planes"])


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files of ``folder``, sorted by name; an error if it is missing or has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
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
    return [[listing[name] for listing in listings] for name in sorted(common)]


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
    after cropping (noise on the crop, as the official denoising code does).
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

    def set_patch_size(self, patch_size: int | None) -> None:
        """Change the training crop size (progressive training)."""
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
            inp = self.degrade(target, rng)
        return {"input": _to_tensor(inp), "target": _to_tensor(target), "name": self.name(index)}

    def _crop(self, inp, target, index, rng):
        size = self.patch_size
        h, w = target.shape[:2]
        if inp is not None and inp.shape[:2] != (h, w):
            raise DatasetError(f"{self.name(index)}: input {inp.shape[:2]} and target {(h, w)} differ in size")
        if h < size or w < size:
            raise DatasetError(f"{self.name(index)} is {h}x{w}, smaller than the {size}x{size} training crop")
        top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        window = (slice(top, top + size), slice(left, left + size))
        return (None if inp is None else inp[window]), target[window]


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


class PairedImageFolder(PairedSamples):
    """Input/target images of the same file name in sibling folders of ``root``.

    ``input_dirs`` with several folders stacks them on the channel axis
    (dual-pixel defocus: ``["inputL", "inputR"]`` gives 6 channels).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        input_dirs: str | Sequence[str] = "input",
        target_dir: str = "target",
        patch_size: int | None = None,
        augment: bool = False,
        grayscale: bool = False,
        seed: int = 0,
    ):
        super().__init__(patch_size, augment, seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        input_dirs = [input_dirs] if isinstance(input_dirs, str) else list(input_dirs)
        self.grayscale = grayscale
        self.files = match_files([self.root / d for d in (*input_dirs, target_dir)])

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return str(self.files[index][0])

    def load(self, index, rng):
        *inputs, target = (read_image(p, self.grayscale) for p in self.files[index])
        for path, image in zip(self.files[index], inputs):
            if image.shape[:2] != target.shape[:2]:
                raise DatasetError(f"{path} is {image.shape[:2]} but its target {self.files[index][-1]} is {target.shape[:2]}")
        return np.concatenate(inputs, axis=-1), target


class NoisyImageFolder(PairedSamples):
    """Clean images of ``root`` with additive Gaussian noise drawn per item (Gaussian denoising).

    ``sigma`` is on the 0..255 scale; a ``[low, high]`` pair draws it per sample (blind
    denoising). In evaluation (item by index) the noise is fixed by ``seed`` and the index.
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


class SIDDBlocks(PairedSamples):
    """The SIDD sRGB validation blocks: two ``.mat`` files of ``N x B x H x W x 3`` uint8 arrays."""

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
        return f"image{index // self.blocks:02d}_block{index % self.blocks:02d}"

    def load(self, index, rng):
        i, j = divmod(index, self.blocks)
        return self.noisy[i, j].astype(np.float32) / 255.0, self.target[i, j].astype(np.float32) / 255.0


def read_mat_array(path: str | os.PathLike, key: str) -> np.ndarray:
    """Array ``key`` of a MATLAB ``.mat`` file (v5 through scipy, v7.3 through h5py)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"file not found: {path}")
    try:
        from scipy.io import loadmat

        contents = loadmat(path)
        keys = [k for k in contents if not k.startswith("__")]
        if key in contents:
            return np.asarray(contents[key])
    except NotImplementedError:  # v7.3 files are HDF5
        import h5py

        with h5py.File(path, "r") as f:
            keys = list(f.keys())
            if key in f:
                return np.asarray(f[key]).transpose()  # MATLAB stores column-major
    except Exception as err:
        raise DatasetError(f"cannot read MATLAB file {path}: {err}") from None
    raise DatasetError(f"{path} has no array {key!r}; it holds {keys}")


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
