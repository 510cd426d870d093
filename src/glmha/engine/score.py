"""``glmha score``: an official protocol on outputs restored elsewhere (files, not a model).

The files are the ones the official test scripts (or ``glmha evaluate --save-images``) write:

- image protocols (``deraining``, ``gopro_hide``, ``realblur``, ``gaussian_denoising``,
  ``dpdd``): a folder (or list) of restored images and a folder of ground truths, paired by
  file stem. Images are read as the official evaluation reads them: as stored (MATLAB's
  ``imread``, scikit-image's ``io.imread``), or with OpenCV in colour or grey for the Gaussian
  denoising scripts (``grayscale``), 8-bit or 16-bit for DPDD (``bit_depth``).
- ``sidd``: the ``Idenoised.mat`` of the test script and ``ValidationGtBlocksSrgb.mat``.
- ``cassi``: MST's ``Test_result.mat`` (it holds ``pred`` and ``truth``; no target needed).
- ``ntire2022``: folders of ``.mat`` cubes (variable ``cube``), predictions and ground truths.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.restoration import DatasetError, IMAGE_EXTENSIONS, natural_key
from ..metrics.protocols import get_protocol

IMAGE_PROTOCOLS = ("deraining", "gopro_hide", "realblur", "gaussian_denoising", "dpdd")


def _files(spec: str | os.PathLike | Sequence[str | os.PathLike], suffixes: Sequence[str]) -> list[Path]:
    paths = [Path(p) for p in ([spec] if isinstance(spec, (str, os.PathLike)) else spec)]
    files: list[Path] = []
    for path in paths:
        if path.is_dir():  # entries that are not regular files are kept, for the reader to refuse by name
            files += sorted((p for p in path.iterdir() if not p.is_dir() and p.suffix.lower() in suffixes), key=lambda p: natural_key(p.name))
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise DatasetError(f"{path} is not a regular file (a FIFO, socket or device)")
        else:
            raise DatasetError(f"no such file or folder: {path}")
    if not files:
        raise DatasetError(f"no {', '.join(suffixes)} files in {', '.join(map(str, paths))}")
    return files


def read_as_official(path: Path, mode: str) -> np.ndarray:
    """An image file as an official evaluation reads it: ``"stored"`` (as in the file, RGB order, alpha
    dropped), ``"color"`` (OpenCV's default 8-bit colour read) or ``"grayscale"`` (OpenCV grey)."""
    import cv2

    from ..io.images import check_image_file, read_opencv

    check_image_file(path)  # a FIFO would block; a truncated PNG/JPEG would decode with grey rows
    flags = {"stored": cv2.IMREAD_UNCHANGED, "color": cv2.IMREAD_COLOR, "grayscale": cv2.IMREAD_GRAYSCALE}
    return read_opencv(path, flags[mode])


def _pair_by_stem(restored: list[Path], targets: list[Path]) -> list[tuple[Path, Path]]:
    by_stem = {p.stem: p for p in targets}
    missing = [p.name for p in restored if p.stem not in by_stem]
    if missing:
        raise DatasetError(f"{len(missing)} restored image(s) have no ground truth of the same name, e.g. {missing[0]}")
    return [(p, by_stem[p.stem]) for p in restored]


def _finite(array: np.ndarray, path: str | os.PathLike, name: str) -> np.ndarray:
    """Refuse NaN or infinite values: the metrics would report numbers computed from them."""
    array = np.asarray(array)
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise DatasetError(f"{path}: {name!r} holds {int((~np.isfinite(array)).sum())} NaN or infinite value(s); "
                           "scores of such data mean nothing, so none were computed")
    return array


def score_files(protocol: str, restored: str | os.PathLike | Sequence[str | os.PathLike], target: str | os.PathLike | None = None,
                grayscale: bool = False, bit_depth: int = 8, border: int = 128) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score restored files with an official protocol; returns (per-image rows, mean row)."""
    proto = get_protocol(protocol)
    rows: list[dict[str, Any]] = []
    if protocol in IMAGE_PROTOCOLS:
        if target is None:
            raise DatasetError(f"the {protocol} protocol needs the ground-truth images (target)")
        pairs = _pair_by_stem(_files(restored, IMAGE_EXTENSIONS), _files(target, IMAGE_EXTENSIONS))
        for restored_path, target_path in pairs:
            if protocol == "gaussian_denoising":
                mode = "grayscale" if grayscale else "color"
                a, b = read_as_official(restored_path, mode), read_as_official(target_path, mode)
            elif protocol == "dpdd":
                a = read_as_official(restored_path, "stored")
                b = read_as_official(target_path, "stored" if bit_depth == 16 else "color")
                a, b = (x.astype(np.float32) / np.float32(65535 if x.dtype == np.uint16 else 255) for x in (a, b))
            else:
                a, b = read_as_official(restored_path, "stored"), read_as_official(target_path, "stored")
            rows.append({"image": restored_path.name, **proto.score(a, b)})
    elif protocol == "sidd":
        from ..data.restoration import read_mat_array

        if target is None:
            raise DatasetError("the sidd protocol needs ValidationGtBlocksSrgb.mat (target)")
        denoised = _finite(read_mat_array(_files(restored, (".mat",))[0], "Idenoised"), _files(restored, (".mat",))[0], "Idenoised")
        gt = _finite(read_mat_array(target, "ValidationGtBlocksSrgb"), target, "ValidationGtBlocksSrgb")
        if denoised.shape != gt.shape:
            raise DatasetError(f"Idenoised is {denoised.shape}, the ground truth {gt.shape}")
        for i in range(gt.shape[0]):
            for k in range(gt.shape[1]):
                rows.append({"image": f"{i + 1:04d}_{k + 1:02d}", **proto.score(denoised[i, k], gt[i, k])})
    elif protocol == "cassi":
        from ..data.restoration import read_mat_array

        path = _files(restored, (".mat",))[0]
        pred, truth = _finite(read_mat_array(path, "pred"), path, "pred"), _finite(read_mat_array(path, "truth"), path, "truth")
        if pred.shape != truth.shape or pred.ndim != 4:
            raise DatasetError(f"{path}: pred {pred.shape} and truth {truth.shape} must be N x H x W x bands")
        rows = [{"image": f"scene{i + 1:02d}", **proto.score(pred[i], truth[i])} for i in range(pred.shape[0])]
    elif protocol == "ntire2022":
        from ..data.hyperspectral import read_mat

        if target is None:
            raise DatasetError("the ntire2022 protocol needs the ground-truth cubes (target)")
        for pred_path, target_path in _pair_by_stem(_files(restored, (".mat",)), _files(target, (".mat",))):
            rows.append({"image": pred_path.name, **proto.score(_finite(read_mat(pred_path, "cube"), pred_path, "cube"),
                                                                _finite(read_mat(target_path, "cube"), target_path, "cube"), border)})
    else:
        raise DatasetError(f"the {protocol} protocol has no files to score (its benchmark scores submissions online)")
    mean = {"image": f"mean of {len(rows)}", **{m: float(np.mean([r[m] for r in rows])) for m in proto.metrics}}
    return rows, mean
