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
3. A report compares student and teacher on held-out inputs: PSNR of the student's output
   against the teacher's, parameters and MACs, and, where the held-out data have ground
   truths, both models' task metrics.

The run folder holds ``teacher.safetensors`` and ``student_init.safetensors`` (self-describing),
the engine's files (``model.safetensors`` is the distilled student), ``distill.md`` and
``distill.json``.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

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
                  relative: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The GLMHA student of ``teacher`` and a record of how its ranks were chosen. At most one of:

    - ``rank_ratio``: one rank ratio for every layer, tokens by the SVD of the projections;
    - ``share``: per-layer ranks keeping that share of each layer's attention spectrum on the inputs;
    - ``macs_saving``: per-layer ranks and tokens that change the teacher's output on the inputs
      least while saving that share of its MACs (:mod:`glmha.analysis.allocation`).

    None of them: ``macs_saving`` equal to what rank ratio 0.5 for every layer saves, i.e. the
    cost of the default GLMHA with the ranks put where the teacher needs them. ``relative``
    measures the output change relative to the teacher's output (for MRAE-judged models).
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
    found = allocation.allocate_ranks(teacher.eval(), analysis_inputs, macs_saving, distance=distance)
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


def _batches(spec: Mapping[str, Any], limit: int | None = None) -> list[dict]:
    from ..engine.tasks import build_dataset

    dataset = build_dataset(spec)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return [{k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for k, v in dataset[i].items()} for i in range(count)]


@torch.no_grad()
def compare(task, teacher: nn.Module, student: nn.Module, test_data: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Student against teacher on held-out data: PSNR to the teacher, both models' task metrics when there are ground truths."""
    from ..analysis import profile
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
    sizes = {name: profile(model, example) for name, model in (("teacher", teacher), ("student", student))}
    return {
        "images": len(rows), "metrics": means, "per_image": rows,
        "params": {k: v.params for k, v in sizes.items()}, "macs": {k: v.macs for k, v in sizes.items()},
        "input_size": list(example.shape[-2:]),
    }


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
) -> DistillResult:
    """Distil ``teacher`` into a GLMHA student (see the module doc); returns the student's file and the report."""
    from ..models.checkpoint import load_model, save_model
    from ..engine.tasks import DistillationTask
    from ..engine.trainer import train

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    teacher_model = teacher if isinstance(teacher, nn.Module) else load_model(teacher, preset=preset, verbose=False)
    teacher_model = teacher_model.cpu().eval()
    task = task or default_task(teacher_model)
    teacher_path = save_model(teacher_model, output_dir / "teacher.safetensors")
    init_path = output_dir / "student_init.safetensors"
    choice_path = output_dir / "student_ranks.json"
    if init_path.is_file():  # a resumed run keeps the student it started with
        student = load_model(init_path, verbose=False).train()
        choice = json.loads(choice_path.read_text()) if choice_path.is_file() else {"mode": "saved"}
    else:
        torch.manual_seed(seed)
        plain = {**train_data, "augment": False} if "augment" in train_data else train_data  # unaugmented inputs
        multiple = int(getattr(teacher_model, "size_multiple", 1))
        where = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        analysis = [analysis_crop(b["input"], multiple).to(where) for b in _batches(plain, ANALYSIS_INPUTS)]
        if progress and rank_ratio is None:
            print(f"choosing the student's per-layer ranks on {len(analysis)} training inputs ({where.type})", flush=True)
        student, choice = build_student(teacher_model.to(where), analysis, rank_ratio, share, macs_saving,
                                        relative=task in RELATIVE_TASKS)
        student, teacher_model = student.cpu(), teacher_model.cpu()
        save_model(student, init_path)
        atomic_write(choice_path, lambda tmp: Path(tmp).write_text(json.dumps(choice, indent=1) + "\n"))
    loss = loss or DISTILL_LOSSES.get(task, "l1")
    spec = getattr(student, "spec", None)
    config = {
        "task": {"name": "distill", "base": task, "teacher": str(teacher_path), "feature_weight": feature_weight},
        "seed": seed,
        "model": {"name": getattr(spec, "name", type(student).__name__.lower()), "attention": "glmha"},
        "data": {"train": dict(train_data), **({"val": dict(test_data)} if test_data else {})},
        "optimizer": {"name": "AdamW", "lr": lr, "betas": [0.9, 0.999], "weight_decay": 1e-4},
        "scheduler": {"name": "CosineAnnealingLR", "T_max": iterations, "eta_min": lr / 100},
        "train": {"total_iters": iterations, "batch_size": batch_size, "patch_size": patch_size, "loss": loss,
                  "val_every": iterations, "checkpoint_every": max(1, min(iterations, 1000)), "log_every": max(1, iterations // 20),
                  "progress": progress, "tensorboard": False},
    }
    if patch_size is None:
        del config["train"]["patch_size"]
    atomic_write(output_dir / "distill_config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=1)))
    result = train(config, output_dir=output_dir, device=device, model=student, resume=resume, max_steps=max_steps)
    device = torch.device(device) if device else next(student.parameters()).device
    summary: dict[str, Any] = {"task": task, "iterations": result.iteration, "finished": result.finished, "loss": loss,
                               "student": choice}
    if test_data:
        engine_task = DistillationTask(task, teacher_model)
        summary.update(compare(engine_task, teacher_model, student, test_data, device))
    report = atomic_write(output_dir / "distill.md", lambda tmp: Path(tmp).write_text(format_report(summary)))
    atomic_write(output_dir / "distill.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1) + "\n"))
    return DistillResult(output_dir, Path(result.weights), report, summary)


def format_report(summary: Mapping[str, Any]) -> str:
    """The Markdown report of a distillation run."""
    choice = summary["student"]
    how = {"rank_ratio": lambda: f"rank ratio {choice['rank_ratio']} for every layer",
           "share": lambda: f"per layer, keeping {choice['share']:.0%} of each attention spectrum",
           "macs_saving": lambda: f"per layer, the least output change for {choice['macs_saving']:.1%} of the MACs saved",
           "saved": lambda: "as in student_init.safetensors"}[choice["mode"]]()
    lines = [f"# glmha distill ({summary['task']})", "",
             f"{summary['iterations']} iterations, loss {summary['loss']}; student ranks: {how}", ""]
    if choice.get("ranks"):
        lines += ["| layer | rank |", "| --- | ---: |"] + [f"| {name} | {rank} |" for name, rank in choice["ranks"].items()] + [""]
    if "metrics" in summary:
        params, macs = summary["params"], summary["macs"]
        lines += [
            f"Held-out images: {summary['images']} of {summary['input_size'][0]}x{summary['input_size'][1]}.", "",
            "| | teacher | student | saved |", "| --- | ---: | ---: | ---: |",
            f"| parameters | {params['teacher']:,} | {params['student']:,} | {1 - params['student'] / params['teacher']:.1%} |",
            f"| GMACs | {macs['teacher'] / 1e9:.3f} | {macs['student'] / 1e9:.3f} | {1 - macs['student'] / macs['teacher']:.1%} |",
            "", f"Student against teacher: PSNR {summary['metrics']['psnr_to_teacher']:.2f} dB.", "",
        ]
        task_metrics = [k for k in summary["metrics"] if k != "psnr_to_teacher" and not k.startswith("teacher_")]
        if task_metrics:
            lines += ["| task metric | teacher | student |", "| --- | ---: | ---: |"]
            lines += [f"| {k} | {summary['metrics'][f'teacher_{k}']:.4f} | {summary['metrics'][k]:.4f} |" for k in task_metrics]
    return "\n".join(lines) + "\n"
