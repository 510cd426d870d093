"""Hyperspectral data on disk: the NTIRE 2022 (ARAD_1K) layout, CAVE and KAIST scenes, and a user's own cubes.

File formats, as the official MST++ and MST code read them:

- **MATLAB v7.3** ``.mat`` (an HDF5 file; NTIRE 2022 ``Train_Spec/*.mat``, key ``cube``):
  MATLAB writes arrays column-major, so HDF5 holds them with the dimensions reversed
  (``31 x 512 x 482`` for a 482 x 512 x 31 cube). :func:`read_mat` undoes that and returns
  the array in MATLAB's order.
- **MATLAB v5** ``.mat`` (read with :func:`scipy.io.loadmat`; CAVE ``cave_1024_28/*.mat``,
  key ``img_expand`` or ``img``, 16-bit counts scaled by 1/65536; KAIST
  ``TSA_simu_data/Truth/scene*.mat``, key ``img``, already in [0, 1]).
- ``.npy`` cubes of the user's own data.
- Real-data MST training scenes (:class:`SceneFiles`): CAVE ``CAVE_512_28/*.mat`` (key
  ``data_slice``, 512 x 512 x 28, 16-bit counts scaled by 1/65535) and KAIST
  ``KAIST_CVPR2021/*.mat`` (key ``HSI``, 2704 x 3376 x 28, in [0, 1]), both clipped to [0, 1].

Cubes are returned as float32 ``C x H x W`` (bands first), RGB images as float32
``3 x H x W``. NTIRE RGB images are min-max normalised per image to [0, 1], as the official
MST++ loader does, decoded with OpenCV as it decodes them.

The official MST++ augmentation (:func:`augment`) rotates by a random multiple of 90
degrees and flips at random, identically for the RGB patch and its cube; random draws use
torch's generator, so ``torch.manual_seed`` (and DataLoader worker seeding) controls them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io.mat import check_numeric, is_hdf5_mat, mat_variables, read_mat, write_mat

__all__ = [
    "ARAD1K",
    "CASSIPatches",
    "CUBE_KEYS",
    "CubeFolder",
    "SceneFiles",
    "augment",
    "cube_patch_grid",
    "load_cave_scenes",
    "load_kaist_scenes",
    "mosaic",
    "random_augment",
    "read_cube",
    "read_mat",
    "read_rgb",
    "read_split",
    "write_mat",
]

# Keys tried, in order, when a cube file is read without naming one.
CUBE_KEYS = ("cube", "img_expand", "img", "rad", "hsi", "data")
CAVE_SCALE = 1.0 / 65536.0
REAL_CAVE_SCALE = 1.0 / 65535.0  # the real-data training code divides CAVE_512_28 by 65535


def _to_chw(array: np.ndarray, layout: str, path: Path, dtype: type = np.float32) -> np.ndarray:
    if array.ndim != 3:
        raise ValueError(f"{path}: a hyperspectral cube must be 3-D, got shape {array.shape}")
    if layout == "auto":  # the bands are the shortest axis of a cube
        layout = "chw" if array.shape[0] < min(array.shape[1:]) else "hwc"
    if layout == "hwc":
        array = array.transpose(2, 0, 1)
    elif layout != "chw":
        raise ValueError(f"layout must be 'hwc', 'chw' or 'auto', got {layout!r}")
    return np.ascontiguousarray(array, dtype=dtype)


def read_cube(path: str | os.PathLike, key: str | None = None, layout: str | None = None, scale: float = 1.0,
              dtype: type = np.float32) -> np.ndarray:
    """Read a hyperspectral cube (``.mat`` of any version, or ``.npy``) as ``C x H x W`` times ``scale`` (float32, or ``dtype``).

    ``key`` defaults to the first of :data:`CUBE_KEYS` the file holds (or its only variable).
    ``layout`` is the order of the stored array (a ``.mat`` variable in MATLAB's order):
    ``"hwc"``, ``"chw"``, or ``"auto"`` (the bands are the shortest axis). The default is
    ``"hwc"`` for ``.mat`` files (the MATLAB convention of every public dataset) and
    ``"auto"`` for ``.npy``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such cube file: {path}")
    if path.suffix.lower() == ".npy":
        try:
            array = check_numeric(np.load(path, allow_pickle=False), path, None)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"cannot read {path} as a .npy array: {(str(err).strip() or type(err).__name__).splitlines()[0]}") from None
    elif path.suffix.lower() == ".mat":
        if key is None:
            names = mat_variables(path)
            found = [k for k in CUBE_KEYS if k in names]
            if found:
                key = found[0]
            elif len(names) == 1:
                key = names[0]
            else:
                raise KeyError(f"{path}: no cube variable among {names}; pass key= (tried {list(CUBE_KEYS)})")
        array = read_mat(path, key)
    else:
        raise ValueError(f"{path}: unsupported cube format {path.suffix!r}; use .mat or .npy")
    if layout is None:
        layout = "auto" if path.suffix.lower() == ".npy" else "hwc"
    cube = _to_chw(array, layout, path, dtype)
    return cube * cube.dtype.type(scale) if scale != 1.0 else cube


