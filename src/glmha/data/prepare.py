"""``glmha prepare``: the official data preparation of the Restormer recipes that train on patches.

Each task cuts the downloaded images into the patches the official training reads, with the
official patch sizes, strides, filters and file names (Restormer's
``generate_patches_{gopro,sidd,dfwb,dpdd}.py``), into the layout the configs point at:

======  ===========================================  ==================================================
task    source (``--source``)                        written under ``--output`` (the ``Datasets`` root)
======  ===========================================  ==================================================
gopro   ``GoPro/{input,target}`` training frames     ``train/GoPro/{input,target}_crops``: 512 px, overlap
                                                     256; ``val/GoPro/...``: centre 256 crops of the test
                                                     frames (``--val-source``, default ``test/GoPro``)
sidd    SIDD-Medium: ``<scene>/*GT*.PNG, *NOISY*.PNG``  ``train/SIDD/{input,target}_crops``: 512 px, overlap 128
dfwb    ``{DIV2K,Flickr2K,WaterlooED,BSD400}/*``      ``train/DFWB``: 512 px, overlap 96, images with a side of
                                                     at most 800 px kept whole
dpdd    ``{train,val}/{inputL,inputR,inputC,target}``  ``train/DPDD/*_crops``: 512 px, stride 204, the 30 %
                                                     least sharp patches dropped; ``val/DPDD``: centre 256
======  ===========================================  ==================================================

Images are read and written with OpenCV, as the official scripts do (8-bit, except DPDD's 16-bit
PNGs, kept at 16 bit). Every patch is written atomically, and a log in the output folder
(``.glmha-prepare-<task>.done``) records each finished source image, so an interrupted run
resumes where it stopped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..io.files import atomic_write
from .restoration import DatasetError, natural_key

DONE_LOG = ".glmha-prepare-{task}.done"


# ----------------------------------------------------------------------------- patch geometry
def overlap_grid(size: int, patch: int, overlap: int) -> list[int]:
    """Patch origins along one side: every ``patch - overlap`` pixels while a patch starts before
    ``size - patch``, then one flush with the end (``generate_patches_{gopro,sidd,dfwb}.py``)."""
    if size < patch:
        raise ValueError(f"a side of {size} px is smaller than the {patch} px patch")
    return list(range(0, size - patch, patch - overlap)) + [size - patch]


def dpdd_patch_origins(height: int, width: int, patch: int = 512, stride: int = 204) -> list[tuple[int, int]]:
    """Patch origins of ``generate_patches_dpdd.py``: a stride grid; where a patch would cross the right
    or bottom edge it is moved flush against it, and a position already taken by such a moved patch
    is not taken again (only moved patches count as taken, so the order and repeats are the official)."""
    moved: set[tuple[int, int]] = set()
    origins = []
    for top in range(0, height, stride):
        for left in range(0, width, stride):
            fits_rows, fits_cols = top + patch <= height, left + patch <= width
            if fits_rows and fits_cols:
                origins.append((top, left))
                continue
            for candidate, allowed in (((top, width - patch), fits_rows), ((height - patch, left), fits_cols),
                                       ((height - patch, width - patch), True)):
                if allowed and candidate not in moved:
                    origins.append(candidate)
                    moved.add(candidate)
                    break
    return origins


def sharpness(grey: np.ndarray, kernel_size: int) -> float:
    """Sum over the image of the Sobel gradient magnitude (``cv2.Sobel``, float64) with the given aperture."""
    import cv2

    gx = cv2.Sobel(grey, cv2.CV_64F, 1, 0, ksize=kernel_size)
    gy = cv2.Sobel(grey, cv2.CV_64F, 0, 1, ksize=kernel_size)
    return float(np.sum(np.sqrt(gx * gx + gy * gy)))


def sharpest_patches(targets: Sequence[np.ndarray], drop_ratio: float = 0.3) -> list[int]:
    """Indices of the patches the DPDD filter keeps, in order: per aperture 3, 7, 11, 15 the
    sharpness of each target patch's grey image is scaled to [0, 1] over the image's patches;
    the product of the four ranks the patches, and the ``int(drop_ratio * n)`` lowest are dropped
    (ties: the first one first)."""
    import cv2

    greys = [cv2.cvtColor(t, cv2.COLOR_BGR2GRAY) for t in targets]
    score = np.ones(len(targets))
    for k in (3, 7, 11, 15):
        values = np.asarray([sharpness(g, k) for g in greys])
        shifted = values - values.min()
        score = score * (shifted / np.max(shifted))
    dropped = set()
    for _ in range(int(drop_ratio * len(targets))):
        worst = int(np.argmin(score))
        score[worst] = 2  # above any kept score, as the official filter marks removed patches
        dropped.add(worst)
    return [i for i in range(len(targets)) if i not in dropped]


# ----------------------------------------------------------------------------- file helpers
def _glob(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"source folder not found: {folder}")
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes), key=lambda p: natural_key(p.name))


def _read(path: Path, unchanged: bool = False) -> np.ndarray:
    import cv2

    from ..io.images import opencv_decode

    image = opencv_decode(path, cv2.IMREAD_UNCHANGED if unchanged else cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot read image {path}")
    return image


def _write(path: Path, image: np.ndarray) -> Path:
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise DatasetError(f"OpenCV cannot encode {path}")
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(encoded.tobytes()))


# ----------------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One source image (or image group) and what to do with it: ``run()`` writes its patches."""

    key: str  # manifest key: unique per job
    run: Callable[[], int]  # returns the number of patches written


