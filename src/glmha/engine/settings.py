"""The ``train`` section of a config as :class:`TrainSettings`, and the model, optimizer, scheduler and autocast it asks for."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..models import create_model
from .config import ConfigError
from .tasks import LOSSES

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainSettings:
    """The ``train`` section of a config.

    ``stages`` (progressive training) is a list of ``{iters, patch_size, batch_size}``; without
    it every iteration uses ``patch_size`` and ``batch_size``. Batch sizes are per process
    (per GPU). With stages, training crops are cut at the largest stage's patch size and each
    batch is then cut, at one random position for the whole batch, to the current stage's
    size, as the official Restormer trainer does (its ``gt_size`` and ``mini_gt_sizes``).

    ``precision``: ``fp32`` (the official recipes), or ``bf16`` / ``fp16`` autocast (bf16 also
    on the CPU; fp16 needs a GPU). ``mixup``: the official Restormer mixing augmentation,
    ``{beta, use_identity}``: per batch, with probability 1/2 when ``use_identity`` (else
    always), inputs and targets are blended with a shuffled copy of the batch by a weight
    drawn from Beta(beta, beta).

    ``init_from``: a new run starts from these weights (an official ``.pth``, this project's
    weights file or run folder; CSA weights into a GLMHA model are converted by SVD), see
    :func:`glmha.engine.finetune.initialise_from`. A run resumed from its own checkpoint ignores it.
    """

    total_iters: int
    batch_size: int = 8
    patch_size: int | None = None
    stages: list[dict] | None = None
    loss: str = "l1"
    grad_clip: float | None = None
    precision: str = "fp32"
    mixup: dict | None = None
    val_every: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 100
    keep_checkpoints: int = 2
    num_workers: int = 0
    deterministic: bool = False
    progress: bool = True
    tensorboard: bool = True
    init_from: str | None = None  # weights a new run starts from (see glmha.engine.finetune); ignored when resuming

    def __post_init__(self):
        if not (isinstance(self.keep_checkpoints, int) and self.keep_checkpoints >= 1):
            raise ConfigError(f"train.keep_checkpoints must be a positive integer (the newest checkpoint is always kept), got {self.keep_checkpoints!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"train.loss {self.loss!r} unknown; available: {sorted(LOSSES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.stages:
            for stage in self.stages:
                if set(stage) - {"iters", "patch_size", "batch_size"} or "iters" not in stage:
                    raise ConfigError(f"each train.stages entry needs iters (and may set patch_size, batch_size), got {stage}")
            if sum(s["iters"] for s in self.stages) != self.total_iters:
                raise ConfigError(
                    f"train.stages last {sum(s['iters'] for s in self.stages)} iterations in all, but total_iters is {self.total_iters}"
                )

        if self.mixup is not None:
            if not isinstance(self.mixup, dict) or set(self.mixup) - {"beta", "use_identity"} or "beta" not in self.mixup:
                raise ConfigError(f"train.mixup must be {{beta: float, use_identity: bool}} or null, got {self.mixup}")
            if not float(self.mixup["beta"]) > 0:
                raise ConfigError(f"train.mixup.beta must be positive, got {self.mixup['beta']}")

    @property
    def crop_size(self) -> int | None:
        """Side of the training crops the dataset cuts: the largest stage's patch size with stages."""
        sizes = [s.get("patch_size", self.patch_size) for s in self.stages or []]
        return max(sizes) if sizes and None not in sizes else self.patch_size

    def stage_at(self, iteration: int) -> tuple[int, int | None, int]:
        """(stage index, patch size, batch size) in force at ``iteration``."""
        if not self.stages:
            return 0, self.patch_size, self.batch_size
        end = 0
        for i, stage in enumerate(self.stages):
            end += stage["iters"]
            if iteration < end or i == len(self.stages) - 1:
                return i, stage.get("patch_size", self.patch_size), stage.get("batch_size", self.batch_size)
        raise AssertionError("unreachable")


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    output_dir: Path
    iteration: int  # iterations done so far (== total_iters when finished)
    finished: bool
    weights: Path  # newest weights (safetensors)
    # Validation runs on rank 0 only: under torchrun the other ranks return empty metrics.
    metrics: dict[str, float] = field(default_factory=dict)  # last validation
    best: dict[str, float] = field(default_factory=dict)  # best validation (by the task's primary metric)
    history: list[dict] = field(default_factory=list)  # every validation, with its iteration
    train_seconds: float = 0.0


def _settings(config: Mapping) -> TrainSettings:
    section = dict(config.get("train") or {})
    names = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigError(f"unknown train settings {unknown}; accepted: {sorted(names)}")
    if "total_iters" not in section:
        raise ConfigError("the train section needs total_iters")
    return TrainSettings(**section)


def build_model(config: Mapping) -> nn.Module:
    """``create_model(**config["model"])``."""
    spec = dict(config["model"])
    if "name" not in spec:
        raise ConfigError("the model section needs a name")
    return create_model(spec.pop("name"), **spec)


def build_optimizer(model: nn.Module, spec: Mapping) -> torch.optim.Optimizer:
    """``torch.optim.<name>(params, **rest)``."""
    spec = dict(spec)
    name = spec.pop("name", None)
    cls = getattr(torch.optim, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer.name {name!r} is not a torch.optim optimizer")
    if "betas" in spec:
        spec["betas"] = tuple(spec["betas"])
    return cls([p for p in model.parameters() if p.requires_grad], **spec)


def build_scheduler(optimizer: torch.optim.Optimizer, spec: Mapping | None):
    """PyTorch schedulers from ``{phases: [{name, ...}], milestones: [...]}`` (or one ``{name, ...}``),
    stepped once per iteration; several phases are chained with ``SequentialLR``."""
    if not spec:
        return None
    spec = dict(spec)
    if "phases" in spec:
        phases, milestones = spec.pop("phases"), spec.pop("milestones", [])
        if spec:
            raise ConfigError(f"scheduler: unexpected keys {sorted(spec)} beside phases and milestones")
    else:
        phases, milestones = [spec], []
    schedulers = []
    for phase in phases:
        phase = dict(phase)
        name = phase.pop("name", None)
        cls = getattr(torch.optim.lr_scheduler, str(name), None)
        if not isinstance(cls, type):
            raise ConfigError(f"scheduler name {name!r} is not in torch.optim.lr_scheduler")
        schedulers.append(cls(optimizer, **phase))
    if len(schedulers) == 1:
        return schedulers[0]
    if len(milestones) != len(schedulers) - 1:
        raise ConfigError(f"scheduler: {len(schedulers)} phases need {len(schedulers) - 1} milestones, got {milestones}")
    return torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers, milestones=list(milestones))


def _autocast(device: torch.device, precision: str):
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a GPU; on the CPU use fp32 or bf16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")

