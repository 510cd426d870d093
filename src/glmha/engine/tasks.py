"""What differs between the papers' tasks: datasets, how a batch feeds the model, loss, metrics.

A task object has:

- ``forward(model, batch)``: the training forward pass (model inputs from the batch);
- ``predict(model, batch)``: the evaluation forward pass (whole images, padded to the
  model's size multiple);
- ``metrics(pred, batch)``: the paper's metrics for each image of the batch, a dict of
  name -> tensor of shape ``B``;
- ``primary_metric`` and ``higher_is_better``: what "best" means during validation.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import restoration
from ..inference.restoration import restore
from ..inference.tiling import pad_to_multiple
from ..metrics import protocols
from ..data import spectral_datasets as spectral

DATASET_TYPES: dict[str, Callable[..., torch.utils.data.Dataset]] = {
    "paired_folder": restoration.PairedImageFolder,
    "noisy_folder": restoration.NoisyImageFolder,
    "sidd_blocks": restoration.SIDDBlocks,
    "dnd": restoration.DNDImages,
    "input_folder": restoration.InputImages,
    "synthetic": restoration.SyntheticPairs,
    "arad1k": spectral.ARAD1KPairs,
    "synthetic_rgb2hsi": spectral.SyntheticRGBToHSI,
    "cave": spectral.CAVETrainingCubes,
    "kaist": spectral.KAISTScenes,
    "synthetic_cassi": spectral.SyntheticCASSI,
    "real_cassi_train": spectral.RealCASSITraining,
    "real_cassi_scenes": spectral.RealCASSIScenes,
    "synthetic_real_cassi": spectral.SyntheticRealCASSI,
}


def build_dataset(spec: Mapping[str, Any]) -> torch.utils.data.Dataset:
    """Dataset from a config entry: ``type`` picks the class, the other keys are its arguments."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in DATASET_TYPES:
        raise ValueError(f"dataset type {kind!r} unknown; available: {sorted(DATASET_TYPES)}")
    try:
        return DATASET_TYPES[kind](**spec)
    except TypeError as err:
        raise ValueError(f"dataset type {kind!r}: {err}") from None


# ----------------------------------------------------------------------------- losses
def mrae_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean relative absolute error |pred - target| / target (MST++'s loss; target > 0)."""
    return ((pred - target).abs() / target).mean()


RELATIVE_FLOOR = 1e-3  # a quarter of an 8-bit grey level: keeps relative errors finite where a target is ~0


def relative_l1_loss(pred: torch.Tensor, target: torch.Tensor, floor: float = RELATIVE_FLOOR) -> torch.Tensor:
    """``|pred - target| / max(|target|, floor)``: MRAE's weighting for a target that may be near
    zero or negative (a teacher's output, in distillation); ``floor`` keeps those pixels finite."""
    return ((pred - target).abs() / target.detach().abs().clamp_min(floor)).mean()


def rmse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root of the mean squared error (MST's loss)."""
    return F.mse_loss(pred, target).sqrt()


def charbonnier_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return ((pred - target).pow(2) + eps**2).sqrt().mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": F.l1_loss,
    "mse": F.mse_loss,
    "rmse": rmse_loss,
    "mrae": mrae_loss,
    "relative_l1": relative_l1_loss,
    "charbonnier": charbonnier_loss,
}


# ----------------------------------------------------------------------------- tasks
class _SingleInputTask:
    """A task whose model takes ``batch["input"]`` alone; evaluation pads or tiles it."""

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["input"])

    def predict(self, model: nn.Module, batch: Mapping[str, torch.Tensor], tile: int | None = None, ensemble: str = "none") -> torch.Tensor:
        return restore(model, batch["input"], tile=tile, ensemble=ensemble)


def _images(batch: torch.Tensor) -> list[np.ndarray]:
    """``B x C x H x W`` tensor -> per-image float32 ``H x W x C`` arrays."""
    return list(batch.detach().float().cpu().permute(0, 2, 3, 1).numpy())