def _grid_job(key: str, sources: Sequence[Path], outputs: Sequence[Path], stem: str, patch: int, overlap: int,
              keep_whole_up_to: int = 0) -> Job:
    """Overlapping patches of aligned images (input/target pairs, or one image), named ``<stem>-<n>.png``."""

    def run() -> int:
        images = [_read(p) for p in sources]
        height, width = images[0].shape[:2]
        for path, image in zip(sources, images):
            if image.shape[:2] != (height, width):
                raise DatasetError(f"{path} is {image.shape[0]}x{image.shape[1]}, its partner {sources[0]} {height}x{width}")
        if not (height > keep_whole_up_to and width > keep_whole_up_to):
            for folder, image in zip(outputs, images):
                _write(folder / f"{stem}.png", image)
            return 1
        try:
            rows, cols = overlap_grid(height, patch, overlap), overlap_grid(width, patch, overlap)
        except ValueError as err:
            raise DatasetError(f"{sources[0]}: {err}") from None
        count = 0
        for top in rows:
            for left in cols:
                count += 1
                for folder, image in zip(outputs, images):
                    _write(folder / f"{stem}-{count}.png", image[top:top + patch, left:left + patch])
        return count

    return Job(key, run)


def _centre_job(key: str, sources: Sequence[Path], outputs: Sequence[Path], stem: str, size: int, unchanged: bool = False) -> Job:
    """Centre ``size x size`` crops named ``<stem>.png`` (validation patches)."""

    def run() -> int:
        for source, folder in zip(sources, outputs):
            image = _read(source, unchanged)
            top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
            if top < 0 or left < 0:
                raise DatasetError(f"{source} is smaller than the {size} px validation crop")
            _write(folder / f"{stem}.png", image[top:top + size, left:left + size])
        return 1

    return Job(key, run)


def _dpdd_job(key: str, sources: Sequence[Path], outputs: Sequence[Path], patch: int = 512, stride: int = 204, drop_ratio: float = 0.3) -> Job:
    """DPDD training patches: stride grid, sharpness filter on the target, files ``<stem of inputC>-<n>.png``."""

    def run() -> int:
        images = [_read(p, unchanged=True) for p in sources]  # inputL, inputR, inputC, target
        height, width = images[2].shape[:2]
        origins = dpdd_patch_origins(height, width, patch, stride)
        patches = [[im[t:t + patch, l:l + patch] for t, l in origins] for im in images]
        kept = sharpest_patches(patches[3], drop_ratio) if origins else []
        stem = sources[2].stem
        for number, index in enumerate(kept, start=1):
            for folder, patch_list in zip(outputs, patches):
                _write(folder / f"{stem}-{number}.png", patch_list[index])
        return len(kept)

    return Job(key, run)


def _pairs(inputs: list[Path], targets: list[Path], where: str) -> list[tuple[Path, Path]]:
    if len(inputs) != len(targets):
        raise DatasetError(f"{where}: {len(inputs)} inputs but {len(targets)} targets")
    return list(zip(inputs, targets))  # the official scripts pair the sorted lists by position


def gopro_jobs(source: Path, output: Path, val_source: Path | None = None) -> list[Job]:
    train_out = [output / "train" / "GoPro" / "input_crops", output / "train" / "GoPro" / "target_crops"]
    suffixes = (".png", ".jpg")
    jobs = [_grid_job(f"train/{i.name}", (i, t), train_out, i.stem, 512, 256)
            for i, t in _pairs(_glob(source / "input", suffixes), _glob(source / "target", suffixes), str(source))]
    val_source = val_source or output / "test" / "GoPro"
    if (val_source / "input").is_dir():
        val_out = [output / "val" / "GoPro" / "input_crops", output / "val" / "GoPro" / "target_crops"]
        jobs += [_centre_job(f"val/{i.name}", (i, t), val_out, i.stem, 256)
                 for i, t in _pairs(_glob(val_source / "input", suffixes), _glob(val_source / "target", suffixes), str(val_source))]
    return jobs