def read_rgb(path: str | os.PathLike, normalize: str = "minmax", read_depth: str = "8") -> np.ndarray:
    """Read an RGB image as float32 ``3 x H x W``.

    ``normalize="minmax"`` maps the image's own minimum and maximum to 0 and 1 (the official
    MST++ loader); ``"255"`` divides by 255 (8-bit reads only). ``read_depth="8"`` decodes as
    the official loaders do, ``cv2.imread`` in 8-bit colour (a 16-bit file gives its high
    byte); ``"native"`` keeps 16-bit and float files at their precision, and reads 8-bit
    files exactly as ``"8"`` does.
    """
    from ..io.images import READ_DEPTHS, decode_image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    if read_depth not in READ_DEPTHS:
        raise ValueError(f"read depth must be one of {list(READ_DEPTHS)}, got {read_depth!r}")
    stored = decode_image(path, "pillow") if read_depth == "native" else None
    if stored is None or stored.dtype.kind not in "uf" or stored.dtype == np.uint8:
        stored = decode_image(path, "opencv")  # the official loader's decoder, cv2.imread in 8-bit colour
    elif normalize != "minmax":
        raise ValueError(f"{path}: a {stored.dtype} image keeps its precision only with min-max normalisation")
    rgb = np.float32(stored)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    if normalize == "minmax":
        low, high = rgb.min(), rgb.max()
        rgb = (rgb - low) / (high - low) if high > low else np.zeros_like(rgb)
    elif normalize == "255":
        rgb = rgb / 255.0
    else:
        raise ValueError(f"normalize must be 'minmax' or '255', got {normalize!r}")
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def read_split(path: str | os.PathLike) -> list[str]:
    """Scene names listed one per line in an NTIRE split file (``split_txt/train_list.txt``), without extensions."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such split list: {path}")
    names = [Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"split list {path} is empty")
    return names


def augment(array: np.ndarray, rotations: int, flip_width: bool, flip_height: bool) -> np.ndarray:
    """Rotate a ``C x H x W`` array by ``rotations`` x 90 degrees, then flip its width and/or height (official order)."""
    array = np.rot90(array, rotations, axes=(1, 2))
    if flip_width:
        array = array[:, :, ::-1]
    if flip_height:
        array = array[:, ::-1, :]
    return np.ascontiguousarray(array)


def random_augment(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Apply one random :func:`augment` (drawn from torch's generator) to every array alike."""
    rotations = int(torch.randint(0, 4, ()))
    flip_width, flip_height = (bool(v) for v in torch.randint(0, 2, (2,)).tolist())
    return tuple(augment(a, rotations, flip_width, flip_height) for a in arrays)


def cube_patch_grid(height: int, width: int, crop_size: int, stride: int) -> tuple[int, int]:
    """Number of patch rows and columns of a regular grid (the official ``patch_per_colum/line``)."""
    if crop_size > height or crop_size > width:
        raise ValueError(f"crop size {crop_size} is larger than the image ({height}x{width})")
    if stride < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    return (height - crop_size) // stride + 1, (width - crop_size) // stride + 1


class _PatchGrid(Dataset):
    """Items are patches on a regular grid over a list of same-size images, image-major (the official indexing)."""

    def _setup_grid(self, height: int, width: int, crop_size: int | None, stride: int) -> None:
        self.crop_size, self.stride = crop_size, stride
        self.rows, self.cols = (1, 1) if crop_size is None else cube_patch_grid(height, width, crop_size, stride)
        self.patches_per_image = self.rows * self.cols

    def _window(self, index: int) -> tuple[int, slice, slice]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} patches")
        image, patch = divmod(index, self.patches_per_image)
        if self.crop_size is None:
            return image, slice(None), slice(None)
        row, col = divmod(patch, self.cols)
        top, left = row * self.stride, col * self.stride
        return image, slice(top, top + self.crop_size), slice(left, left + self.crop_size)