def score_batch(protocol_name: str, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Score each image of a batch with an official protocol (:mod:`glmha.metrics.protocols`):
    the prediction stored as the protocol's test script stores it, the ground truth read as its
    evaluation reads it. Returns metric name -> float64 tensor of shape ``B``."""
    protocol = protocols.get_protocol(protocol_name)
    rows = [protocol.score(protocols.as_stored(protocol, p), protocols.as_read(protocol, t)) for p, t in zip(_images(pred), _images(target))]
    return {name: torch.tensor([row[name] for row in rows], dtype=torch.float64) for name in protocol.metrics}


class RestorationTask(_SingleInputTask):
    """Image in, image out, scored with an official evaluation protocol.

    ``protocol`` names the default protocol of the task's test sets (see
    :data:`glmha.metrics.protocols.PROTOCOLS`); ``glmha evaluate`` can choose another per set.
    """

    primary_metric = "psnr"
    higher_is_better = True

    def __init__(self, name: str, protocol: str):
        protocols.get_protocol(protocol)
        self.name = name
        self.protocol = protocol

    def metrics(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor], protocol: str | None = None) -> dict[str, torch.Tensor]:
        return score_batch(protocol or self.protocol, pred, batch["target"])


class RGBToHSITask(_SingleInputTask):
    """RGB to 31-band hyperspectral (MST++, NTIRE 2022): MRAE, RMSE and PSNR as the official
    code computes them, after cropping ``border`` pixels on every side (official test: 128)."""

    name = "rgb_to_hsi"
    protocol = "ntire2022"
    primary_metric = "mrae"
    higher_is_better = False

    def __init__(self, border: int = 128):
        self.border = border

    def metrics(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor], protocol: str | None = None) -> dict[str, torch.Tensor]:
        _check_protocol(self, protocol)
        from ..metrics import spectral as m

        target = batch["target"].to(pred.device)
        return {
            "mrae": m.mrae(pred, target, self.border, reduction="none"),
            "rmse": m.rmse(pred, target, self.border, reduction="none"),
            "psnr": m.spectral_psnr(pred, target, self.border, reduction="none"),
        }


class CASSITask:
    """CASSI reconstruction (MST): the measurement is simulated from the cube and the coded
    aperture of each sample; the network gets the official inputs (``input_setting`` "H":
    the measurement divided by the band count, doubled and shifted back; ``mask_setting``
    "Phi": the shifted 3-D mask). Metrics: both official CASSI protocols (the paper's
    ``psnr``/``ssim`` and the training log's ``psnr_train_log``/``ssim_train_log``); the best
    checkpoint is chosen by the training log's PSNR, as the official training does."""

    name = "cassi"
    protocol = "cassi"
    primary_metric = "psnr_train_log"
    higher_is_better = True

    def __init__(self, input_setting: str = "H", mask_setting: str = "Phi", step: int = 2):
        from ..data import cassi

        if input_setting not in cassi.MEASUREMENT_SETTINGS or mask_setting not in cassi.MASK_SETTINGS:
            raise ValueError(f"CASSI settings: input one of {cassi.MEASUREMENT_SETTINGS}, mask one of {cassi.MASK_SETTINGS}")
        self.input_setting, self.mask_setting, self.step = input_setting, mask_setting, step

    def inputs(self, batch: Mapping[str, torch.Tensor]) -> tuple:
        from ..data import cassi

        cube = batch["target"]
        mask3d = batch["mask"].to(cube.device, cube.dtype).unsqueeze(1).expand(-1, cube.shape[1], -1, -1)
        measurement = cassi.measurement_input(cube, mask3d, self.input_setting, self.step)
        return measurement, cassi.mask_input(mask3d, self.mask_setting, self.step)

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model(*self.inputs(batch))

    def predict(self, model: nn.Module, batch: Mapping[str, torch.Tensor], tile: int | None = None, ensemble: str = "none") -> torch.Tensor:
        if tile:
            raise ValueError("CASSI reconstruction runs on whole scenes; tiled inference does not apply")
        if ensemble != "none":
            raise ValueError("the self-ensemble does not apply to CASSI: the measurement is sheared along its width by the "
                             "disperser, so flips and rotations do not commute with the model; use ensemble none")
        return model(*self.inputs(batch))

    def metrics(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor], protocol: str | None = None) -> dict[str, torch.Tensor]:
        _check_protocol(self, protocol)
        return score_batch(self.protocol, pred, batch["target"])


class RealCASSITask(CASSITask):
    """Real-data CASSI reconstruction (the real-data MST): the network takes the dataset's noisy
    measurement ``input`` alone; scored as :class:`CASSITask` (both official CASSI protocols)."""

    name = "real_cassi"

    def __init__(self):
        pass

    def inputs(self, batch: Mapping[str, torch.Tensor]) -> tuple:
        return (batch["input"],)