def sidd_jobs(source: Path, output: Path, val_source: Path | None = None) -> list[Job]:
    if not source.is_dir():
        raise DatasetError(f"source folder not found: {source}")
    files = sorted((p for p in source.glob("*/*") if p.suffix == ".PNG"), key=lambda p: natural_key(str(p)))
    noisy = [p for p in files if "NOISY" in p.name]
    clean = [p for p in files if "GT" in p.name]
    if not noisy:
        raise DatasetError(f"no SIDD images (<scene>/*NOISY*.PNG) under {source}")
    out = [output / "train" / "SIDD" / "input_crops", output / "train" / "SIDD" / "target_crops"]
    return [_grid_job(f"train/{n.parent.name}/{n.name}", (n, c), out, n.stem, 512, 128) for n, c in _pairs(noisy, clean, str(source))]


DFWB_FOLDERS = ("DIV2K", "Flickr2K", "WaterlooED", "BSD400")


def dfwb_jobs(source: Path, output: Path, val_source: Path | None = None) -> list[Job]:
    out = [output / "train" / "DFWB"]
    jobs = []
    for name in DFWB_FOLDERS:
        folder = source / name
        if not folder.is_dir():
            raise DatasetError(f"DFWB needs {folder} (one of {', '.join(DFWB_FOLDERS)})")
        jobs += [_grid_job(f"{name}/{p.name}", (p,), out, f"{name}-{p.stem}", 512, 96, keep_whole_up_to=800)
                 for p in _glob(folder, (".png", ".jpg", ".bmp"))]
    return jobs


def _dpdd_split(source: Path, split: str) -> Path:
    # the official download nests each split once more (train/train/inputL); accept both layouts
    for folder in (source / split / split, source / split):
        if (folder / "inputC").is_dir():
            return folder
    raise DatasetError(f"no DPDD {split} split under {source} (expected {source / split}/{{inputL,inputR,inputC,target}})")


def dpdd_jobs(source: Path, output: Path, val_source: Path | None = None) -> list[Job]:
    views = ("inputL", "inputR", "inputC", "target")
    jobs = []
    for split, make in (("train", lambda key, files, out: _dpdd_job(key, files, out)),
                        ("val", lambda key, files, out: _centre_job(key, files, out, files[2].stem, 256, unchanged=True))):
        folder = _dpdd_split(source, split)
        lists = [_glob(folder / v, (".png",)) for v in views]
        if len({len(f) for f in lists}) != 1:
            raise DatasetError(f"{folder}: the views hold {', '.join(f'{len(f)} {v}' for f, v in zip(lists, views))} images")
        out = [output / split / "DPDD" / f"{v}_crops" for v in views]
        jobs += [make(f"{split}/{files[2].name}", files, out) for files in zip(*lists)]
    return jobs


PREPARE_TASKS: dict[str, Callable[[Path, Path, Path | None], list[Job]]] = {
    "gopro": gopro_jobs, "sidd": sidd_jobs, "dfwb": dfwb_jobs, "dpdd": dpdd_jobs,
}


@dataclass
class PrepareReport:
    """What :func:`prepare` did: source images processed now, skipped as already done (resume), patches written."""

    done: int = 0
    skipped: int = 0
    patches: int = 0
    log: Path | None = None


def _finished(log: Path) -> set[str]:
    if not log.is_file():
        return set()
    text = log.read_text()
    lines = text.split("\n")
    return set(lines[:-1])  # a line is complete once its newline is written; a cut-off last line is not


def prepare(task: str, source: str | os.PathLike, output: str | os.PathLike, val_source: str | os.PathLike | None = None,
            progress: bool = True) -> PrepareReport:
    """Run the official patch preparation of ``task`` (``gopro``, ``sidd``, ``dfwb``, ``dpdd``); see the module doc."""
    from tqdm.auto import tqdm

    if task not in PREPARE_TASKS:
        raise ValueError(f"unknown preparation task {task!r}; available: {sorted(PREPARE_TASKS)}")
    source, output = Path(source), Path(output)
    jobs = PREPARE_TASKS[task](source, output, Path(val_source) if val_source else None)
    if not jobs:
        raise DatasetError(f"found nothing to prepare under {source}")
    output.mkdir(parents=True, exist_ok=True)
    log = output / DONE_LOG.format(task=task)
    finished = _finished(log)
    report = PrepareReport(log=log)
    with open(log, "a") as record:
        for job in tqdm(jobs, desc=f"prepare {task}", unit="image", disable=not progress):
            if job.key in finished:
                report.skipped += 1
                continue
            report.patches += job.run()
            report.done += 1
            record.write(job.key + "\n")
            record.flush()
            os.fsync(record.fileno())
    return report
