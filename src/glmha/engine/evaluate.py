"""Evaluation with the official protocols, results to CSV and Markdown.

Each test set of ``data.test`` is scored image by image with an official protocol
(:mod:`glmha.metrics.protocols`): the task's own (deraining: ``evaluate_PSNR_SSIM.m``, motion
deblurring: ``evaluate_gopro_hide.m``, ...) unless the set's entry names another with
``protocol:`` (``RealBlur_J: {type: paired_folder, root: ..., protocol: realblur}``; the
entry's other keys are the dataset's arguments). Inputs are prepared as the official test scripts prepare
them (whole images padded by reflection to the network's multiple, the official test noise),
outputs stored as they store them (clamped, 8-bit where they write PNGs) before scoring.
The tables give the mean per set, per named group of a set (DPDD's indoor and outdoor
scenes) and, with several sets, the mean of the set means (the papers' "Average" column).
``save_images`` writes the restored outputs as the official scripts do
(:mod:`glmha.engine.outputs`), so the official evaluation scripts can be run on them.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..data.restoration import DNDImages
from ..inference.ensemble import check_ensemble
from ..io.files import atomic_write
from ..io.folders import claim_folder
from ..metrics.protocols import get_protocol
from ..models.checkpoint import CheckpointError, load_checkpoint
from ..models.jobs import CASSI, DESCRIPTIONS, IMAGE, REAL_CASSI, RGB_TO_HSI, spec_job
from .batches import _to_device
from .config import ConfigError, input_paths, load_config
from .outputs import OfficialOutputs
from .run_state import latest_checkpoint
from .settings import _autocast, build_model
from .tasks import TASKS, build_dataset, get_task, task_name

EVALUATE_OPTIONS = ("checkpoint", "ensemble", "precision", "save_images", "sets", "tile")


@dataclass
class EvalResult:
    """What :func:`evaluate` returns: one summary row per set (plus groups and ``average``), every image's row, the files."""

    summary: list[dict[str, Any]]
    per_image: list[dict[str, Any]] = field(default_factory=list)
    csv_path: Path | None = None
    markdown_path: Path | None = None
    markdown: str = ""
    checkpoint: str = ""  # which weights were evaluated, e.g. "runs/x/best.safetensors (best, iteration 4000)"
    outputs: dict[str, Path] = field(default_factory=dict)  # set name -> folder of its saved outputs


def resolve_checkpoint(checkpoint: str | os.PathLike | None, run_dir: Path) -> tuple[Path, str]:
    """The weights file ``checkpoint`` means, and a description of it.

    ``"last"`` (default) is the run's ``model.safetensors`` (or its newest checkpoint while it
    is still training), ``"best"`` its ``best.safetensors``; a folder is read as a run folder
    (its final weights); anything else is a weights file (ours or an official ``.pth``).
    """
    choice = "last" if checkpoint is None else checkpoint
    if str(choice) in ("last", "best"):
        folder = run_dir
    elif Path(choice).is_dir():
        folder, choice = Path(choice), "last"
    else:
        path = Path(choice)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        return path, f"{path} ({_iteration_note(path) or 'weights file'})"
    if choice == "best":
        path = folder / "best.safetensors"
        if not path.is_file():
            raise CheckpointError(f"{folder} has no best.safetensors: the run has not validated yet, or it has no validation set")
        return path, f"{path} (best validation, {_iteration_note(path)})"
    path = folder / "model.safetensors"
    if path.is_file():
        return path, f"{path} (last, {_iteration_note(path)})"
    found = latest_checkpoint(folder)
    if found is None:
        raise CheckpointError(f"{folder} holds no weights (model.safetensors or checkpoints/latest.json)")
    return found[0], f"{found[0]} (newest checkpoint of an unfinished run, {_iteration_note(found[0])})"


# The job (glmha.models.jobs) of each task's models; the other tasks restore images.
TASK_JOBS = {"rgb_to_hsi": RGB_TO_HSI, "cassi": CASSI, "real_cassi": REAL_CASSI}


