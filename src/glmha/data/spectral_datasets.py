"""The spectral tasks' datasets, as the trainer consumes them.

They wrap the loaders of :mod:`glmha.data.hyperspectral`, :mod:`glmha.data.synthetic_hsi`
and :mod:`glmha.data.cassi` to yield the trainer's dicts and to make every random draw a
function of ``(seed, item, sample number)``: the wrapped loaders draw from torch's global
generator, so each training sample runs under a forked generator seeded from those numbers
(exact resume, identical streams across processes).

- RGB-to-HSI (MST++): ``{"input": rgb 3 x h x w, "target": cube 31 x h x w, "name"}``
- CASSI (MST): ``{"target": cube 28 x h x w, "mask": coded aperture h x w, "name"}``; the task
  simulates the measurement from the cube and the mask (:class:`glmha.engine.tasks.CASSITask`).
- Real CASSI (the real-data MST): ``{"input": noisy measurement h x (w + 54), "target": cube
  28 x h x w, "mask": the crop of the coded aperture that took it, "name"}``; the dataset
  simulates the camera (:func:`glmha.data.cassi.real_measurement`), so the shot noise is
  seeded like every other draw, and the network takes ``input`` alone (:class:`glmha.engine.tasks.RealCASSITask`).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import cassi, hyperspectral
from .restoration import DatasetError


def _split_key(key) -> tuple[int, int]:
    return (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), -1)


@contextmanager
def _seeded_torch(*parts: int):
    """Run a block under torch's CPU generator seeded from ``parts``, restoring it afterwards."""
    seed = int(np.random.SeedSequence([p + 1 for p in parts]).generate_state(1)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _random_crop_and_augment(arrays, crop_size, augment, rng, dtype=np.float32):
    h, w = arrays[0].shape[-2:]
    if crop_size:
        if h < crop_size or w < crop_size:
            raise DatasetError(f"scene of {h}x{w} is smaller than the crop size {crop_size}")
        top, left = int(rng.integers(h - crop_size + 1)), int(rng.integers(w - crop_size + 1))
        arrays = [a[..., top : top + crop_size, left : left + crop_size] for a in arrays]
    if augment:  # the official rotations by 90 degrees and flips
        rotations, flip_w, flip_h = int(rng.integers(4)), bool(rng.integers(2)), bool(rng.integers(2))
        arrays = [hyperspectral.augment(np.asarray(a), rotations, flip_w, flip_h) for a in arrays]
    return [torch.from_numpy(np.ascontiguousarray(a, dtype=dtype)) for a in arrays]


class ARAD1KPairs(Dataset):
    """NTIRE 2022 (ARAD_1K) pairs for MST++: :class:`glmha.data.hyperspectral.ARAD1K`, seeded per sample.

    Arguments as ``ARAD1K`` (``root``, ``split``, ``crop_size``, ``stride``, ``augment``, ...).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", crop_size: int | None = 128, stride: int = 8,
                 augment: bool = True, seed: int = 0, **kwargs):
        if not Path(root).is_dir():
            raise DatasetError(f"dataset folder not found: {root}")
        self.inner = hyperspectral.ARAD1K(root, split=split, crop_size=crop_size, stride=stride, augment=augment, **kwargs)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key) -> dict:
        index, sample = _split_key(key)
        with _seeded_torch(self.seed, index, sample):
            rgb, cube = self.inner[index]
        return {"input": rgb, "target": cube, "name": self.inner.names[index // self.inner.patches_per_image]}


class SyntheticRGBToHSI(Dataset):
    """Built-in RGB-to-HSI pairs (:class:`glmha.data.synthetic_hsi.SyntheticHSI`, 31 bands), with
    random crops and the official rotations/flips when training."""

    def __init__(self, count: int = 8, size: int = 64, crop_size: int | None = None, augment: bool = False,
                 seed: int = 0, response: str = "nikon_5100"):
        from .synthetic_hsi import SyntheticHSI

        self.scenes = SyntheticHSI(count=count, size=size, task="rgb2hsi", seed=seed, response=response)
        self.crop_size, self.augment, self.seed = crop_size, augment, seed

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, key) -> dict:
        index, sample = _split_key(key)
        rgb, cube = self.scenes[index]
        rng = np.random.default_rng([self.seed, index, sample + 1])
        rgb, cube = _random_crop_and_augment([rgb.numpy(), cube.numpy()], self.crop_size if sample >= 0 else None,
                                             self.augment and sample >= 0, rng)
        return {"input": rgb, "target": cube, "name": f"synthetic_scene_{index:03d}"}


def _mask(mask: str | os.PathLike | None, size: tuple[int, int], mask_seed: int) -> torch.Tensor:
    if mask is None:
        return cassi.random_mask(*size, seed=mask_seed)
    if not Path(mask).is_file():
        raise DatasetError(f"coded aperture not found: {mask}")
    return cassi.load_mask(mask)


class CAVETrainingCubes(Dataset):
    """MST training samples: random 256 crops or 4-crop mosaics of the CAVE scenes
    (:class:`glmha.data.hyperspectral.CASSIPatches`), with the coded aperture ``mask`` (``.mat``, key ``mask``).

    ``batch_layout`` fixes the kind of every position of a batch, as the official
    ``shuffle_crop`` does: with a batch of 5, two rotated/flipped crops then three mosaics
    (``[crop, crop, mosaic, mosaic, mosaic]``). Its length must equal ``train.batch_size``:
    sample number ``n`` of the run takes the kind ``batch_layout[n % len(batch_layout)]``.
    """

    KINDS = ("crop", "mosaic")

    def __init__(self, root: str | os.PathLike, mask: str | os.PathLike, crop_size: int = 256, length: int = 5000,
                 batch_layout: list[str] | tuple[str, ...] = ("crop", "crop", "mosaic", "mosaic", "mosaic"),
                 augment: bool = True, seed: int = 0):
        if not Path(root).is_dir():
            raise DatasetError(f"dataset folder not found: {root}")
        if not batch_layout or set(batch_layout) - set(self.KINDS):
            raise DatasetError(f"batch_layout must be a non-empty list of {self.KINDS}, got {batch_layout}")
        self.inner = hyperspectral.CASSIPatches(hyperspectral.load_cave_scenes(root), crop_size, length, 0.0, augment)
        self.batch_layout = list(batch_layout)
        self.mask = _mask(mask, (crop_size, crop_size), 0)
        if tuple(self.mask.shape) != (crop_size, crop_size):
            raise DatasetError(f"the coded aperture {mask} is {tuple(self.mask.shape)}, the crops {crop_size}x{crop_size}")
        self.seed = seed

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key) -> dict:
        index, sample = _split_key(key)
        with _seeded_torch(self.seed, index, sample):
            cube = self.inner.sample(self.batch_layout[max(sample, 0) % len(self.batch_layout)] == "mosaic")
        return {"target": cube, "mask": self.mask, "name": f"sample_{index}"}


class KAISTScenes(Dataset):
    """The 10 KAIST simulation test scenes (``Truth/scene*.mat``, key ``img``) with the coded aperture ``mask``."""

    def __init__(self, root: str | os.PathLike, mask: str | os.PathLike):
        if not Path(root).is_dir():
            raise DatasetError(f"dataset folder not found: {root}")
        self.cubes = hyperspectral.load_kaist_scenes(root)
        self.names = [p.stem for p in sorted(Path(root).glob("*.mat"))]
        self.mask = _mask(mask, tuple(self.cubes.shape[-2:]), 0)
        if self.mask.shape != self.cubes.shape[-2:]:
            raise DatasetError(f"the coded aperture {mask} is {tuple(self.mask.shape)}, the scenes {tuple(self.cubes.shape[-2:])}")

    def __len__(self) -> int:
        return len(self.cubes)

    def __getitem__(self, key) -> dict:
        index, _ = _split_key(key)
        return {"target": self.cubes[index].float(), "mask": self.mask, "name": self.names[index]}


class SyntheticCASSI(Dataset):
    """Built-in 28-band scenes (:class:`glmha.data.synthetic_hsi.SyntheticHSI`) with a seeded random
    binary coded aperture of ``size`` (or ``crop_size``) pixels; training crops and the official
    rotations/flips are drawn per sample."""

    def __init__(self, count: int = 8, size: int = 64, crop_size: int | None = None, augment: bool = False,
                 seed: int = 0, mask_seed: int = 0):
        from .synthetic_hsi import SyntheticHSI

        self.scenes = SyntheticHSI(count=count, size=size, task="cassi", seed=seed)
        side = crop_size or size
        self.mask = cassi.random_mask(side, side, seed=mask_seed)
        self.crop_size, self.augment, self.seed = crop_size, augment, seed

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, key) -> dict:
        index, sample = _split_key(key)
        rng = np.random.default_rng([self.seed, index, sample + 1])
        (cube,) = _random_crop_and_augment([self.scenes[index].numpy()], self.crop_size, self.augment and sample >= 0, rng)
        return {"target": cube, "mask": self.mask, "name": f"synthetic_scene_{index:03d}"}


# ----------------------------------------------------------------------------- real CASSI
def _real_aperture(mask: str | os.PathLike | None, height: int, width: int) -> torch.Tensor:
    """The real camera's coded aperture from ``mask`` (``.mat``, key ``mask``), at least ``height x width``."""
    if mask is None:
        raise DatasetError("real CASSI data needs the camera's coded aperture: set mask (e.g. TSA_real_data/mask.mat)")
    aperture = _mask(mask, (height, width), 0)
    if aperture.shape[0] < height or aperture.shape[1] < width:
        raise DatasetError(f"the coded aperture {mask} ({aperture.shape[0]}x{aperture.shape[1]}) is smaller than the scenes ({height}x{width})")
    return aperture


def _mask_crop(mask: torch.Tensor, size: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """A random ``size`` window of the coded aperture, drawn independently of the scene's crop (as officially)."""
    (mh, mw), (h, w) = mask.shape, size
    top, left = int(rng.integers(mh - h + 1)), int(rng.integers(mw - w + 1))
    return mask[top:top + h, left:left + w]


def _real_cassi_item(cube: np.ndarray, mask: torch.Tensor, rng: np.random.Generator, augment: bool, sensor: dict, name: str) -> dict:
    """Crop the aperture, rotate/flip the cube (``augment``), and simulate the camera's noisy measurement."""
    aperture = _mask_crop(mask, cube.shape[-2:], rng)
    # The measurement is made from the float64 scene, as officially: its photon counts are floored.
    (target,) = _random_crop_and_augment([cube], None, augment, rng, dtype=np.float64)
    generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
    measurement = cassi.real_measurement(target[None], aperture, generator=generator, **sensor)[0]
    return {"input": measurement.float(), "target": target.float(), "mask": aperture, "name": name}


class RealCASSITraining(Dataset):
    """The official real-data MST training samples (MST ``real/train_code``).

    Each sample: one of the two scene sets (CAVE ``CAVE_512_28``, KAIST ``KAIST_CVPR2021``)
    with equal probability, one of its scenes, a random ``crop_size`` crop of it, an
    independent random crop of the real coded aperture ``mask`` (``TSA_real_data/mask.mat``,
    660 x 660), the official rotations/flips of the cube (``augment``), and the camera's
    measurement with shot noise (``quantum_efficiency``, ``bit_depth``, ``gain``; see
    :func:`glmha.data.cassi.real_measurement`). ``length`` samples make an epoch (official:
    20000 // (crop_size // 96)**2 = 1250 at 384). Either set may be left out (``None``).
    """

    def __init__(self, cave: str | os.PathLike | None, kaist: str | os.PathLike | None, mask: str | os.PathLike,
                 crop_size: int = 384, length: int = 1250, augment: bool = True, seed: int = 0,
                 cave_key: str = "data_slice", kaist_key: str = "HSI", cave_scale: float = hyperspectral.REAL_CAVE_SCALE,
                 quantum_efficiency: float = cassi.REAL_QUANTUM_EFFICIENCY, bit_depth: int = cassi.REAL_BIT_DEPTH,
                 gain: float = cassi.REAL_GAIN):
        self.sources = []
        for folder, key, scale, what in ((cave, cave_key, cave_scale, "CAVE scenes"), (kaist, kaist_key, 1.0, "KAIST scenes")):
            if folder is not None:
                if not Path(folder).is_dir():
                    raise DatasetError(f"dataset folder not found: {folder}")
                scenes = hyperspectral.SceneFiles(folder, key, scale, what)
                for path, shape in zip(scenes.paths, scenes.shapes):
                    if min(shape[1:]) < crop_size:
                        raise DatasetError(f"{path}: scene of {shape[1]}x{shape[2]} is smaller than the crop size {crop_size}")
                self.sources.append(scenes)
        if not self.sources:
            raise DatasetError("real CASSI training needs the CAVE or the KAIST scenes (or both)")
        self.mask = _real_aperture(mask, crop_size, crop_size)
        self.crop_size, self.length, self.augment, self.seed = crop_size, length, augment, seed
        self.sensor = {"quantum_efficiency": quantum_efficiency, "bit_depth": bit_depth, "gain": gain}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key) -> dict:
        index, sample = _split_key(key)
        rng = np.random.default_rng([self.seed, index, sample + 1])
        scenes = self.sources[int(rng.integers(len(self.sources)))]
        scene = int(rng.integers(len(scenes)))
        _, h, w = scenes.shapes[scene]
        size = self.crop_size
        cube = scenes.window(scene, int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1)), size, size)
        return _real_cassi_item(cube, self.mask, rng, self.augment, self.sensor, f"sample_{index}")


