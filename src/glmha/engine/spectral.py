"""The spectral tasks' datasets, as the trainer consumes them.

They wrap the loaders of :mod:`glmha.data.hyperspectral`, :mod:`glmha.data.synthetic_hsi`
and :mod:`glmha.data.cassi` to yield the trainer's dicts and to make every random draw a
function of ``(seed, item, sample number)``: the wrapped loaders draw from torch's global
generator, so each training sample runs under a forked generator seeded from those numbers
(exact resume, identical streams across processes).

- RGB-to-HSI (MST++): ``{"input": rgb 3 x h x w, "target": cube 31 x h x w, "name"}``
- CASSI (MST): ``{"target": cube 28 x h x w, "mask": coded aperture h x w, "name"}``; the task
  simulates the measurement from the cube and the mask (:class:`glmha.engine.tasks.CASSITask`).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import cassi, hyperspectral
from ..data.restoration import DatasetError


def _split_key(key) -> tuple[int, int]:
    return (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), -1)


@contextmanager
def _seeded_torch(*parts: int):
    """Run a block under torch's CPU generator seeded from ``parts``, restoring it afterwards."""
    seed = int(np.random.SeedSequence([p + 1 for p in parts]).generate_state(1)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _random_crop_and_augment(arrays, crop_size, augment, rng):
    h, w = arrays[0].shape[-2:]
    if crop_size:
        if h < crop_size or w < crop_size:
            raise DatasetError(f"scene of {h}x{w} is smaller than the crop size {crop_size}")
        top, left = int(rng.integers(h - crop_size + 1)), int(rng.integers(w - crop_size + 1))
        arrays = [a[..., top : top + crop_size, left : left + crop_size] for a in arrays]
    if augment:  # the official rotations by 90 degrees and flips
        rotations, flip_w, flip_h = int(rng.integers(4)), bool(rng.integers(2)), bool(rng.integers(2))
        arrays = [hyperspectral.augment(np.asarray(a), rotations, flip_w, flip_h) for a in arrays]
    return [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]


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
        from ..data.synthetic_hsi import SyntheticHSI

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
        from ..data.synthetic_hsi import SyntheticHSI

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