def trained_task(spec: str | Mapping[str, Any]) -> str:
    """The task a config's ``task`` entry trains its model for: a distillation's is its base task's."""
    name = task_name(spec)
    if name == "distill" and isinstance(spec, Mapping) and spec.get("base"):
        return trained_task(spec["base"])
    return name


def _run_config_task(weights: Path) -> tuple[str, Path] | None:
    """The task in the ``config.yaml`` of the run folder that holds ``weights`` (``model.safetensors``,
    ``best.safetensors``, ``checkpoints/iter_*.safetensors``), and that file; None outside a run folder."""
    import yaml

    folder = weights.parent.parent if weights.parent.name == "checkpoints" else weights.parent
    path = folder / "config.yaml"
    try:
        recorded = yaml.safe_load(path.read_text())
        return trained_task(recorded["task"]), path
    except (OSError, yaml.YAMLError, TypeError, KeyError):  # no run folder, or not one of ours: nothing to compare
        return None


def _weights_job(weights: Path) -> tuple[str, str] | None:
    """The job of the model in ``weights`` and where it was read: the file's build record, else the
    official presets its keys and shapes match (when they share a job); None when unknown."""
    from ..models.checkpoint import read_model_spec, read_state_dict
    from ..models.presets import recognise_preset
    from ..models.registry import ModelSpec

    try:
        recorded = read_model_spec(weights)
        if recorded is not None:
            return spec_job(recorded), f"a {recorded.name} model"
        presets = recognise_preset(read_state_dict(weights))
        jobs = {spec_job(ModelSpec(p.model, dict(p.model_kwargs))) for p in presets}
    except (RuntimeError, TypeError, ValueError, KeyError):  # unreadable or unbuildable (CheckpointError too): loading it reports that
        return None
    return (jobs.pop(), f"a {presets[0].model} model (official file layout)") if len(jobs) == 1 else None


def check_checkpoint_task(task: str | Mapping[str, Any], weights: str | os.PathLike) -> None:
    """Refuse, with a :class:`ConfigError` naming the config to use, ``weights`` trained for another task than ``task``.

    The weights' task is read from the ``config.yaml`` of their run folder; for other files
    (official releases, saved models) the kind of model is compared: an image model, RGB to
    HSI, CASSI or real CASSI (:mod:`glmha.models.jobs`).
    """
    weights = Path(weights)
    wanted = trained_task(task)
    found = _run_config_task(weights)
    if found is not None:
        if found[0] != wanted:
            raise ConfigError(f"{weights} was trained for {found[0]} ({found[1]}), but the config evaluates {wanted}; "
                              f"evaluate it with a {found[0]} config (glmha evaluate CONFIG --checkpoint {weights})")
        return
    job = _weights_job(weights)
    wanted_job = TASK_JOBS.get(wanted, IMAGE)
    if job is not None and job[0] != wanted_job:
        tasks = sorted(name for name in TASKS if name != "distill" and TASK_JOBS.get(name, IMAGE) == job[0])
        choice = tasks[0] if len(tasks) == 1 else f"{', '.join(tasks[:-1])} or {tasks[-1]}"
        raise ConfigError(f"{weights} holds {job[1]}, which {DESCRIPTIONS[job[0]]}, but the config evaluates {wanted}; "
                          f"evaluate it with a config of task {choice}")