class ARAD1K(_PatchGrid):
    """NTIRE 2022 spectral recovery (ARAD_1K) pairs: ``(rgb 3 x h x w, cube 31 x h x w)`` float32 tensors.

    Layout of ``root``: ``Train_Spec/<name>.mat`` (v7.3, key ``cube``, 482 x 512 x 31),
    ``Train_RGB/<name>.jpg``, ``split_txt/{train,valid}_list.txt``; the official code reads
    both splits from the ``Train_*`` folders (``spec_dir`` / ``rgb_dir`` override them).
    With ``crop_size`` the items are the patches of a grid with ``stride`` over every image
    (official training: 128 and 8); with ``crop_size=None`` whole images (official
    validation). Cubes are read patch by patch from disk (h5py slicing), so nothing is
    preloaded. ``augment`` applies the official random rotations and flips (default: for
    the train split only). ``names`` replaces the split list.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        crop_size: int | None = 128,
        stride: int = 8,
        augment: bool | None = None,
        spec_dir: str = "Train_Spec",
        rgb_dir: str = "Train_RGB",
        names: Sequence[str] | None = None,
    ):
        self.root = Path(root)
        if names is None:
            names = read_split(self.root / "split_txt" / f"{split}_list.txt")
        self.names = sorted(names)
        self.spec_paths = [self.root / spec_dir / f"{n}.mat" for n in self.names]
        self.rgb_paths = [self.root / rgb_dir / f"{n}.jpg" for n in self.names]
        for path in self.spec_paths + self.rgb_paths:
            if not path.is_file():
                raise FileNotFoundError(f"ARAD_1K: missing {path} (listed in the {split} split)")
        self.augment = split == "train" if augment is None else augment
        height, width = self._cube_size(self.spec_paths[0])
        if crop_size is not None and crop_size > min(height, width):
            raise ValueError(f"{self.spec_paths[0]}: the cube is {height}x{width}, smaller than the crop size {crop_size}")
        self._setup_grid(height, width, crop_size, stride)
        self.height, self.width = height, width

    @staticmethod
    def _cube_size(path: Path) -> tuple[int, int]:
        import h5py

        if not h5py.is_hdf5(path):
            raise ValueError(f"{path} is not a MATLAB v7.3 (HDF5) file, as NTIRE 2022 cubes are")
        with h5py.File(path, "r") as mat:
            if "cube" not in mat:
                raise KeyError(f"{path} has no variable 'cube'; it holds {sorted(mat.keys())}")
            _, width, height = mat["cube"].shape  # stored reversed: bands x W x H
        return height, width

    def __len__(self) -> int:
        return self.patches_per_image * len(self.names)

    def read_cube_window(self, image: int, rows: slice, cols: slice) -> np.ndarray:
        import h5py

        path = self.spec_paths[image]
        with h5py.File(path, "r") as mat:
            if "cube" not in mat:
                raise KeyError(f"{path} has no variable 'cube'; it holds {sorted(mat.keys())}")
            stored = mat["cube"]
            if stored.shape[1:] != (self.width, self.height):
                raise ValueError(f"{path}: cube is {stored.shape[2]}x{stored.shape[1]}, the others {self.height}x{self.width}")
            window = stored[:, cols, rows]  # bands x w x h
        return np.ascontiguousarray(window.transpose(0, 2, 1), dtype=np.float32)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, rows, cols = self._window(index)
        rgb = read_rgb(self.rgb_paths[image])
        if rgb.shape[1:] != (self.height, self.width):
            raise ValueError(f"{self.rgb_paths[image]} is {rgb.shape[1]}x{rgb.shape[2]}, its cube {self.height}x{self.width}")
        rgb = rgb[:, rows, cols]
        cube = self.read_cube_window(image, rows, cols)
        if self.augment:
            rgb, cube = random_augment(rgb, cube)
        return torch.from_numpy(np.ascontiguousarray(rgb)), torch.from_numpy(cube)


def _mat_files(folder: str | os.PathLike, what: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: no such folder {folder}")
    files = sorted(folder.glob("*.mat"))
    if not files:
        raise FileNotFoundError(f"{what}: no .mat files in {folder}")
    return files


def load_cave_scenes(folder: str | os.PathLike, scale: float = CAVE_SCALE) -> list[np.ndarray]:
    """CAVE training scenes for CASSI (``cave_1024_28/*.mat``, key ``img_expand`` or ``img``), float32 ``28 x H x W`` each, times 1/65536."""
    scenes = []
    for path in _mat_files(folder, "CAVE scenes"):
        names = mat_variables(path)
        key = "img_expand" if "img_expand" in names else "img" if "img" in names else None
        if key is None:
            raise KeyError(f"{path} has neither 'img_expand' nor 'img'; it holds {names}")
        scenes.append(read_cube(path, key, layout="hwc", scale=scale))
    return scenes


def load_kaist_scenes(folder: str | os.PathLike) -> torch.Tensor:
    """The KAIST simulation test scenes (``TSA_simu_data/Truth/scene*.mat``, key ``img``) as one ``N x 28 x H x W`` tensor."""
    cubes = [read_cube(path, "img", layout="hwc") for path in _mat_files(folder, "KAIST scenes")]
    shapes = {c.shape for c in cubes}
    if len(shapes) != 1:
        raise ValueError(f"KAIST scenes in {folder} differ in shape: {sorted(shapes)}")
    return torch.from_numpy(np.stack(cubes))


class SceneFiles:
    """The ``.mat`` scenes of a folder (variable ``key``, ``H x W x C`` in MATLAB's order), read window by window.

    MATLAB v7.3 files are read from disk one window at a time (h5py slicing), so scenes as
    large as KAIST's take no memory; older files are loaded whole when the object is made, as
    the official loaders do. Values are the stored numbers times ``scale``, clipped to
    [0, 1], in float64, as the official real-data training code prepares CAVE and KAIST (its
    simulated photon counts are floored from them, so float32 scenes would change a few).
    """

    def __init__(self, folder: str | os.PathLike, key: str, scale: float = 1.0, what: str = "scenes"):
        self.paths = _mat_files(folder, what)
        self.key, self.scale = key, scale
        self.shapes: list[tuple[int, int, int]] = []  # C x H x W per scene
        self._loaded: dict[int, np.ndarray] = {}
        for i, path in enumerate(self.paths):
            if is_hdf5_mat(path):
                self.shapes.append(self._hdf5_shape(path))
            else:
                cube = read_cube(path, key, layout="hwc", dtype=np.float64)
                self._loaded[i] = self._prepare(cube)
                self.shapes.append(cube.shape)

    def _hdf5_shape(self, path: Path) -> tuple[int, int, int]:
        import h5py

        with h5py.File(path, "r") as mat:
            if self.key not in mat:
                raise KeyError(f"{path} has no variable {self.key!r}; it holds {sorted(k for k in mat.keys() if not k.startswith('#'))}")
            shape = mat[self.key].shape  # stored reversed: C x W x H
        if len(shape) != 3:
            raise ValueError(f"{path}: a hyperspectral cube must be 3-D, got shape {tuple(reversed(shape))}")
        return shape[0], shape[2], shape[1]

    def _prepare(self, cube: np.ndarray) -> np.ndarray:
        # The official code divides by 65535.0; 1 / (1 / 65535) is 65535.0 exactly, so dividing matches it.
        cube = cube / (1.0 / self.scale) if self.scale != 1.0 else cube
        return np.clip(cube, 0.0, 1.0, out=cube)

    def __len__(self) -> int:
        return len(self.paths)

    def window(self, index: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """Rows ``top:top+height`` and columns ``left:left+width`` of scene ``index``, float64 ``C x height x width``."""
        _, h, w = self.shapes[index]
        if top < 0 or left < 0 or top + height > h or left + width > w:
            raise ValueError(f"window {height}x{width} at ({top}, {left}) lies outside scene {self.paths[index]} ({h}x{w})")
        if index in self._loaded:
            return self._loaded[index][:, top:top + height, left:left + width].copy()
        import h5py

        with h5py.File(self.paths[index], "r") as mat:
            window = mat[self.key][:, left:left + width, top:top + height]  # C x w x h
        return self._prepare(np.ascontiguousarray(window.transpose(0, 2, 1), dtype=np.float64))


def mosaic(quarters: Sequence[np.ndarray]) -> np.ndarray:
    """Tile four ``C x h x w`` crops into one ``C x 2h x 2w`` patch (top-left, top-right, bottom-left, bottom-right)."""
    if len(quarters) != 4:
        raise ValueError(f"a mosaic takes 4 crops, got {len(quarters)}")
    top = np.concatenate(quarters[:2], axis=2)
    bottom = np.concatenate(quarters[2:], axis=2)
    return np.concatenate([top, bottom], axis=1)


class CASSIPatches(Dataset):
    """Random training patches from CASSI scenes (``C x H x W`` arrays), as the official MST training samples them.

    Each item is a ``C x crop_size x crop_size`` float32 tensor: with probability
    ``1 - mosaic_probability`` a random crop of a random scene, randomly rotated and flipped;
    otherwise a mosaic of four half-size crops from random scenes (the official code fills
    half of every batch this way). ``length`` is the number of items per epoch (the
    official epoch is 5000 samples).
    """

    def __init__(self, scenes: Sequence[np.ndarray], crop_size: int = 256, length: int = 5000,
                 mosaic_probability: float = 0.5, augment: bool = True):
        if not scenes:
            raise ValueError("CASSIPatches needs at least one scene")
        for i, scene in enumerate(scenes):
            if scene.ndim != 3 or min(scene.shape[1:]) < crop_size:
                raise ValueError(f"scene {i} of shape {scene.shape} is not a C x H x W cube of at least {crop_size}x{crop_size}")
        self.scenes, self.crop_size, self.length = list(scenes), crop_size, length
        self.mosaic_probability, self.augment = mosaic_probability, augment

    def __len__(self) -> int:
        return self.length

    def _crop(self, size: int) -> np.ndarray:
        scene = self.scenes[int(torch.randint(len(self.scenes), ()))]
        # the official np.random.randint(0, h - size) never picks the last position
        top = int(torch.randint(max(scene.shape[1] - size, 1), ()))
        left = int(torch.randint(max(scene.shape[2] - size, 1), ()))
        return scene[:, top:top + size, left:left + size]

    def sample(self, as_mosaic: bool) -> torch.Tensor:
        """One training patch: a mosaic of four unaugmented half-size crops, or a crop rotated and flipped."""
        if as_mosaic:
            patch = mosaic([self._crop(self.crop_size // 2) for _ in range(4)])
        else:
            patch = self._crop(self.crop_size)
            if self.augment:
                (patch,) = random_augment(patch)
        return torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32))

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.sample(float(torch.rand(())) < self.mosaic_probability)


class CubeFolder(_PatchGrid):
    """A user's own hyperspectral cubes (``.mat`` or ``.npy`` in ``folder``) as float32 ``C x h x w`` tensors.

    All cubes must share their size when ``crop_size`` is given (patches on a grid with
    ``stride``, as :class:`ARAD1K`); ``crop_size=None`` yields whole cubes. Cubes are loaded
    once and kept in memory. ``key``, ``layout`` and ``scale`` go to :func:`read_cube`.
    """

    def __init__(self, folder: str | os.PathLike, crop_size: int | None = None, stride: int = 8, augment: bool = False,
                 key: str | None = None, layout: str | None = None, scale: float = 1.0):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder: {folder}")
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".mat", ".npy"))
        if not self.paths:
            raise FileNotFoundError(f"no .mat or .npy cubes in {folder}")
        self.cubes = [read_cube(p, key, layout, scale) for p in self.paths]
        self.augment = augment
        sizes = {c.shape[1:] for c in self.cubes}
        if crop_size is not None:
            for path, cube in zip(self.paths, self.cubes):
                if min(cube.shape[1:]) < crop_size:
                    raise ValueError(f"{path}: cube of {cube.shape[1]}x{cube.shape[2]} is smaller than the crop size {crop_size}")
            if len(sizes) != 1:
                raise ValueError(f"cubes in {folder} differ in size {sorted(sizes)}; patch grids need one size")
        height, width = next(iter(sizes))
        self._setup_grid(height, width, crop_size, stride)

    def __len__(self) -> int:
        return self.patches_per_image * len(self.cubes)

    def __getitem__(self, index: int) -> torch.Tensor:
        image, rows, cols = self._window(index)
        cube = self.cubes[image][:, rows, cols]
        if self.augment:
            (cube,) = random_augment(cube)
        return torch.from_numpy(np.ascontiguousarray(cube))
