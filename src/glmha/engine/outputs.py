"""Restored outputs written as the official test scripts write them, so that the official
evaluation scripts (MATLAB or Python) and ``glmha score`` can be run on them.

======================  ==========================================================================
protocol                files under ``<output>/<set>/``
======================  ==========================================================================
deraining, gopro_hide,  ``<name>.png``: 8-bit ``img_as_ubyte`` of the clamped output
realblur
gaussian_denoising      ``<file name of the clean image>`` (its extension kept), 8-bit
dpdd                    ``<name>.png``: 8-bit (``uint8(round(x * 255))``) or, for 16-bit data
                        (dual pixel), 16-bit (``uint16(round(x * 65535))``)
sidd                    ``mat/Idenoised.mat`` (float32 ``N x B x H x W x 3``) and ``png/<iiii>_<bb>.png``
dnd                     ``mat/<iiii>.mat`` (the benchmark's submission files) and ``png/<iiii>_<bb>.png``
cassi                   ``Test_result.mat`` with ``pred`` and ``truth`` (float32 ``N x H x W x bands``)
ntire2022               ``<scene>.mat``: MATLAB v7.3, variable ``cube``, ``H x W x 31`` clamped to [0, 1]
======================  ==========================================================================
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io.files import atomic_write
from ..metrics.protocols import Protocol, img_as_ubyte


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an 8- or 16-bit ``H x W (x 3)`` RGB array with OpenCV (as the official ``save_img``), atomically."""
    import cv2

    path = Path(path)
    image = np.ascontiguousarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    bgr = image[..., ::-1] if image.ndim == 3 else image

    def write(tmp: str) -> None:
        ok, encoded = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(bgr))
        if not ok:
            raise OSError(f"OpenCV cannot encode {path.name}")
        Path(tmp).write_bytes(encoded.tobytes())

    return atomic_write(path, write)


def _stem(name: str) -> str:
    return Path(str(name)).stem


class OfficialOutputs:
    """Collects the restored outputs of one test set and writes them in the official layout (see the module doc).

    ``add(name, restored)`` takes a float ``H x W x C`` output (``restored`` before clamping);
    ``add_patches(name, patches)`` a DND image's list of patch outputs; ``close()`` writes the
    files that gather a whole set (SIDD's ``Idenoised.mat``, CASSI's ``Test_result.mat``).
    """

    def __init__(self, protocol: Protocol, folder: str | os.PathLike, bit_depth: int = 8):
        self.protocol, self.folder, self.bit_depth = protocol, Path(folder), bit_depth
        self._blocks: dict[str, np.ndarray] = {}
        self._cassi: list[tuple[np.ndarray, np.ndarray]] = []
        self.written: list[Path] = []

    def add(self, name: str, restored: np.ndarray, target: np.ndarray | None = None) -> None:
        kind = self.protocol.name
        clamped = np.clip(np.asarray(restored, np.float32), 0.0, 1.0)
        if kind in ("deraining", "gopro_hide", "realblur"):
            self.written.append(write_image(self.folder / f"{_stem(name)}.png", img_as_ubyte(clamped)))
        elif kind == "gaussian_denoising":
            self.written.append(write_image(self.folder / Path(str(name)).name, img_as_ubyte(clamped)))
        elif kind == "dpdd":
            image = np.uint16((clamped * 65535).round()) if self.bit_depth == 16 else np.uint8((clamped * 255).round())
            self.written.append(write_image(self.folder / f"{_stem(name)}.png", image))
        elif kind == "sidd":
            self._blocks[str(name)] = clamped
            self.written.append(write_image(self.folder / "png" / f"{name}.png", img_as_ubyte(clamped)))
        elif kind == "cassi":
            if target is None:
                raise ValueError("the CASSI output file holds the ground truth too; pass target")
            self._cassi.append((np.asarray(restored, np.float32), np.asarray(target, np.float32)))
        elif kind == "ntire2022":
            from ..data.hyperspectral import write_mat

            path = self.folder / f"{_stem(name)}.mat"
            self.written.append(atomic_write(path, lambda tmp: write_mat(tmp, {"cube": clamped}, version="7.3")))
        else:
            raise ValueError(f"no official output format for protocol {kind!r}")

    def add_patches(self, name: str, patches: list[np.ndarray], save_png: bool = False) -> None:
        """One DND image: its 20 restored patches into the submission file ``mat/<name>.mat``."""
        import scipy.io

        clamped = [np.clip(np.asarray(p, np.float32), 0.0, 1.0) for p in patches]
        cell = np.empty((len(clamped),), dtype=object)
        for k, patch in enumerate(clamped):
            cell[k] = patch
        content = {"Idenoised": cell, "israw": False, "eval_version": "1.0"}
        self.written.append(atomic_write(self.folder / "mat" / f"{name}.mat", lambda tmp: scipy.io.savemat(tmp, content, appendmat=False)))
        if save_png:
            for k, patch in enumerate(clamped):
                self.written.append(write_image(self.folder / "png" / f"{name}_{k + 1:02d}.png", img_as_ubyte(patch)))

    def close(self) -> list[Path]:
        import scipy.io

        if self._blocks:
            names = sorted(self._blocks)
            images = sorted({n.split("_")[0] for n in names})
            blocks = sorted({n.split("_")[1] for n in names})
            first = self._blocks[names[0]]
            stacked = np.zeros((len(images), len(blocks), *first.shape), np.float32)
            for name, block in self._blocks.items():
                i, b = name.split("_")
                stacked[images.index(i), blocks.index(b)] = block
            self.written.append(atomic_write(self.folder / "mat" / "Idenoised.mat",
                                             lambda tmp: scipy.io.savemat(tmp, {"Idenoised": stacked}, appendmat=False)))
        if self._cassi:
            pred = np.stack([p for p, _ in self._cassi])
            truth = np.stack([t for _, t in self._cassi])
            self.written.append(atomic_write(self.folder / "Test_result.mat",
                                             lambda tmp: scipy.io.savemat(tmp, {"truth": truth, "pred": pred}, appendmat=False)))
        return self.written
