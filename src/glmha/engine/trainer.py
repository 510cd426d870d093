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

Every file is written atomically (temporary file, then rename), and ``latest.json`` only
names a checkpoint once both of its files are complete, so a run killed at any moment
restarts from its last checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..checkpoint import CheckpointError, atomic_write, load_checkpoint, save_weights
from ..models import create_model
from .config import ConfigError, load_config
from .distributed import DistributedContext, init_distributed
from .sampling import SampleStream
from .tasks import LOSSES, build_dataset, get_task, task_name

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


# ----------------------------------------------------------------------------- checkpoints
# The training state is saved as tensors and plain Python values only, so that it loads with
# ``torch.load(weights_only=True)``: reading a run folder never runs code from a pickle.
STATE_KEYS = ("iteration", "samples_seen", "optimizer", "scaler", "rng")
_CHECKPOINT_NAME = re.compile(r"iter_\d+\.(safetensors|state\.pt)")


def _rng_state() -> dict:
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"].tolist()), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_training_state(path: str | os.PathLike) -> dict:
    """The training state of a checkpoint (optimizer, scheduler, scaler, RNG states, counters).

    Loaded with ``weights_only=True``; a file that is damaged or holds anything but tensors and
    plain values is refused with :class:`CheckpointError` naming it.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged zip, foreign pickle, objects weights_only refuses: all the same to the user
        reason = "it holds objects other than tensors and plain values" if isinstance(err, pickle.UnpicklingError) else type(err).__name__
        raise CheckpointError(f"{path} is not a readable glmha training state ({reason}); it was not loaded. "
                              "Resume from another checkpoint or start afresh in another --output-dir") from None
    if not isinstance(state, dict) or any(key not in state for key in STATE_KEYS):
        raise CheckpointError(f"{path} is not a glmha training state: it lacks {[k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]}")
    return state


def latest_checkpoint(output_dir: str | os.PathLike) -> tuple[Path, Path] | None:
    """(weights, state) of the newest complete checkpoint of a run, or None."""
    pointer = Path(output_dir) / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    try:
        entry = json.loads(pointer.read_text())
        names = entry["weights"], entry["state"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{pointer} is damaged: expected JSON naming the newest checkpoint's weights and state files") from None
    if not all(isinstance(name, str) and _CHECKPOINT_NAME.fullmatch(name) for name in names):
        raise CheckpointError(f"{pointer} names {names}, which are not checkpoint files of this folder")
    weights, state = pointer.parent / names[0], pointer.parent / names[1]
    if not (weights.is_file() and state.is_file()):
        raise CheckpointError(f"{pointer} names {weights.name} and {state.name}, which are missing")
    return weights, state


def _save_checkpoint(output_dir: Path, model: nn.Module, state: dict, keep: int) -> Path:
    folder = output_dir / "checkpoints"
    stem = f"iter_{state['iteration']:08d}"
    weights = save_weights(model, folder / f"{stem}.safetensors", metadata={"iteration": str(state["iteration"])})
    atomic_write(folder / f"{stem}.state.pt", lambda tmp: torch.save(state, tmp))
    pointer = json.dumps({"iteration": state["iteration"], "weights": weights.name, "state": f"{stem}.state.pt"})
    atomic_write(folder / "latest.json", lambda tmp: Path(tmp).write_text(pointer))
    # Older checkpoints go only after the pointer has moved past them; the one just written
    # always stays (a folder may hold higher-numbered leftovers of an earlier, longer run).
    others = sorted({p.name.split(".")[0] for p in folder.glob("iter_*.safetensors")} - {stem}, key=lambda name: int(name[5:]))
    for old in others[: max(len(others) - (max(keep, 1) - 1), 0)]:
        for suffix in (".safetensors", ".state.pt"):
            (folder / f"{old}{suffix}").unlink(missing_ok=True)
    return weights


# ----------------------------------------------------------------------------- the run folder
RESUME_MODES = ("auto", "never", "force")
# Settings that do not change what a run computes: a resumed run may change them freely.
RESUME_FREE_KEYS = ("description", "output_dir", "evaluate", "data.test", "train.total_iters", "train.progress", "train.tensorboard",
                    "train.log_every", "train.num_workers", "train.checkpoint_every", "train.keep_checkpoints", "train.init_from")
LOCK_FILE = ".lock"


class RunFolderError(ConfigError):
    """The run folder cannot be used as asked: in use by another run, or its checkpoints do not fit the request."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after a checkpoint was written; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: Mapping, current: Mapping, free: Sequence[str] = RESUME_FREE_KEYS) -> list[str]:
    """Dotted keys whose values differ between a run's saved config and ``current``, except those under ``free``."""
    a, b = (_flatten(json.loads(json.dumps(c, default=str))) for c in (saved, current))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>")
                  and not any(k == f or k.startswith(f + ".") for f in free))


