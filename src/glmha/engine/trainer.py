"""One training loop for every task: AMP, clipping, validation, checkpoints, exact resume, DDP.

Entry point: :func:`train`. A run writes into its ``output_dir``::

    checkpoints/iter_00004000.safetensors   model weights (load with glmha.load_checkpoint)
    checkpoints/iter_00004000.state.pt      optimizer, scheduler, grad scaler, RNG states, counters
    checkpoints/latest.json                 the newest complete checkpoint (written last)
    model.safetensors                       final weights (the last iteration)
    best.safetensors                        weights of the best validation so far (task's primary metric)
    tensorboard/                            loss, learning rate, validation metrics (with glmha[tensorboard])
    train.log                               the run's messages, each start headed by its config and versions
    config.yaml                             the resolved config
    init_from.json                          with train.init_from: which tensors were loaded, new, dropped
    .lock                                   held while a run uses the folder

Files are written atomically, so a run killed at any moment restarts from its last checkpoint
(:mod:`glmha.engine.run_state`).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..io.files import atomic_write
from ..io.folders import claim_folder, folder_kind
from ..models.checkpoint import CheckpointError, load_checkpoint, save_weights
from .batches import _loader, _to_device, batch_generator, mixup, prepare_batch, random_window
from .config import ConfigError, input_paths, load_config
from .distributed import DistributedContext, init_distributed
from .run_log import TrainingInterrupted, _run_log, one_line, stop_on_signals
from .run_state import (RunFolderError, _has_checkpoints, _resume_mode, _rng_state, _save_checkpoint, _set_rng_state, config_differences,
                        latest_checkpoint, read_training_state, remove_stale_temporaries, run_lock)
from .settings import TrainResult, TrainSettings, _autocast, _settings, build_model, build_optimizer, build_scheduler
from .tasks import LOSSES, build_dataset, get_task, task_name


@torch.no_grad()
def validate(model: nn.Module, task, dataset, device: torch.device, precision: str = "fp32", max_items: int | None = None) -> dict[str, float]:
    """Mean of the task's metrics over ``dataset`` (whole images, one at a time)."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    for index in range(len(dataset) if max_items is None else min(max_items, len(dataset))):
        item = dataset[index]
        batch = prepare_batch(task, _to_device({k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for k, v in item.items()}, device))
        with _autocast(device, precision):
            pred = task.predict(model, batch)
        for name, values in task.metrics(pred.float(), batch).items():
            totals[name] = totals.get(name, 0.0) + float(values.sum())
        count += 1
    model.train(was_training)
    return {name: total / max(count, 1) for name, total in totals.items()}


def _same_file(path: Path, other: Any) -> bool:
    if other is None or isinstance(other, Mapping):
        return False
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def train(
    config: str | os.PathLike | Mapping[str, Any],
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    variant: str | None = None,
    output_dir: str | os.PathLike | None = None,
    resume: bool | str = "auto",
    max_steps: int | None = None,
    time_budget_s: float | None = None,
    device: str | torch.device | None = None,
    model: nn.Module | None = None,
) -> TrainResult:
    """Train the experiment described by ``config`` (a YAML path or a dict).

    Args:
        config: config file or dict (see :mod:`glmha.engine.config`).
        overrides: ``["train.total_iters=10", ...]`` or ``{"train.total_iters": 10}``.
        variant: a named variant of the config, e.g. ``"smoke"``.
        output_dir: where the run writes (default: the config's ``output_dir``).
        resume: ``"auto"`` (or True): continue from the newest checkpoint in ``output_dir`` if
            there is one, refusing one whose config differs (listing the keys) except in
            :data:`RESUME_FREE_KEYS`; ``"force"``: continue even then; ``"never"`` (or False):
            start afresh, refusing a folder that already holds checkpoints.
        max_steps: stop after this many iterations in this call (a checkpoint is written), e.g.
            to train in slices; the schedule still spans ``train.total_iters``.
        time_budget_s: stop (with a checkpoint) once this many seconds of training have passed.
        device: force a device (default: this process's GPU under torchrun, else CUDA if
            available, else CPU).
        model: train this model, already built and initialised (e.g. with per-layer ranks a
            config cannot express), instead of building ``config["model"]``; trained in place.
            A resumed run loads its checkpoint into it.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this; rank 0 validates and
    writes, the others train their share of each global batch.

    A run holds a lock on its folder (a second run into it fails), and SIGINT / SIGTERM write a
    checkpoint before raising :class:`TrainingInterrupted`.
    """
    cfg = load_config(config, overrides, variant)
    settings = _settings(cfg)
    task = get_task(cfg["task"])
    output_dir = Path(output_dir or cfg.get("output_dir") or "runs/" + task_name(cfg["task"]))
    seed = int(cfg.get("seed", 0))
    mode = _resume_mode(resume)
    ctx = init_distributed(device)
    try:
        with contextlib.ExitStack() as stack:
            if ctx.is_main:  # before anything is read or written: a folder of something else is refused as it is
                inputs = input_paths(cfg, config)
                if _same_file(output_dir / "config.yaml", config) and (folder_kind(output_dir) == "train" or (output_dir / "checkpoints").is_dir()):
                    inputs = inputs[1:]  # a run resumed from its own config.yaml
                claim_folder(output_dir, "train", inputs=inputs, legacy=("checkpoints", "train.log"), option="output_dir")
            return _train(cfg, settings, task, output_dir, seed, ctx, mode, max_steps, time_budget_s, model, stack, config)
    finally:
        ctx.close()