class DistillationTask:
    """Teach a student to reproduce a teacher's outputs on inputs alone (``glmha distill``).

    ``base`` is the task the teacher solves (a single-input one: restoration or RGB-to-HSI);
    ``teacher`` a model or a checkpoint (:func:`glmha.load_model`, with ``preset`` for official
    files). Before each step the teacher's output becomes the batch's ``target`` (the real
    ground truth, if the data has one, is kept as ``ground_truth``), so the task's loss pulls the
    student towards the teacher. ``feature_weight`` adds the L1 distance between the student's
    and the teacher's block features (the outputs of the modules named ``encoder_level*``,
    ``latent``, ``decoder_level*``, ``refinement`` or ``body``). Metrics: ``psnr_to_teacher``
    (PSNR of the student's output against the teacher's, range 1) and, where the batch has a
    ground truth, the base task's metrics of the student.
    """

    primary_metric = "psnr_to_teacher"
    higher_is_better = True
    FEATURE_MODULES = ("encoder_level", "latent", "decoder_level", "refinement", "body")

    def __init__(self, base: str | Mapping[str, Any], teacher: str | nn.Module, preset: str | None = None, feature_weight: float = 0.0):
        self.base = get_task(base)
        if not isinstance(self.base, _SingleInputTask):
            raise ValueError(f"distillation needs a task whose model takes the input image alone (restoration, rgb_to_hsi), not {self.base.name!r}")
        if isinstance(teacher, nn.Module):
            self.teacher = teacher
        else:
            from ..models.checkpoint import load_model

            self.teacher = load_model(teacher, preset=preset, verbose=False)
        self.teacher.eval().requires_grad_(False)
        self.name = f"distill_{self.base.name}"
        self.protocol = getattr(self.base, "protocol", "")
        self.feature_weight = float(feature_weight)
        self._teacher_features: list[torch.Tensor] = []
        self._student_features: list[torch.Tensor] = []

    def _feature_modules(self, model: nn.Module) -> list[nn.Module]:
        return [m for n, m in model.named_children() if n.startswith(self.FEATURE_MODULES)]

    @torch.no_grad()
    def prepare_batch(self, batch: Mapping[str, torch.Tensor]) -> dict:
        x = batch["input"]
        self.teacher.to(x.device)
        hooks = [m.register_forward_hook(lambda _m, _i, out: self._teacher_features.append(out)) for m in self._feature_modules(self.teacher)] \
            if self.feature_weight else []
        self._teacher_features = []
        try:
            h, w = x.shape[-2:]
            target = self.teacher(pad_to_multiple(x, int(getattr(self.teacher, "size_multiple", 1))))[..., :h, :w]
        finally:
            for hook in hooks:
                hook.remove()
        prepared = {**batch, "target": target.float()}
        if "target" in batch:
            prepared["ground_truth"] = batch["target"]
        return prepared

    def forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not self.feature_weight:
            return model(batch["input"])
        self._student_features = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: self._student_features.append(out)) for m in self._feature_modules(getattr(model, "module", model))]
        try:
            return model(batch["input"])
        finally:
            for hook in hooks:
                hook.remove()

    def extra_loss(self) -> torch.Tensor | None:
        """The feature term of the last ``forward`` (None without ``feature_weight``)."""
        if not self.feature_weight or not self._student_features:
            return None
        terms = [F.l1_loss(s.float(), t.float()) for s, t in zip(self._student_features, self._teacher_features)]
        return self.feature_weight * sum(terms) / len(terms)

    def predict(self, model: nn.Module, batch: Mapping[str, torch.Tensor], tile: int | None = None, ensemble: str = "none") -> torch.Tensor:
        return self.base.predict(model, batch, tile=tile, ensemble=ensemble)

    def metrics(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor], protocol: str | None = None) -> dict[str, torch.Tensor]:
        mse = (pred.double() - batch["target"].double()).pow(2).flatten(1).mean(1)
        values = {"psnr_to_teacher": 10 * torch.log10(1.0 / mse.clamp_min(1e-20)).cpu()}
        if "ground_truth" in batch:
            values.update(self.base.metrics(pred, {**batch, "target": batch["ground_truth"]}, protocol))
        return values


def _check_protocol(task, protocol: str | None) -> None:
    if protocol not in (None, task.protocol):
        raise ValueError(f"the {task.name} task is scored with the {task.protocol!r} protocol, not {protocol!r}")


TASKS: dict[str, Callable[..., Any]] = {
    "deraining": lambda protocol="deraining": RestorationTask("deraining", protocol),
    "motion_deblurring": lambda protocol="gopro_hide": RestorationTask("motion_deblurring", protocol),
    "defocus_deblurring": lambda protocol="dpdd": RestorationTask("defocus_deblurring", protocol),
    "gaussian_denoising": lambda protocol="gaussian_denoising": RestorationTask("gaussian_denoising", protocol),
    "real_denoising": lambda protocol="sidd": RestorationTask("real_denoising", protocol),
    "rgb_to_hsi": RGBToHSITask,
    "cassi": CASSITask,
    "real_cassi": RealCASSITask,
    "distill": DistillationTask,
}


def task_name(spec: str | Mapping[str, Any]) -> str:
    """The task's name from a config's ``task`` entry (a name, or ``{name: ..., options}``)."""
    return spec if isinstance(spec, str) else str(spec.get("name"))


def get_task(spec: str | Mapping[str, Any]):
    """The task object of a config's ``task`` entry: a name, or a mapping ``{name, **options}``."""
    options = {} if isinstance(spec, str) else dict(spec)
    name = spec if isinstance(spec, str) else options.pop("name", None)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(TASKS)}")
    try:
        return TASKS[name](**options)
    except TypeError as err:
        raise ValueError(f"task {name!r}: {err}") from None
