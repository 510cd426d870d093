"""``glmha distill``: a trained CSA model (an official release file included) into GLMHA, without its training data.

1. The student is the teacher with its channel attention swapped for GLMHA, warm-started from
   the teacher's own key/value tokens. By default each layer's rank and tokens are those that
   change the teacher's output on a few training inputs least for the MACs that rank ratio 0.5
   saves (:mod:`glmha.analysis.allocation`); or one rank for all layers (``rank_ratio``,
   tokens by SVD), per-layer ranks keeping ``share`` of each attention spectrum (as
   ``glmha rank --suggest``), or another ``macs_saving``.
2. The student learns to reproduce the teacher's outputs on degraded inputs alone (no ground
   truth; L1, or for RGB-to-HSI an L1 relative to the teacher's output, as MRAE is relative, and
   its ranks are then chosen on the relative change too):
   the engine trains it with the teacher's output as the target
   (:class:`glmha.engine.tasks.DistillationTask`), with the engine's checkpoints, resume,
   AMP, DDP and progress.
3. A report compares student and teacher: parameters and MACs always; on held-out inputs also
   the PSNR of the student's output against the teacher's and, where the held-out data have
   ground truths, both models' task metrics.

The per-layer choice runs the teacher once per layer and candidate rank (706 times for the
official Restormer); its cost is measured first and, when over ``choice_budget_s`` (5 minutes),
the choice is made on fewer, smaller crops and fewer candidate ranks, and says so
(:func:`plan_choice`). It prints its progress with the time left.

Under ``torchrun`` every process calls :func:`distill`: the processes share the rank choice
(layer by layer) and train the student with DistributedDataParallel, each on its share of the
global ``batch_size`` with the teacher's outputs on that share, so that N processes compute
what one process does; rank 0 alone writes and prints.

The run folder holds ``distill_run.json`` (the teacher's file by path, size and SHA-256, not a
copy; a teacher given as a model object is saved as ``teacher.safetensors``), ``student_ranks.json``,
``distill_config.json``, the engine's files (``model.safetensors`` is the distilled student),
``distill.md`` and ``distill.json``. ``student_init.safetensors`` (the warm start) lives only
until the first checkpoint, and only the newest checkpoint is kept until the run finishes, when
it goes too: a finished folder is the student and its reports. The same call resumes an
interrupted run, with or without ``torchrun``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO

import numpy as np
import torch
from torch import nn

from ..inference.memory import format_duration
from ..io.files import atomic_write

# The engine task a teacher is distilled on, from its preset or its architecture.
PRESET_TASKS = {
    "deraining": "deraining", "motion_deblurring": "motion_deblurring", "single_image_defocus_deblurring": "defocus_deblurring",
    "real_denoising": "real_denoising", "gaussian": "gaussian_denoising", "mst_plus_plus": "rgb_to_hsi",
}
MODEL_TASKS = {"restormer": "deraining", "mst_plus_plus": "rgb_to_hsi"}
# MST++ is judged by MRAE, a relative error: its student's ranks are chosen, and the student
# taught, with the teacher's output as the denominator, so that dark pixels weigh as they do in
# the metric (docs/distillation.md).
RELATIVE_TASKS = ("rgb_to_hsi",)
DISTILL_LOSSES = {"rgb_to_hsi": "relative_l1"}
ANALYSIS_INPUTS = 8  # training inputs the student's ranks are measured on
ANALYSIS_SIZE = 128  # and their largest side
CHOICE_BUDGET_S = 300.0  # what the per-layer rank choice may cost before it is made cheaper: "a few minutes"
# (crops, largest side, candidate ranks per layer) of the rank choice, from the full one to the
# cheapest: tried in order until one fits the budget. Fewer crops first, then smaller ones,
# then a coarser search; 4 candidates still hold rank ratio 0.5, the default's cost.
CHOICE_LEVELS = ((8, 128, 16), (4, 128, 16), (2, 128, 16), (2, 96, 16), (2, 64, 16), (2, 64, 8), (2, 64, 4), (1, 64, 4))


def default_task(model: nn.Module) -> str:
    """The task a teacher is distilled on when none is given: from its preset, else its architecture."""
    spec = getattr(model, "spec", None)
    preset = getattr(spec, "preset", None) or ""
    for prefix, task in PRESET_TASKS.items():
        if preset.startswith(prefix):
            return task
    if getattr(model, "dual_pixel_task", False) or preset.startswith("dual_pixel"):
        raise ValueError("a dual-pixel teacher takes view pairs; distillation takes single images (Restormer, MST++)")
    name = getattr(spec, "name", None) or type(model).__name__.lower()
    if name not in MODEL_TASKS:
        raise ValueError(f"distillation covers Restormer and MST++ teachers; this one is {name!r}")
    return MODEL_TASKS[name]


def analysis_crop(image: torch.Tensor, multiple: int = 1, limit: int = ANALYSIS_SIZE) -> torch.Tensor:
    """The centre of ``image`` (``... x H x W``), at most ``limit`` pixels a side and a multiple of
    ``multiple``: the rank choice runs the teacher many times, and needs sizes the network takes."""
    h, w = image.shape[-2:]
    side_h, side_w = (min(limit, n) // multiple * multiple for n in (h, w))
    if not side_h or not side_w:
        raise ValueError(f"an input of {h}x{w} pixels is smaller than the network's size multiple {multiple}")
    top, left = (h - side_h) // 2, (w - side_w) // 2
    return image[..., top:top + side_h, left:left + side_w]


def uniform_saving(teacher: nn.Module, example: torch.Tensor, rank_ratio: float = 0.5) -> float:
    """The share of ``teacher``'s MACs on ``example`` that GLMHA with one ``rank_ratio`` for every layer saves."""
    from ..attention import swap_attention
    from ..analysis import profile

    uniform = swap_attention(copy.deepcopy(teacher), "glmha", rank_ratio=rank_ratio)
    return 1 - profile(uniform, example).macs / profile(teacher, example).macs