def _train(cfg, settings: TrainSettings, task, output_dir: Path, seed: int, ctx: DistributedContext, mode: str, max_steps, time_budget_s,
           model: nn.Module | None, stack: contextlib.ExitStack, config: Any = None) -> TrainResult:
    torch.manual_seed(seed)  # same initial weights on every rank
    random.seed(seed)
    np.random.seed(seed)
    if settings.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    device = ctx.device
    model = (build_model(cfg) if model is None else model).to(device)
    train_set = build_dataset(cfg["data"]["train"])
    layout = getattr(train_set, "batch_layout", None)
    batch_sizes = {stage.get("batch_size", settings.batch_size) for stage in settings.stages or [{}]}
    if layout is not None and batch_sizes != {len(layout)}:
        raise ConfigError(f"data.train.batch_layout has {len(layout)} entries but the batch size is {sorted(batch_sizes)}; they must match")
    val_set = build_dataset(cfg["data"]["val"]) if cfg["data"].get("val") else None
    optimizer = build_optimizer(model, cfg.get("optimizer") or {"name": "Adam", "lr": 1e-4})
    scheduler = build_scheduler(optimizer, cfg.get("scheduler"))
    precision = settings.precision
    _autocast(device, precision)  # refuses fp16 on the CPU before anything runs
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loss_fn = LOSSES[settings.loss]

    iteration, samples_seen, history, best = 0, 0, [], {}
    if ctx.is_main:
        stack.enter_context(run_lock(output_dir))
        remove_stale_temporaries(output_dir)
    # before the log is opened: a refused folder is left exactly as it was
    trained = [name for name in ("model.safetensors", "best.safetensors") if (output_dir / name).exists()]
    if mode == "never" and (_has_checkpoints(output_dir) or trained):
        held = "checkpoints" if _has_checkpoints(output_dir) else " and ".join(trained)
        raise RunFolderError(f"{output_dir} already holds {held} and --resume never starts afresh without replacing anything; "
                             "choose another --output-dir (or continue this run with --resume auto)")
    found = latest_checkpoint(output_dir) if mode != "never" else None
    if not found and trained:
        raise RunFolderError(f"{output_dir} holds trained weights ({' and '.join(trained)}) but no checkpoint to resume from; "
                             "they were left as they are: choose another --output-dir")
    log = stack.enter_context(_run_log(output_dir / "train.log" if ctx.is_main else None))
    log.header(cfg, device)
    if found:
        weights, state_path = found
        state = read_training_state(state_path)
        saved_config = json.loads(state["config"]) if isinstance(state.get("config"), str) else None
        differing = config_differences(saved_config, cfg) if saved_config is not None else []
        if differing and mode != "force":
            raise RunFolderError(f"{output_dir} was trained with another config (differing: {', '.join(differing)}); "
                                 "resume anyway with --resume force, or start afresh in another --output-dir")
        log.line(f"resuming from {weights} (iteration {state['iteration']} of {settings.total_iters})"
                 + (f" despite a changed config: {', '.join(differing)}" if differing else ""))
        try:
            load_checkpoint(model, weights)
        except CheckpointError as err:
            raise CheckpointError(one_line(err)) from None
        try:
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
            iteration, samples_seen = int(state["iteration"]), int(state["samples_seen"])
        except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as err:
            raise CheckpointError(f"{state_path} does not fit this run's optimizer, scheduler or counters: {one_line(err)}") from None
        history, best = state.get("history", []), state.get("best", {})
    if settings.init_from and found:
        log.line(f"train.init_from ({settings.init_from}) ignored: resuming this run from its own checkpoint")
    elif settings.init_from:
        from .finetune import initialise_from

        report = initialise_from(model, settings.init_from)
        log.line(report.summary())
        if ctx.is_main:
            atomic_write(output_dir / "init_from.json", lambda tmp: Path(tmp).write_text(json.dumps(report.to_dict(), indent=1) + "\n"))
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if not _same_file(output_dir / "config.yaml", config):  # resuming from the run's own config: it is an input
            atomic_write(output_dir / "config.yaml", lambda tmp: Path(tmp).write_text(yaml.safe_dump(cfg, sort_keys=False)))

    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if ctx.world_size > 1 else model
    writer = None
    if ctx.is_main and settings.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # an optional extra: glmha[tensorboard]
            log.line("tensorboard is not installed: no TensorBoard logs (pip install 'glmha[tensorboard]'); train.log has the numbers")
        else:
            writer = SummaryWriter(str(output_dir / "tensorboard"))
    from tqdm.auto import tqdm

    bar = tqdm(total=settings.total_iters, initial=iteration, disable=not (ctx.is_main and settings.progress), dynamic_ncols=True, desc=task_name(cfg["task"]))

    def checkpoint() -> Path:
        state = {
            "iteration": iteration, "samples_seen": samples_seen,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
            "scaler": scaler.state_dict(), "rng": _rng_state(), "history": history, "best": best,
            "config": json.dumps(cfg, default=str),
        }
        return _save_checkpoint(output_dir, model, state, settings.keep_checkpoints)

    start_time, start_iteration = time.monotonic(), iteration
    stage_index, loader_iter, last_saved = None, None, iteration if found else -1
    metrics: dict[str, float] = history[-1]["metrics"] if history else {}
    received = stack.enter_context(stop_on_signals())
    net.train()
    try:
        while iteration < settings.total_iters:
            index, patch_size, batch_size = settings.stage_at(iteration)
            if index != stage_index:
                stage_index = index
                if hasattr(train_set, "set_patch_size"):
                    train_set.set_patch_size(settings.crop_size)
                loader_iter = iter(_loader(train_set, settings, batch_size, seed, samples_seen, ctx))
            batch = _to_device(next(loader_iter), device)
            if patch_size and settings.crop_size and patch_size < settings.crop_size:
                batch = random_window(batch, patch_size, batch_generator(seed, iteration, 0))
            if settings.mixup:
                batch = mixup(batch, float(settings.mixup["beta"]), bool(settings.mixup.get("use_identity", False)),
                              batch_generator(seed, iteration, 1 + ctx.rank))
            batch = prepare_batch(task, batch)
            with _autocast(device, precision):
                pred = task.forward(net, batch)
            loss = loss_fn(pred.float(), batch["target"])
            extra = task.extra_loss() if hasattr(task, "extra_loss") else None
            if extra is not None:
                loss = loss + extra
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at iteration {iteration + 1}; lower the learning rate or check the data")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if settings.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            iteration += 1
            samples_seen += batch_size * ctx.world_size
            bar.update(1)

            if iteration % settings.log_every == 0 or iteration == 1:
                bar.set_postfix(loss=f"{loss.item():.4g}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
                log.line(f"iteration {iteration}: loss {loss.item():.6g}, lr {optimizer.param_groups[0]['lr']:.6g}", console=False)
                if writer:
                    writer.add_scalar("train/loss", loss.item(), iteration)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], iteration)
            done = iteration == settings.total_iters
            if val_set is not None and (iteration % settings.val_every == 0 or done):
                if ctx.is_main:
                    metrics = validate(model, task, val_set, device, precision)
                    history.append({"iteration": iteration, "metrics": metrics})
                    key = task.primary_metric
                    if not best or (metrics[key] > best[key] if task.higher_is_better else metrics[key] < best[key]):
                        best = dict(metrics, iteration=iteration)
                        save_weights(model, output_dir / "best.safetensors",
                                     metadata={"iteration": str(iteration), key: repr(metrics[key])})
                    if writer:
                        for name, value in metrics.items():
                            writer.add_scalar(f"val/{name}", value, iteration)
                    log.line(f"iteration {iteration}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                ctx.barrier()
            stop = (max_steps is not None and iteration - start_iteration >= max_steps) or (
                time_budget_s is not None and time.monotonic() - start_time >= time_budget_s
            ) or bool(received)
            stop = ctx.broadcast_flag(stop)  # every rank stops at the same iteration (torchrun signals each)
            if iteration % settings.checkpoint_every == 0 or done or stop:
                if ctx.is_main:
                    checkpoint()
                last_saved = iteration
                ctx.barrier()
            if stop:
                break
    finally:
        bar.close()
        if writer:
            writer.close()

    if ctx.is_main and last_saved != iteration:
        checkpoint()
    finished = iteration >= settings.total_iters
    if ctx.is_main and finished:
        save_weights(model, output_dir / "model.safetensors", metadata={"iteration": str(iteration)})
        log.line(f"finished: {iteration} iterations; weights {output_dir / 'model.safetensors'}", console=False)
    if received and not finished:
        name = signal.Signals(received[0]).name
        raise TrainingInterrupted(f"stopped by {name} at iteration {iteration} of {settings.total_iters}, after writing its checkpoint; "
                                  "run the same command again to resume", 128 + received[0])
    ctx.barrier()
    # Only rank 0 writes; other ranks (perhaps on other nodes) just report where it is.
    weights = output_dir / "model.safetensors" if finished or not ctx.is_main else latest_checkpoint(output_dir)[0]
    return TrainResult(
        output_dir=output_dir, iteration=iteration, finished=finished, weights=weights,
        metrics=metrics, best=best, history=history, train_seconds=time.monotonic() - start_time,
    )