def _iteration_note(path: Path) -> str:
    if path.suffix != ".safetensors":
        return ""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            iteration = (f.metadata() or {}).get("iteration")
    except Exception:  # unreadable files are reported by the loader
        return ""
    return f"iteration {iteration}" if iteration else "iteration unknown"


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".glmha-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"cannot write the results into {folder}: {err.strerror or err}") from None


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
    precision: str | None = None,
    save_images: bool | None = None,
    progress: bool = True,
    ensemble: str | None = None,
) -> EvalResult:
    """Measure a trained model on the test sets of ``config`` (``data.test``) with the official protocols.

    Args:
        config: config file or dict (the same one used for training).
        checkpoint: ``"last"`` (default: the run's final weights), ``"best"`` (the best
            validation), a run folder, or a weights file (our ``.safetensors`` or an official ``.pth``).
        overrides / variant: as for :func:`glmha.engine.trainer.train`.
        sets: names of ``data.test`` entries to run (default: all).
        output_dir: where ``results.csv``, ``results.md``, ``per_image.csv`` and saved outputs go
            (default: ``<run output_dir>/eval``).
        model: an already built and loaded model (then ``checkpoint`` is ignored).
        tile: tiled inference for images too large for memory. The official scripts restore
            whole images, so tiled numbers are not the official protocol's (a warning says so).
        precision: ``"fp32"`` (default, as the official scripts), ``"bf16"`` or ``"fp16"`` (GPU) autocast.
        save_images: also write the restored outputs as the official test scripts do.
        ensemble: ``"none"`` (default, as the official test scripts of Restormer and MST),
            ``"mean"`` or ``"median"``: the x8 self-ensemble of flips and rotations
            (:func:`glmha.inference.ensemble.self_ensemble`; MST++'s prediction script uses
            ``"mean"``), 8 forwards per image. Not for CASSI.

    The ``evaluate`` section of the config supplies defaults for ``sets``, ``tile``,
    ``precision``, ``checkpoint``, ``save_images`` and ``ensemble``.
    """
    cfg = load_config(config, overrides, variant)
    options = dict(cfg.get("evaluate") or {})
    unknown = sorted(set(options) - set(EVALUATE_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown evaluate options {unknown}; accepted: {list(EVALUATE_OPTIONS)}")
    sets = sets or options.get("sets")
    tile = tile if tile is not None else options.get("tile")
    precision = precision or options.get("precision", "fp32")
    ensemble = ensemble or options.get("ensemble") or "none"
    check_ensemble(ensemble)
    save_images = bool(options.get("save_images", False) if save_images is None else save_images)
    task = get_task(cfg["task"])
    if ensemble != "none" and task.name in ("cassi", "real_cassi"):
        raise ConfigError("the self-ensemble does not apply to CASSI (the measurement is sheared by the disperser); "
                          "use evaluate.ensemble none")
    run_dir = Path(cfg.get("output_dir") or "runs/" + task_name(cfg["task"]))
    out = Path(output_dir) if output_dir else run_dir / "eval"

    test_sets = {name: dict(spec) for name, spec in (cfg["data"].get("test") or {}).items()}
    if not test_sets:
        raise ConfigError("the config has no data.test sets to evaluate")
    for name in sets or []:
        if name not in test_sets:
            raise ConfigError(f"no test set {name!r}; the config has {sorted(test_sets)}")
    set_protocols = {name: spec.pop("protocol", getattr(task, "protocol", "")) for name, spec in test_sets.items()}
    for name, protocol in set_protocols.items():
        try:
            get_protocol(protocol)
        except ValueError as err:
            raise ConfigError(f"data.test.{name}.protocol: {err}") from None
    source = "the given model"
    if model is None:  # before any test image is read or any folder made: weights of another task are refused
        weights, source = resolve_checkpoint(checkpoint if checkpoint is not None else options.get("checkpoint"), run_dir)
        check_checkpoint_task(cfg["task"], weights)
    inputs = input_paths(cfg, config) + [Path(c) for c in (checkpoint, options.get("checkpoint")) if isinstance(c, (str, os.PathLike)) and os.path.isfile(c)]
    _check_writable(out)
    claim_folder(out, "evaluate", inputs=inputs, legacy=("results.csv", "results.md"), option="output_dir")

    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if model is None:
        model = build_model(cfg)
        load_checkpoint(model, weights)
    model = model.to(device).eval()
    if tile:
        print(f"warning: tiled inference (tile {tile}): the official protocols restore whole images, so these numbers "
              "are not the official protocol's", file=sys.stderr)

    per_image, summary, saved = [], [], {}
    for set_name in sets or list(test_sets):
        dataset = build_dataset(test_sets[set_name])
        protocol = get_protocol(set_protocols[set_name])
        writer = OfficialOutputs(protocol, out / set_name, getattr(dataset, "bit_depth", 8)) if save_images or protocol.name == "dnd" else None
        rows = _evaluate_set(model, task, dataset, set_name, protocol, writer, save_images, device, precision, tile, progress, ensemble)
        if writer is not None:
            writer.close()
            saved[set_name] = out / set_name
        per_image += rows
        if protocol.metrics:
            summary.append(_mean_row(set_name, rows))
            for group, indices in getattr(dataset, "groups", {}).items():
                summary.append(_mean_row(f"{set_name} ({group})", [rows[i] for i in indices]))
        else:
            summary.append({"set": set_name, "images": len(rows), "note": f"submission files in {out / set_name / 'mat'}"})
    scored = [r for r in summary if "(" not in r["set"] and "note" not in r]
    if len(scored) > 1:
        metric_names = [k for k in scored[0] if k not in ("set", "images")]
        if all(set(r) == set(scored[0]) for r in scored):
            summary.append({"set": "average", "images": sum(r["images"] for r in scored),
                            **{m: sum(r[m] for r in scored) / len(scored) for m in metric_names}})

    markdown = f"checkpoint: {source}\n\n" + format_markdown(summary)
    csv_path = write_csv(out / "results.csv", summary)
    if per_image:
        write_csv(out / "per_image.csv", per_image)
    md_path = atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(markdown + "\n"))
    return EvalResult(summary, per_image, csv_path, md_path, markdown, source, saved)


def _evaluate_set(model, task, dataset, set_name: str, protocol, writer: OfficialOutputs | None, save_images: bool, device, precision: str,
                  tile: int | None, progress: bool, ensemble: str = "none") -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    rows = []
    for index in tqdm(range(len(dataset)), desc=set_name, unit="image", disable=not progress, leave=False):
        item = dataset[index]
        if isinstance(dataset, DNDImages):  # no ground truth: restore the patches, write the submission file
            patches = []
            for patch in item["input"]:
                with _autocast(device, precision):
                    pred = task.predict(model, {"input": patch[None].to(device)})
                patches.append(pred[0].float().permute(1, 2, 0).cpu().numpy())
            writer.add_patches(item["name"], patches, save_png=save_images)
            rows.append({"set": set_name, "image": item["name"]})
            continue
        batch = _to_device({k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for k, v in item.items()}, device)
        with _autocast(device, precision):
            pred = task.predict(model, batch, tile=tile, ensemble=ensemble)
        pred = pred.float()
        values = task.metrics(pred, batch, protocol.name)
        rows.append({"set": set_name, "image": Path(str(item["name"])).name, **{k: float(v[0]) for k, v in values.items()}})
        if writer is not None:
            writer.add(str(item["name"]), pred[0].permute(1, 2, 0).cpu().numpy(), batch["target"][0].permute(1, 2, 0).cpu().numpy())
    return rows


def _mean_row(name: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    metric_names = [k for k in rows[0] if k not in ("set", "image")]
    return {"set": name, "images": len(rows), **{m: float(np.mean([r[m] for r in rows])) for m in metric_names}}


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], replace: bool = True) -> Path:
    """Rows (dicts) to a CSV file, written atomically (``replace=False``: never over an existing file); the columns are every key, in order of appearance."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()), replace=replace)


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of summary rows; PSNR-like numbers with 2 decimals, the others with 4."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" if k in ("set", "image", "note") else "---:" for k in keys) + " |"]
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k, "")
            cells.append(f"{v:.2f}" if isinstance(v, float) and "psnr" in k else f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
