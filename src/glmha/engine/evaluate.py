"""Evaluation with the papers' protocols, results to CSV and Markdown.

The protocol is the task's (:mod:`glmha.engine.tasks`): deraining PSNR/SSIM on MATLAB's Y
channel, GoPro/HIDE and the other restoration tasks on RGB, outputs clipped and rounded to
8 bits as the official scripts that save PNGs first. Each set of ``data.test`` is measured
image by image; the tables give the mean per set and, with several sets, their average (the
"Average" column of the papers' tables).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..checkpoint import atomic_write, load_checkpoint
from .config import ConfigError, load_config
from .tasks import build_dataset, get_task, task_name
from .trainer import _autocast, _to_device, build_model


@dataclass
class EvalResult:
    """What :func:`evaluate` returns: one summary row per set (plus ``average``), every image's row, the files."""

    summary: list[dict[str, Any]]
    per_image: list[dict[str, Any]] = field(default_factory=list)
    csv_path: Path | None = None
    markdown_path: Path | None = None
    markdown: str = ""


@torch.no_grad()
def evaluate(
    config: str | os.PathLike | Mapping[str, Any],
    checkpoint: str | os.PathLike | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    variant: str | None = None,
    sets: Sequence[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    model: nn.Module | None = None,
    tile: int | None = None,
    precision: str = "fp32",
) -> EvalResult:
    """Measure a trained model on the test sets of ``config`` (``data.test``).

    Args:
        config: config file or dict (the same one used for training).
        checkpoint: weights to load: our ``.safetensors`` or an official ``.pth``. Default: the
            run's ``model.safetensors`` in its ``output_dir``.
        overrides / variant: as for :func:`glmha.engine.trainer.train`.
        sets: names of ``data.test`` entries to run (default: all).
        output_dir: where ``results.csv``, ``results.md`` and ``per_image.csv`` go
            (default: ``<run output_dir>/eval``).
        model: an already built and loaded model (then ``checkpoint`` is ignored).
        tile: tiled inference for images too large for memory (see :func:`glmha.restore`).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast on GPU.

    The ``evaluate`` section of the config supplies defaults for ``sets``, ``tile`` and
    ``precision``.
    """
    cfg = load_config(config, overrides, variant)
    options = dict(cfg.get("evaluate") or {})
    unknown = sorted(set(options) - {"sets", "tile", "precision"})
    if unknown:
        raise ConfigError(f"unknown evaluate options {unknown}; accepted: ['precision', 'sets', 'tile']")
    sets = sets or options.get("sets")
    tile = tile if tile is not None else options.get("tile")
    precision = options.get("precision", precision)
    task = get_task(cfg["task"])
    run_dir = Path(cfg.get("output_dir") or "runs/" + task_name(cfg["task"]))
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if model is None:
        model = build_model(cfg)
        checkpoint = Path(checkpoint) if checkpoint else run_dir / "model.safetensors"
        load_checkpoint(model, checkpoint)
    model = model.to(device).eval()

    test_sets = dict((cfg["data"].get("test") or {}))
    if not test_sets:
        raise ConfigError("the config has no data.test sets to evaluate")
    for name in sets or []:
        if name not in test_sets:
            raise ConfigError(f"no test set {name!r}; the config has {sorted(test_sets)}")
    per_image, summary = [], []
    for set_name in sets or list(test_sets):
        dataset = build_dataset(test_sets[set_name])
        rows = []
        for index in range(len(dataset)):
            item = dataset[index]
            batch = _to_device({k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for k, v in item.items()}, device)
            with _autocast(device, precision):
                pred = task.predict(model, batch, tile=tile) if tile else task.predict(model, batch)
            values = task.metrics(pred.float(), batch)
            rows.append({"set": set_name, "image": Path(str(item["name"])).name, **{k: float(v[0]) for k, v in values.items()}})
        per_image += rows
        metric_names = [k for k in rows[0] if k not in ("set", "image")]
        summary.append({"set": set_name, "images": len(rows), **{m: sum(r[m] for r in rows) / len(rows) for m in metric_names}})
    if len(summary) > 1:
        metric_names = [k for k in summary[0] if k not in ("set", "images")]
        summary.append({"set": "average", "images": sum(r["images"] for r in summary),
                        **{m: sum(r[m] for r in summary) / len(summary) for m in metric_names}})

    out = Path(output_dir) if output_dir else run_dir / "eval"
    markdown = format_markdown(summary)
    csv_path = write_csv(out / "results.csv", summary)
    write_csv(out / "per_image.csv", per_image)
    md_path = atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(markdown + "\n"))
    return EvalResult(summary, per_image, csv_path, md_path, markdown)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Rows (dicts with the same keys) to a CSV file, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of summary rows; PSNR-like numbers with 2 decimals, the others with 4."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" if k == "set" else "---:" for k in keys) + " |"]
    for row in rows:
        cells = []
        for k in keys:
            v = row[k]
            cells.append(f"{v:.2f}" if isinstance(v, float) and "psnr" in k else f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