def build_student(teacher: nn.Module, analysis_inputs: list[torch.Tensor], rank_ratio: float | None = None,
                  share: float | None = None, macs_saving: float | None = None,
                  relative: bool = False, *, candidates: int = 16, progress: Callable[[int, int], None] | None = None,
                  part: tuple[int, int] = (0, 1), gather: Callable[[dict], list[dict]] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The GLMHA student of ``teacher`` and a record of how its ranks were chosen. At most one of:

    - ``rank_ratio``: one rank ratio for every layer, tokens by the SVD of the projections;
    - ``share``: per-layer ranks keeping that share of each layer's attention spectrum on the inputs;
    - ``macs_saving``: per-layer ranks and tokens that change the teacher's output on the inputs
      least while saving that share of its MACs (:mod:`glmha.analysis.allocation`).

    None of them: ``macs_saving`` equal to what rank ratio 0.5 for every layer saves, i.e. the
    cost of the default GLMHA with the ranks put where the teacher needs them. ``relative``
    measures the output change relative to the teacher's output (for MRAE-judged models).
    ``candidates`` (ranks tried per layer), ``progress``, ``part`` and ``gather`` go to
    :func:`glmha.analysis.allocation.allocate_ranks` (the ``macs_saving`` choice).
    """
    from ..attention import swap_attention
    from ..analysis import allocation
    from ..analysis.eigen import apply_ranks, attention_spectra, suggest_ranks

    if sum(v is not None for v in (rank_ratio, share, macs_saving)) > 1:
        raise ValueError("give one of rank_ratio, share and macs_saving")
    if rank_ratio is not None:
        student = swap_attention(copy.deepcopy(teacher), "glmha", init="svd", rank_ratio=rank_ratio)
        return student.train().requires_grad_(True), {"mode": "rank_ratio", "rank_ratio": rank_ratio}
    if not analysis_inputs:
        raise ValueError("per-layer ranks need some inputs to measure the teacher on")
    if share is not None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        with torch.no_grad():
            spectra = attention_spectra(teacher.eval(), [(x,) for x in analysis_inputs])
        ranks = suggest_ranks(spectra, share)
        student = apply_ranks(copy.deepcopy(teacher), ranks, "glmha", init="svd")
        return student.train().requires_grad_(True), {"mode": "share", "share": share, "ranks": ranks}
    if macs_saving is None:
        macs_saving = uniform_saving(teacher.eval(), analysis_inputs[0])
    distance = allocation.relative_squared_error if relative else allocation.squared_error
    found = allocation.allocate_ranks(teacher.eval(), analysis_inputs, macs_saving, allocation.candidate_ratios(candidates),
                                      distance, progress=progress, part=part, gather=gather)
    student = allocation.convert(teacher, found).train().requires_grad_(True)
    return student, {"mode": "macs_saving", "macs_saving": macs_saving, "relative": relative, "ranks": found.ranks}


def data_spec(task: str, inputs: str | os.PathLike, grayscale: bool = False, count: int = 24, size: int = 96,
              seed: int = 0, crop_size: int | None = None) -> dict[str, Any]:
    """A dataset entry for ``inputs``: ``"builtin"`` (the task's synthetic data from the installed sample
    images, with ground truths) or a folder: ``input/`` and ``target/`` inside it make paired data,
    otherwise its images are degraded inputs alone (min-max normalised for RGB-to-HSI, as MST++ reads RGB)."""
    from ..data.restoration import SYNTHETIC_TASKS

    if str(inputs) == "builtin":
        if task == "rgb_to_hsi":
            return {"type": "synthetic_rgb2hsi", "count": count, "size": size, "seed": seed, "crop_size": crop_size, "augment": crop_size is not None}
        if task not in SYNTHETIC_TASKS:
            raise ValueError(f"there are no built-in inputs for the {task!r} task; give a folder of images")
        return {"type": "synthetic", "task": task, "num_images": count, "image_size": size, "seed": seed,
                "grayscale": grayscale, "augment": crop_size is not None}
    folder = Path(inputs)
    if not folder.is_dir():
        raise ValueError(f"inputs must be 'builtin' or a folder of images, got {str(inputs)!r}")
    if (folder / "input").is_dir() and (folder / "target").is_dir():
        if task == "rgb_to_hsi":
            raise ValueError(f"{folder}: paired RGB-to-HSI data are ARAD-1K folders (glmha evaluate); give RGB images alone here")
        return {"type": "paired_folder", "root": str(folder), "grayscale": grayscale}
    return {"type": "input_folder", "root": str(folder), "grayscale": grayscale,
            "normalize": "minmax" if task == "rgb_to_hsi" else "none", "augment": crop_size is not None}


@dataclass
class DistillResult:
    output_dir: Path
    student: Path
    report: Path
    summary: dict[str, Any]
    is_main: bool = True  # False in torchrun's other processes: rank 0 wrote the files named here


def _batches(spec: Mapping[str, Any], limit: int | None = None) -> list[dict]:
    from ..engine.tasks import build_dataset

    dataset = build_dataset(spec)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return [{k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for k, v in dataset[i].items()} for i in range(count)]


@torch.no_grad()
def compare(task, teacher: nn.Module, student: nn.Module, test_data: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Student against teacher on held-out data: PSNR to the teacher, both models' task metrics when there are ground truths."""
    from ..engine.batches import _to_device, prepare_batch

    teacher, student = teacher.to(device).eval(), student.to(device).eval()
    rows = []
    for batch in _batches(test_data):
        batch = prepare_batch(task, _to_device(batch, device))
        pred = task.predict(student, batch).float()
        row = {k: float(v[0]) for k, v in task.metrics(pred, batch).items()}
        if "ground_truth" in batch:
            teacher_scores = task.base.metrics(batch["target"], {**batch, "target": batch["ground_truth"]})
            row.update({f"teacher_{k}": float(v[0]) for k, v in teacher_scores.items()})
        rows.append(row)
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    example = _to_device(_batches(test_data, 1)[0], device)["input"]
    return {"images": len(rows), "metrics": means, "per_image": rows, **model_sizes(teacher, student, example)}


class DistillInterrupted(KeyboardInterrupt):
    """Ctrl-C (or, while training, SIGINT / SIGTERM) stopped :func:`distill`; the message says what was
    interrupted and what the run folder kept. ``exit_code`` as ``glmha train``'s (128 + the signal);
    ``main`` is False in torchrun's other processes, which need not say it again."""

    def __init__(self, message: str, exit_code: int = 130, main: bool = True):
        super().__init__(message)
        self.exit_code = exit_code
        self.main = main


class ChoiceProgress:
    """``progress(done, total)`` of the rank choice as lines ``rank choice: teacher run 37/176, ~3 min left`` on
    ``stream`` (stderr), at most one per ``interval`` seconds, and one when done. The time left is measured
    from the runs since the first report (what came before, profiling and capturing, is not the pace)."""

    def __init__(self, stream: TextIO | None = None, interval: float = 15.0, enabled: bool = True):
        self.stream, self.interval, self.enabled = stream, interval, enabled
        self.start = self.last = time.monotonic()
        self.first: tuple[float, int] | None = None
        self.done = self.total = 0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        self.first = self.first or (now, done)
        self.done, self.total = done, total
        since, done_then = self.first
        if not self.enabled or (done < total and (now - self.last < self.interval or done == done_then)):
            return
        self.last = now
        state = f"~{format_duration((now - since) / (done - done_then) * (total - done))} left" if done < total \
            else f"done in {format_duration(now - self.start)}"
        print(f"rank choice: teacher run {done}/{total}, {state}", file=self.stream or sys.stderr, flush=True)


@dataclass(frozen=True)
class ChoicePlan:
    """How the per-layer ranks are chosen: level ``level`` of :data:`CHOICE_LEVELS` (0: the full choice), on
    ``crops`` training crops of at most ``side`` pixels with ``candidates`` ranks tried per layer; ``runs``
    teacher runs (this process's share), ``seconds`` their estimated time, ``full_seconds`` that of level 0."""

    level: int
    crops: int
    side: int
    candidates: int
    runs: int
    seconds: float
    full_seconds: float
    budget_s: float | None

    @property
    def budgeted(self) -> bool:
        return self.level > 0

    def describe(self) -> str:
        return f"{self.crops} crop{'s' if self.crops > 1 else ''} of at most {self.side} px, {self.candidates} candidate ranks per layer"


@torch.no_grad()
def time_teacher(teacher: nn.Module, example: torch.Tensor) -> float:
    """Seconds per input pixel of one run of ``teacher`` on ``example`` (``1 x C x H x W``): the faster of two runs
    after a warm-up one (one slow run on a busy machine would overstate the cost)."""
    def run() -> float:
        if example.device.type == "cuda":
            torch.cuda.synchronize(example.device)
        start = time.perf_counter()
        teacher(example)
        if example.device.type == "cuda":
            torch.cuda.synchronize(example.device)
        return time.perf_counter() - start

    run()  # the first run also allocates (and on a GPU, initialises kernels)
    return min(run(), run()) / (example.shape[-2] * example.shape[-1])


def plan_choice(teacher: nn.Module, images: Sequence[torch.Tensor], seconds_per_pixel: float, budget_s: float | None = CHOICE_BUDGET_S,
                part: tuple[int, int] = (0, 1)) -> ChoicePlan:
    """The first of :data:`CHOICE_LEVELS` whose estimated time (``seconds_per_pixel`` x the crops' pixels x the
    teacher runs of this ``part`` of the layers) is within ``budget_s`` (None or 0: the full choice); the cheapest
    level when none is. ``images``: the training inputs the crops are cut from."""
    from ..analysis import allocation

    multiple = int(getattr(teacher, "size_multiple", 1))
    if not images:
        raise ValueError("choosing per-layer ranks needs at least one training input")
    plans = []
    for level, (crops, side, candidates) in enumerate(CHOICE_LEVELS):
        crops = min(crops, len(images))
        pixels = sum(x.shape[-2] * x.shape[-1] for x in (analysis_crop(image, multiple, side) for image in images[:crops]))
        runs = allocation.model_runs(teacher, allocation.candidate_ratios(candidates), part)
        plans.append((level, crops, side, candidates, runs, seconds_per_pixel * pixels * runs))
    chosen = plans[0] if not budget_s else next((plan for plan in plans if plan[-1] <= budget_s), plans[-1])
    return ChoicePlan(*chosen, full_seconds=plans[0][-1], budget_s=budget_s or None)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path} is damaged (not JSON); delete it, or choose another --output") from None


