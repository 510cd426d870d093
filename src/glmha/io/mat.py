"""MATLAB ``.mat`` files: reading (v4/v5/v7 through scipy, v7.3 through h5py) and writing (v5 and v7.3).

MATLAB writes arrays column-major, so a v7.3 (HDF5) file holds them with the dimensions
reversed; :func:`read_mat` and :func:`write_mat` undo and redo that, so arrays come and go in
MATLAB's dimension order, as the official loaders see them.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .files import atomic_write

__all__ = ["check_numeric", "is_hdf5_mat", "mat_variables", "read_mat", "write_mat"]


def _scipy_errors() -> tuple[type[BaseException], ...]:
    """What scipy raises for a damaged file; its MatReadError (an empty or truncated file) is no ValueError."""
    from scipy.io.matlab import MatReadError

    return (ValueError, TypeError, OSError, NotImplementedError, MatReadError)


def is_hdf5_mat(path: Path) -> bool:
    """Whether ``path`` is a MATLAB v7.3 file (HDF5) rather than v4/v5/v7."""
    import h5py

    return h5py.is_hdf5(path)


def read_mat(path: str | os.PathLike, key: str) -> np.ndarray:
    """Read variable ``key`` of a MATLAB ``.mat`` file (v4/v5/v7 via scipy, v7.3 via h5py) in MATLAB's dimension order."""
    path = Path(path)
    if not path.is_file():
        if path.exists():  # a folder or FIFO: opening a FIFO would block
            raise ValueError(f"{path} is not a regular file")
        raise FileNotFoundError(f"no such file: {path}")
    if is_hdf5_mat(path):
        import h5py

        try:
            with h5py.File(path, "r") as mat:
                if key not in mat:
                    names = sorted(k for k in mat.keys() if not k.startswith("#"))
                    raise KeyError(f"{path} has no variable {key!r}; it holds {names}")
                if not isinstance(mat[key], h5py.Dataset):
                    raise ValueError(f"{path}: variable {key!r} is a MATLAB struct or group, expected a numeric array")
                array = np.asarray(mat[key])
        except OSError as err:
            raise ValueError(f"cannot read {path} as a MATLAB v7.3 (HDF5) file: {err}") from None
        return check_numeric(array.transpose(tuple(reversed(range(array.ndim)))), path, key)
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=[key])
    except _scipy_errors() as err:
        raise ValueError(f"cannot read {path} as a MATLAB .mat file: {err}") from None
    if key not in mat:
        raise KeyError(f"{path} has no variable {key!r}; it holds {sorted(mat_variables(path))}")
    return check_numeric(mat[key], path, key)


def check_numeric(array: np.ndarray, path: Path, key: str | None) -> np.ndarray:
    """``array`` if it holds real numbers; complex values, structs, cells and text are refused by name."""
    what = "the array" if key is None else f"variable {key!r}"
    kind = array.dtype.kind
    if kind == "c" or (array.dtype.names is not None and set(array.dtype.names) == {"real", "imag"}):
        raise ValueError(f"{path}: {what} holds complex values, expected real numbers")
    if array.dtype.names is not None or kind == "V":
        raise ValueError(f"{path}: {what} is a MATLAB struct, expected a numeric array")
    if kind == "O":
        raise ValueError(f"{path}: {what} is a MATLAB cell array, expected a numeric array")
    if kind not in "biuf":
        raise ValueError(f"{path}: {what} holds {array.dtype} values (text?), expected a numeric array")
    if array.size == 0:
        raise ValueError(f"{path}: {what} is empty, shape {array.shape}")
    return array


def mat_variables(path: Path) -> list[str]:
    """The names of the variables stored in a ``.mat`` file."""
    if is_hdf5_mat(path):
        import h5py

        try:
            with h5py.File(path, "r") as mat:
                return [k for k in mat.keys() if not k.startswith("#")]
        except OSError as err:
            raise ValueError(f"cannot read {path} as a MATLAB v7.3 (HDF5) file: {err}") from None
    import scipy.io

    try:
        return [name for name, _, _ in scipy.io.whosmat(path)]
    except _scipy_errors() as err:
        raise ValueError(f"cannot read {path} as a MATLAB .mat file: {err}") from None


def write_mat(path: str | os.PathLike, variables: dict[str, np.ndarray], version: str = "7.3") -> Path:
    """Write arrays to a ``.mat`` file MATLAB (and the official loaders) can read.

    ``version="7.3"`` writes HDF5 the way MATLAB does: a 512-byte header block naming the
    format, each array stored with its dimensions reversed and tagged with its
    ``MATLAB_class``. ``version="5"`` uses :func:`scipy.io.savemat`. Written atomically (a
    reader never sees a partial file). Returns the path.
    """
    if version not in ("5", "7.3"):
        raise ValueError(f"version must be '7.3' or '5', got {version!r}")
    if version == "5":
        import scipy.io

        def save_v5(tmp: str) -> None:
            with open(tmp, "wb") as f:
                scipy.io.savemat(f, variables)

        return atomic_write(path, save_v5)
    import h5py

    classes = {np.dtype(np.float64): "double", np.dtype(np.float32): "single", np.dtype(np.uint8): "uint8",
               np.dtype(np.uint16): "uint16", np.dtype(np.int32): "int32", np.dtype(np.bool_): "logical"}
    arrays = {name: np.asarray(value) for name, value in variables.items()}
    for name, value in arrays.items():
        if value.dtype not in classes:
            raise ValueError(f"cannot store {name!r} of dtype {value.dtype} in a MATLAB file")

    def save_v73(tmp: str) -> None:
        with h5py.File(tmp, "w", userblock_size=512) as mat:
            for name, value in arrays.items():
                stored = value.astype(np.uint8) if value.dtype == np.bool_ else value
                dataset = mat.create_dataset(name, data=stored.transpose(tuple(reversed(range(value.ndim)))))
                dataset.attrs["MATLAB_class"] = np.bytes_(classes[value.dtype])
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: glmha, HDF5 schema 1.00 ."
        with open(tmp, "r+b") as f:  # the header MATLAB puts in the user block
            f.write(header.ljust(116) + b"\x00" * 8 + b"\x00\x02" + b"IM")

    return atomic_write(path, save_v73)