@contextlib.contextmanager
def run_lock(output_dir: Path):
    """Hold ``output_dir/.lock`` (``flock``) while a run uses the folder; the system drops it when the process ends."""
    try:
        import fcntl
    except ImportError:  # no flock on Windows: runs are not guarded there
        yield
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip()
            raise RunFolderError(f"run folder {output_dir} is in use by another run{f' (process {owner})' if owner else ''}; "
                                 "wait for it to end or choose another --output-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_stale_temporaries(output_dir: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.*.tmp``) a killed run left in its folder; call with the lock held."""
    stale = [p for folder in (output_dir, output_dir / "checkpoints") for p in folder.glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def stop_on_signals():
    """Record SIGINT / SIGTERM instead of dying, so the loop can write a checkpoint first; a second signal stops at once."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set in the main thread
        yield received
        return

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class RunLog:
    """The run's messages: on the console and, with the config and versions at the top of each start, in ``train.log``."""

    def __init__(self, path: Path | None):
        self.file = open(path, "a", encoding="utf-8") if path is not None else None

    def header(self, cfg: Mapping, device: torch.device) -> None:
        import platform

        from .._version import __version__

        where = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
        self.line(f"==== glmha train started {time.strftime('%Y-%m-%d %H:%M:%S')}", console=False)
        self.line(f"versions: glmha {__version__}, torch {torch.__version__}, python {platform.python_version()}; device {where}", console=False)
        self.line("config:\n" + yaml.safe_dump(json.loads(json.dumps(cfg, default=str)), sort_keys=False).rstrip(), console=False)

    def line(self, text: str, console: bool = True) -> None:
        if self.file is None:
            return  # other ranks than 0 stay quiet
        if console:
            from tqdm.auto import tqdm

            tqdm.write(text)  # above a running progress bar
        self.file.write(text + "\n")
        self.file.flush()

    def close(self, error: BaseException | None = None) -> None:
        if self.file is not None:
            if error is not None:
                self.line(f"stopped: {one_line(error)}", console=False)
            self.file.close()
            self.file = None


@contextlib.contextmanager
def _run_log(path: Path | None):
    log = RunLog(path)
    try:
        yield log
    except BaseException as err:
        log.close(err)
        raise
    log.close()


def _has_checkpoints(output_dir: Path) -> bool:
    folder = output_dir / "checkpoints"
    return (folder / "latest.json").is_file() or any(folder.glob("iter_*.safetensors"))


def _resume_mode(resume: bool | str) -> str:
    mode = ("auto" if resume else "never") if isinstance(resume, bool) else resume
    if mode not in RESUME_MODES:
        raise ConfigError(f"resume must be one of {list(RESUME_MODES)}, got {resume!r}")
    return mode


def one_line(err: BaseException) -> str:
    """A multi-line error message (the key lists of a checkpoint that does not fit) as one line."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


# ----------------------------------------------------------------------------- the loop
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


def _autocast(device: torch.device, precision: str):
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a GPU; on the CPU use fp32 or bf16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")


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
            return _train(cfg, settings, task, output_dir, seed, ctx, mode, max_steps, time_budget_s, model, stack)
    finally:
        ctx.close()


def _train(cfg, settings: TrainSettings, task, output_dir: Path, seed: int, ctx: DistributedContext, mode: str, max_steps, time_budget_s,
           model: nn.Module | None, stack: contextlib.ExitStack) -> TrainResult:
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
    log = stack.enter_context(_run_log(output_dir / "train.log" if ctx.is_main else None))
    log.header(cfg, device)
    if mode == "never" and _has_checkpoints(output_dir):
        raise RunFolderError(f"{output_dir} already holds checkpoints and --resume never starts afresh; "
                             "choose another --output-dir (or continue this run with --resume auto)")
    found = latest_checkpoint(output_dir) if mode != "never" else None
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