def _write_json(path: Path, value: Any) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=1, default=str) + "\n"))


class _Stage:
    """What :func:`distill` is doing and what its folder keeps if it is interrupted now (for one line on Ctrl-C)."""

    def __init__(self) -> None:
        self.doing: str = "loading the teacher"
        self.kept: str | Callable[[], str] = "nothing was written yet"

    def __call__(self, doing: str, kept: str | Callable[[], str]) -> None:
        self.doing, self.kept = doing, kept  # a callable is asked at the interruption (e.g. for the newest checkpoint)


def _agreed(ctx, work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0, its result on every rank; an error of rank 0 is raised on every rank (no rank waits forever)."""
    from ..models.checkpoint import CheckpointError

    outcome: tuple[str, Any] = ("ok", None)
    error: BaseException | None = None
    if ctx.is_main:
        try:
            outcome = ("ok", work())
        except (ValueError, OSError, CheckpointError) as err:  # the user's errors (FolderError and DatasetError are ValueErrors)
            error, outcome = err, ("error", str(err))
    outcome = ctx.broadcast_object(outcome)
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise ValueError(outcome[1])
    return outcome[1]


def distill(
    teacher: str | os.PathLike | nn.Module,
    output_dir: str | os.PathLike,
    train_data: Mapping[str, Any],
    test_data: Mapping[str, Any] | None = None,
    *,
    task: str | None = None,
    preset: str | None = None,
    rank_ratio: float | None = None,
    share: float | None = None,
    macs_saving: float | None = None,
    iterations: int = 1000,
    batch_size: int = 4,
    patch_size: int | None = 64,
    lr: float = 2e-4,
    loss: str | None = None,
    feature_weight: float = 0.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    resume: bool = True,
    max_steps: int | None = None,
    progress: bool = True,
    choice_budget_s: float | None = CHOICE_BUDGET_S,
    keep_init: bool = False,
) -> DistillResult:
    """Distil ``teacher`` into a GLMHA student (see the module doc); returns the student's file and the report.

    ``teacher``: a model file (or run folder; with ``preset`` for official files), referenced by the
    run, or a model object, saved in the run folder. ``batch_size`` is the global batch: under
    torchrun each of the N processes trains on ``batch_size / N`` of it. ``choice_budget_s``: the time
    the per-layer rank choice may take (None or 0: the full choice, however long). ``keep_init``
    keeps ``student_init.safetensors`` (the warm start) after the first checkpoint. ``resume``:
    continue the run in ``output_dir`` (a finished one is not trained again; its report is rewritten).
    Ctrl-C raises :class:`DistillInterrupted`, whose message says what was kept.
    """
    from ..engine.distributed import init_distributed

    stage = _Stage()
    ctx = init_distributed(device)
    try:
        return _distill(ctx, stage, teacher, Path(output_dir), train_data, test_data, task=task, preset=preset, rank_ratio=rank_ratio,
                        share=share, macs_saving=macs_saving, iterations=iterations, batch_size=batch_size, patch_size=patch_size,
                        lr=lr, loss=loss, feature_weight=feature_weight, seed=seed, device=device, resume=resume,
                        max_steps=max_steps, progress=progress, choice_budget_s=choice_budget_s, keep_init=keep_init)
    except KeyboardInterrupt as err:
        kept = stage.kept() if callable(stage.kept) else stage.kept
        raise DistillInterrupted(f"interrupted while {stage.doing}; kept {kept}", getattr(err, "exit_code", 130), ctx.is_main) from None
    finally:
        ctx.close()


def _distill(ctx, stage: _Stage, teacher, output_dir: Path, train_data, test_data, *, task, preset, rank_ratio, share, macs_saving,
             iterations, batch_size, patch_size, lr, loss, feature_weight, seed, device, resume, max_steps, progress,
             choice_budget_s, keep_init) -> DistillResult:
    from ..engine.run_state import config_differences, latest_checkpoint
    from ..engine.tasks import DistillationTask
    from ..engine.trainer import train
    from ..io.folders import claim_folder
    from ..models.checkpoint import load_model, resolve_checkpoint, save_model

    if batch_size % ctx.world_size:
        raise ValueError(f"the batch of {batch_size} does not split evenly among {ctx.world_size} processes; "
                         f"give a multiple of {ctx.world_size}")
    talk = progress and ctx.is_main
    teacher_file = None if isinstance(teacher, nn.Module) else resolve_checkpoint(teacher).resolve()
    roots = [spec.get("root") for spec in (train_data, test_data or {}) if spec.get("root")]
    # before anything is read or written: a folder of something else is refused as it is
    _agreed(ctx, lambda: claim_folder(output_dir, "train", inputs=[p for p in (teacher_file, *roots) if p],
                                      legacy=("checkpoints", "train.log", "student_ranks.json", "distill_config.json"), option="--output"))
    teacher_model = teacher if isinstance(teacher, nn.Module) else load_model(teacher_file, preset=preset, verbose=False)
    teacher_model = teacher_model.cpu().eval()
    task = task or default_task(teacher_model)
    loss = loss or DISTILL_LOSSES.get(task, "l1")
    init_path, choice_path, run_path = output_dir / "student_init.safetensors", output_dir / "student_ranks.json", output_dir / "distill_run.json"
    model_path, config_path = output_dir / "model.safetensors", output_dir / "distill_config.json"

    def teacher_record() -> dict[str, Any]:
        """The teacher this run distils: its file by path, size and hash (a model object is saved once, and checked)."""
        if teacher_file is not None:
            return {"path": str(teacher_file), "preset": preset, "bytes": teacher_file.stat().st_size, "sha256": _sha256(teacher_file)}
        copy_path = output_dir / "teacher.safetensors"
        if copy_path.is_file():
            saved = load_model(copy_path, verbose=False).state_dict()
            current = teacher_model.state_dict()
            if saved.keys() != current.keys() or not all(torch.equal(v, current[k]) for k, v in saved.items()):
                raise ValueError(f"{output_dir} was distilled from another teacher ({copy_path}); choose another --output")
        else:
            save_model(teacher_model, copy_path)
        return {"path": str(copy_path), "preset": None, "bytes": copy_path.stat().st_size, "sha256": _sha256(copy_path), "copied": True}

    def prepare() -> dict[str, Any]:
        """Rank 0's look at the folder: the teacher's record, how to resume, where the student comes from."""
        previous = _read_json(run_path)
        legacy_copy = output_dir / "teacher.safetensors"
        if previous is None and legacy_copy.is_file() and teacher_file is not None:
            record = {"path": str(legacy_copy), "preset": None, "copied": True}  # a folder of an earlier version: its own copy
        else:
            record = teacher_record()
            if previous and previous["teacher"].get("sha256") not in (None, record["sha256"]):
                raise ValueError(f"{output_dir} was distilled from another teacher ({previous['teacher']['path']}, sha256 "
                                 f"{previous['teacher']['sha256'][:12]}...), not {record['path']} (sha256 {record['sha256'][:12]}...); "
                                 "give that file, or choose another --output")
        found = latest_checkpoint(output_dir)
        finished = bool(previous and previous.get("finished")) and model_path.is_file() and found is None
        source = ("finished", str(model_path)) if finished else ("checkpoint", str(found[0])) if found else \
            ("init", str(init_path)) if init_path.is_file() else ("choose", None)
        if not resume and source[0] != "choose":
            raise ValueError(f"{output_dir} holds a distillation already and resuming is off; choose another --output")
        return {"teacher": record, "previous": previous, "saved_config": _read_json(config_path), "source": source}

    stage("looking at the run folder", "nothing was written yet")
    setup = _agreed(ctx, prepare)
    record, previous, source = setup["teacher"], setup["previous"], setup["source"]

    stage("choosing the student's ranks", "nothing of the choice: the same command makes it again (--rank-ratio 0.5 skips it)")
    if source[0] == "choose":
        student, choice, example = _choose_student(ctx, teacher_model, task, train_data, seed, rank_ratio, share, macs_saving,
                                                   choice_budget_s, talk, stage)
        if ctx.is_main:
            save_model(student, init_path)
            _write_json(choice_path, choice)
    else:
        student = load_model(source[1], verbose=False).train().requires_grad_(True)
        choice = _read_json(choice_path) if ctx.is_main else None
        choice = choice or {"mode": "saved"}
        example = None

    request = {"rank_ratio": rank_ratio, "share": share, "macs_saving": macs_saving}  # what the student's ranks were asked to be
    per_process = batch_size // ctx.world_size
    config = {
        "task": {"name": "distill", "base": task, "teacher": record["path"], **({"preset": record["preset"]} if record.get("preset") else {}),
                 "feature_weight": feature_weight},
        "seed": seed,
        "model": {"name": getattr(getattr(student, "spec", None), "name", type(student).__name__.lower()), "attention": "glmha"},
        "data": {"train": dict(train_data), **({"val": dict(test_data)} if test_data else {})},
        "optimizer": {"name": "AdamW", "lr": lr, "betas": [0.9, 0.999], "weight_decay": 1e-4},
        "scheduler": {"name": "CosineAnnealingLR", "T_max": iterations, "eta_min": lr / 100},
        "train": {"total_iters": iterations, "batch_size": per_process, "patch_size": patch_size, "loss": loss,
                  "val_every": iterations, "checkpoint_every": max(1, min(iterations, 1000)), "log_every": max(1, iterations // 20),
                  "keep_checkpoints": 1, "progress": progress, "tensorboard": False},
    }
    if patch_size is None:
        del config["train"]["patch_size"]

    def resume_mode() -> str:
        """The trainer's resume mode, after distill's own check of what changed since the run started."""
        saved = setup["saved_config"]
        if not resume:
            return "never"
        if saved is None or source[0] == "choose":
            return "auto"
        differing = set(config_differences(saved, config))
        if previous and previous.get("batch_size") == batch_size:
            differing.discard("train.batch_size")  # another process count, the same global batch: the same samples
        if previous and previous["teacher"].get("sha256") == record.get("sha256"):
            differing.discard("task.teacher")  # the same file, moved
        if previous and previous.get("request", request) != request:
            differing.add("the rank choice (--rank-ratio, --share, --macs-saving)")
        if source[0] == "finished":  # not trained again: another test set only changes the report
            differing = {k for k in differing if k != "data.val" and not k.startswith("data.val.")}
        if differing:
            raise ValueError(f"{output_dir} holds a distillation with other settings (differing: {', '.join(sorted(differing))}); "
                             "repeat those, or choose another --output")
        return "force" if config_differences(saved, config) else "auto"

    def write_records() -> str:
        mode = resume_mode()
        _write_json(config_path, config)
        _write_json(run_path, {"teacher": record, "request": request, "batch_size": batch_size, "processes": ctx.world_size,
                               "finished": source[0] == "finished"})
        return mode

    mode = _agreed(ctx, write_records)

    def kept_in_training() -> str:
        found = latest_checkpoint(output_dir) if ctx.is_main else None
        if found:
            iteration = int(found[0].stem.split("_")[1])
            return f"the checkpoint of iteration {iteration} of {iterations}: the same command resumes from it"
        return "the chosen student (student_init.safetensors), no checkpoint yet: the same command starts training again"

    finished, iteration = True, iterations
    if source[0] != "finished":
        stage("training the student", kept_in_training)
        try:
            result = train(config, output_dir=output_dir, device=device, model=student, resume=mode, max_steps=max_steps)
        finally:
            if ctx.is_main and not keep_init and _has_checkpoint(output_dir):
                init_path.unlink(missing_ok=True)  # the checkpoint holds the student now (its file describes it)
        finished, iteration = result.finished, result.iteration
        if ctx.is_main and finished:
            _write_json(run_path, {"teacher": record, "request": request, "batch_size": batch_size, "processes": ctx.world_size,
                                   "finished": True})
            _remove_checkpoints(output_dir)  # model.safetensors is the student; nothing is left to resume
    if not ctx.is_main:
        return DistillResult(output_dir, model_path, output_dir / "distill.md", {}, is_main=False)

    stage("writing the report", f"the {'trained' if finished else 'partly trained'} student: the same command writes the report")
    weights = model_path if finished else latest_checkpoint(output_dir)[0]
    where = ctx.device
    summary: dict[str, Any] = {"task": task, "iterations": iteration, "finished": finished, "loss": loss, "student": choice,
                               "teacher": record, "batch_size": batch_size, "processes": ctx.world_size}
    if test_data:
        stage("comparing the student with the teacher on the test images",
              f"the {'trained' if finished else 'partly trained'} student ({weights}): the same command writes the report")
        summary.update(compare(DistillationTask(task, teacher_model), teacher_model, student, test_data, where))
    else:
        if example is None:
            plain = {**train_data, "augment": False} if "augment" in train_data else train_data
            example = analysis_crop(_batches(plain, 1)[0]["input"], int(getattr(teacher_model, "size_multiple", 1)))
        summary.update(model_sizes(teacher_model, student, example.to(where)))
    report = atomic_write(output_dir / "distill.md", lambda tmp: Path(tmp).write_text(format_report(summary)))
    _write_json(output_dir / "distill.json", summary)
    return DistillResult(output_dir, weights, report, summary)


def _has_checkpoint(output_dir: Path) -> bool:
    return (output_dir / "checkpoints" / "latest.json").is_file()


def _remove_checkpoints(output_dir: Path) -> None:
    folder = output_dir / "checkpoints"
    (folder / "latest.json").unlink(missing_ok=True)  # first: a stop in between leaves no pointer to missing files
    for path in [*folder.glob("iter_*.safetensors"), *folder.glob("iter_*.state.pt")]:
        path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something else in it (not the trainer's): left as it is
        pass


def _choose_student(ctx, teacher: nn.Module, task: str, train_data: Mapping[str, Any], seed: int, rank_ratio, share, macs_saving,
                    budget_s: float | None, talk: bool, stage: _Stage) -> tuple[nn.Module, dict[str, Any], torch.Tensor]:
    """The student, the record of its ranks' choice and an example input (a training crop), every process alike
    (on this process's device; the teacher goes back to the CPU after: training loads its own copy)."""
    try:
        return _choose_on_device(ctx, teacher, task, train_data, seed, rank_ratio, share, macs_saving, budget_s, talk, stage)
    finally:
        teacher.cpu()


def _choose_on_device(ctx, teacher, task, train_data, seed, rank_ratio, share, macs_saving, budget_s, talk, stage):
    torch.manual_seed(seed)
    plain = {**train_data, "augment": False} if "augment" in train_data else train_data  # unaugmented inputs
    multiple = int(getattr(teacher, "size_multiple", 1))
    where = ctx.device
    images = [b["input"] for b in _batches(plain, 1 if rank_ratio is not None else ANALYSIS_INPUTS)]
    example = analysis_crop(images[0], multiple)
    relative = task in RELATIVE_TASKS
    if rank_ratio is not None or share is not None:
        analysis = [analysis_crop(x, multiple).to(where) for x in images] if share is not None else []
        student, choice = build_student(teacher.to(where), analysis, rank_ratio, share, macs_saving, relative=relative)
        return student.cpu(), choice, example
    part = (ctx.rank, ctx.world_size)

    def measure() -> ChoicePlan:
        crop = analysis_crop(images[0], multiple).to(where)
        return plan_choice(teacher.to(where), images, time_teacher(teacher.to(where), crop), budget_s, part)

    if talk:
        print(f"rank choice: timing the teacher on {where.type} to size the choice", file=sys.stderr, flush=True)
    plan = _agreed(ctx, measure)  # rank 0's measurement: every process the same plan
    if talk:
        shared = f" per process ({ctx.world_size} share the layers)" if ctx.world_size > 1 else ""
        line = (f"choosing the student's per-layer ranks: {plan.runs} teacher runs{shared} on {plan.describe()}, "
                f"~{format_duration(plan.seconds)} on {where.type}")
        if plan.budgeted:
            line = (f"the full rank choice would take ~{format_duration(plan.full_seconds)} on {where.type}, over its budget of "
                    f"{format_duration(plan.budget_s)}; {line}")
            if plan.seconds > plan.budget_s:
                line += "; no cheaper choice is offered: --rank-ratio 0.5 skips it and trains at once"
            else:
                line += " (--choice-minutes 0 makes the full one; --rank-ratio 0.5 skips the choice)"
        print(line, file=sys.stderr, flush=True)
    analysis = [analysis_crop(x, multiple, plan.side).to(where) for x in images[:plan.crops]]
    meter = ChoiceProgress(enabled=talk)
    stage(f"choosing the student's ranks ({plan.describe()})",
          lambda: f"nothing of the choice (it had reached teacher run {meter.done} of {meter.total}): the same command makes it again "
                  "(--rank-ratio 0.5 skips it)")
    student, choice = build_student(teacher.to(where), analysis, None, None, macs_saving, relative=relative, candidates=plan.candidates,
                                    progress=meter, part=part, gather=ctx.gather_objects)
    choice["analysis"] = {**asdict(plan), "budgeted": plan.budgeted, "device": where.type}
    return student.cpu(), choice, example


def model_sizes(teacher: nn.Module, student: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """Parameters and MACs of both models on ``example`` (``1 x C x H x W``)."""
    from ..analysis import profile

    sizes = {name: profile(model.to(example.device), example) for name, model in (("teacher", teacher), ("student", student))}
    return {"params": {k: v.params for k, v in sizes.items()}, "macs": {k: v.macs for k, v in sizes.items()},
            "input_size": list(example.shape[-2:])}


def format_report(summary: Mapping[str, Any]) -> str:
    """The Markdown report of a distillation run: how the student was made, its size, and, with test data, its quality."""
    choice = summary["student"]
    how = {"rank_ratio": lambda: f"rank ratio {choice['rank_ratio']} for every layer",
           "share": lambda: f"per layer, keeping {choice['share']:.0%} of each attention spectrum",
           "macs_saving": lambda: f"per layer, the least output change for {choice['macs_saving']:.1%} of the MACs saved",
           "saved": lambda: "as chosen when the run started"}[choice["mode"]]()
    lines = [f"# glmha distill ({summary['task']})", "",
             f"{summary['iterations']} iterations{'' if summary.get('finished', True) else ' so far'}, loss {summary['loss']}; "
             f"student ranks: {how}", ""]
    if "batch_size" in summary:
        processes = summary.get("processes", 1)
        lines += [f"Global batch {summary['batch_size']}" + (f" ({processes} processes)." if processes > 1 else "."), ""]
    teacher = summary.get("teacher")
    if teacher:
        where = "saved in the run folder" if teacher.get("copied") else "referenced, not copied"
        digest = f", sha256 {teacher['sha256'][:12]}..." if teacher.get("sha256") else ""
        lines += [f"Teacher: {teacher['path']} ({where}{digest}).", ""]
    analysis = choice.get("analysis")
    if analysis:
        lines += [f"Ranks chosen on {analysis['crops']} training crop{'s' if analysis['crops'] > 1 else ''} of at most {analysis['side']} px "
                  f"with {analysis['candidates']} candidate ranks per layer ({analysis['runs']} teacher runs per process, "
                  f"estimated {format_duration(analysis['seconds'])} on {analysis['device']})"
                  + (f": the full choice, estimated {format_duration(analysis['full_seconds'])}, was over the budget of "
                     f"{format_duration(analysis['budget_s'])}." if analysis.get("budgeted") else "."), ""]
    if choice.get("ranks"):
        lines += ["| layer | rank |", "| --- | ---: |"] + [f"| {name} | {rank} |" for name, rank in choice["ranks"].items()] + [""]
    if "params" in summary:
        params, macs = summary["params"], summary["macs"]
        height, width = summary["input_size"]
        where = "the held-out images" if "metrics" in summary else "a training crop"
        lines += [
            f"Size at {height}x{width} ({where}):", "",
            "| | teacher | student | saved |", "| --- | ---: | ---: | ---: |",
            f"| parameters | {params['teacher']:,} | {params['student']:,} | {1 - params['student'] / params['teacher']:.1%} |",
            f"| GMACs | {macs['teacher'] / 1e9:.3f} | {macs['student'] / 1e9:.3f} | {1 - macs['student'] / macs['teacher']:.1%} |", "",
        ]
    if "metrics" in summary:
        lines += [f"Held-out images: {summary['images']}. Student against teacher: PSNR {summary['metrics']['psnr_to_teacher']:.2f} dB.", ""]
        task_metrics = [k for k in summary["metrics"] if k != "psnr_to_teacher" and not k.startswith("teacher_")]
        if task_metrics:
            lines += ["| task metric | teacher | student |", "| --- | ---: | ---: |"]
            lines += [f"| {k} | {summary['metrics'][f'teacher_{k}']:.4f} | {summary['metrics'][k]:.4f} |" for k in task_metrics]
    return "\n".join(lines) + "\n"