class RealCASSIScenes(Dataset):
    """Whole test scenes measured as the real camera would (not an official test: real data has no ground truth).

    Scenes from ``root`` (``.mat``, variable ``key``; default: the KAIST simulation truth,
    ``TSA_simu_data/Truth``, key ``img``), each seen through its own crop of the coded
    aperture ``mask`` with the simulated shot noise, both fixed by ``(seed, scene)``.
    """

    def __init__(self, root: str | os.PathLike, mask: str | os.PathLike, key: str = "img", seed: int = 0,
                 quantum_efficiency: float = cassi.REAL_QUANTUM_EFFICIENCY, bit_depth: int = cassi.REAL_BIT_DEPTH,
                 gain: float = cassi.REAL_GAIN):
        if not Path(root).is_dir():
            raise DatasetError(f"dataset folder not found: {root}")
        self.scenes = hyperspectral.SceneFiles(root, key, what="test scenes")
        self.names = [p.stem for p in self.scenes.paths]
        self.mask = _real_aperture(mask, max(s[1] for s in self.scenes.shapes), max(s[2] for s in self.scenes.shapes))
        self.seed = seed
        self.sensor = {"quantum_efficiency": quantum_efficiency, "bit_depth": bit_depth, "gain": gain}

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, key) -> dict:
        index, _ = _split_key(key)
        _, h, w = self.scenes.shapes[index]
        rng = np.random.default_rng([self.seed, index])
        return _real_cassi_item(self.scenes.window(index, 0, 0, h, w), self.mask, rng, False, self.sensor, self.names[index])


