"""What each training step feeds the model: the data loader, the batch transforms (progressive window, mixup), the task's preparation."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import ConfigError
from .distributed import DistributedContext
from .sampling import SampleStream
from .settings import TrainSettings


def _to_device(batch: Mapping, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _loader(dataset, settings: TrainSettings, batch_size: int, seed: int, start: int, ctx: DistributedContext) -> DataLoader:
    sampler = SampleStream(len(dataset), batch_size, seed, start, ctx.rank, ctx.world_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=settings.num_workers,
        pin_memory=ctx.device.type == "cuda", persistent_workers=False,
    )


def batch_generator(seed: int, iteration: int, stream: int) -> np.random.Generator:
    """Random numbers of one training step's batch transforms: a function of the step (exact resume).

    The progressive crop uses stream 0 on every process, so that N processes cut their shares
    of a global batch where one process would cut the whole; mixup uses stream ``1 + rank``
    and mixes within each process's batch, as the official trainer does on each GPU.
    """
    return np.random.default_rng([seed, iteration, stream, 1])


def random_window(batch: dict, size: int, rng: np.random.Generator) -> dict:
    """Cut ``input`` and ``target`` of a whole batch to ``size x size`` at one random position (official
    progressive training: ``x0 = int((gt_size - mini_gt_size) * random())``)."""
    height, width = batch["target"].shape[-2:]
    top, left = int((height - size) * rng.random()), int((width - size) * rng.random())
    window = (Ellipsis, slice(top, top + size), slice(left, left + size))
    return {k: v[window] if k in ("input", "target") else v for k, v in batch.items()}


def mixup(batch: dict, beta: float, use_identity: bool, rng: np.random.Generator) -> dict:
    """The official Restormer mixing augmentation of one batch (see :class:`TrainSettings`)."""
    if "input" not in batch:
        raise ConfigError("train.mixup blends inputs and targets; this task's batches have no 'input'")
    if use_identity and rng.integers(2) == 1:
        return batch
    lam = float(rng.beta(beta, beta))
    order = torch.from_numpy(rng.permutation(batch["target"].shape[0])).to(batch["target"].device)
    mixed = {k: lam * batch[k] + (1 - lam) * batch[k][order] for k in ("input", "target")}
    return {**batch, **mixed}


def prepare_batch(task, batch: dict) -> dict:
    """A task's own step on a batch on its device before the model sees it (distillation: the teacher's outputs)."""
    prepare = getattr(task, "prepare_batch", None)
    return prepare(batch) if prepare is not None else batch