class SyntheticRealCASSI(Dataset):
    """Built-in 28-band scenes (:class:`glmha.data.synthetic_hsi.SyntheticHSI`) seen by a simulated real camera.

    The coded aperture is a seeded random binary ``mask_size`` x ``mask_size`` mask (the real
    one is 660 x 660); every sample takes an independent crop of it, the official
    rotations/flips (``augment``) and the simulated shot noise, as :class:`RealCASSITraining`.
    Training samples draw a ``crop_size`` crop of the scene; evaluation items (and
    ``crop_size=None``) use the whole scene with a crop and noise fixed by ``(seed, index)``.
    """

    def __init__(self, count: int = 8, size: int = 64, crop_size: int | None = None, augment: bool = False,
                 seed: int = 0, mask_size: int = 660, mask_seed: int = 0,
                 quantum_efficiency: float = cassi.REAL_QUANTUM_EFFICIENCY, bit_depth: int = cassi.REAL_BIT_DEPTH,
                 gain: float = cassi.REAL_GAIN):
        from .synthetic_hsi import SyntheticHSI

        if mask_size < (crop_size or size):
            raise DatasetError(f"mask_size ({mask_size}) must be at least the scene or crop size ({crop_size or size})")
        self.scenes = SyntheticHSI(count=count, size=size, task="cassi", seed=seed)
        self.mask = cassi.random_mask(mask_size, mask_size, seed=mask_seed)
        self.crop_size, self.augment, self.seed = crop_size, augment, seed
        self.sensor = {"quantum_efficiency": quantum_efficiency, "bit_depth": bit_depth, "gain": gain}

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, key) -> dict:
        index, sample = _split_key(key)
        rng = np.random.default_rng([self.seed, index, sample + 1])
        training = sample >= 0
        (cube,) = _random_crop_and_augment([self.scenes[index].numpy()], self.crop_size if training else None, False, rng)
        return _real_cassi_item(cube.numpy(), self.mask, rng, self.augment and training, self.sensor,
                                f"synthetic_scene_{index:03d}")
