"""``glmha study``: does an attention keep CSA's quality? Variants trained at one budget over seeds.

Every variant (CSA, GLMHA, GLMHA with other options, per-layer ranks, a baseline) of every
built-in task is trained through the engine with the demo's budgets, once per seed, and
scored on the task's held-out images. Seeds are paired: for a given seed, every variant
starts from the same initial weights of the layers the variants share (the CSA model
initialised with that seed, whose attention layers are then replaced) and sees the same
training samples in the same order. The report gives per task and variant the mean and the
standard deviation of each metric over the seeds, the paired difference to the reference
variant (default CSA) with its 95 % confidence interval (Student's t over the seeds),
parameters and MACs, in ``study.md``, ``study.json`` and ``quality_vs_macs.png``.

A finished run is never trained again: each run folder keeps its scores (``scores.json``),
so an interrupted study restarts where it stopped, and adding seeds or variants reuses
what is there.

Variant specs: ``csa``, ``glmha``, ``glmha:rank_ratio=0.25``,
``glmha:calibration=false,gate_weights=false``, ``glmha:ranks=suggest`` (per-layer ranks
keeping 95 % of the attention spectrum of the same seed's trained reference model, as
``glmha rank --suggest`` chooses them; ``ranks=suggest@0.9`` for another share),
``linformer``, ... Option values are parsed as YAML.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from ..io.files import atomic_write

DEFAULT_VARIANTS = ("csa", "glmha")
DEFAULT_TASKS = ("deraining", "rgb_to_hsi", "cassi", "gaussian_denoising")


# ----------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """An attention and its options; ``ranks_share`` set means per-layer ranks from the reference model's spectrum."""

    spec: str
    attention: str
    options: dict = field(default_factory=dict, hash=False)
    ranks_share: float | None = None

    @property
    def slug(self) -> str:
        """A folder name for the spec."""
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.spec.replace(":", "__").replace(",", "_"))


def parse_variant(spec: str) -> Variant:
    """``name`` or ``name:key=value,key=value`` (values in YAML; ``ranks=suggest[@share]``)."""
    from ..attention import list_attentions

    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in list_attentions():
        raise ValueError(f"variant {spec!r}: unknown attention {name!r}; available: {list_attentions()}")
    options, share = {}, None
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"variant {spec!r}: options look like key=value, got {item!r}")
        key = key.strip()
        if key == "ranks":
            match = re.fullmatch(r"suggest(?:@([0-9.]+))?", raw.strip())
            if not match:
                raise ValueError(f"variant {spec!r}: ranks must be 'suggest' or 'suggest@SHARE', got {raw!r}")
            share = float(match.group(1) or 0.95)
            if not 0 < share <= 1:
                raise ValueError(f"variant {spec!r}: the spectrum share must be in (0, 1], got {share}")
            continue
        try:
            options[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ValueError(f"variant {spec!r}: cannot read the value of {key!r}: {raw!r}") from None
    if share is not None and name != "glmha":
        raise ValueError(f"variant {spec!r}: per-layer ranks apply to glmha only")
    return Variant(spec, name, options, share)


# ----------------------------------------------------------------------------- tasks
def study_tasks(budget, seed: int, names: Sequence[str]) -> list:
    """The built-in tasks named (the demo's, plus Gaussian denoising and real CASSI)."""
    from .demo import cassi_task, deraining_task, gaussian_denoising_task, real_cassi_task, rgb_to_hsi_task

    builders: dict[str, Callable] = {
        "deraining": deraining_task, "rgb_to_hsi": rgb_to_hsi_task, "cassi": cassi_task,
        "gaussian_denoising": gaussian_denoising_task, "real_cassi": real_cassi_task,
    }
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise ValueError(f"unknown study task {unknown[0]!r}; available: {sorted(builders)}")
    return [builders[n](budget, seed) for n in names]


def build_variant_model(config: dict, variant: Variant, seed: int, ranks: dict[str, int] | None = None) -> nn.Module:
    """The model of ``variant``: the CSA model initialised with ``seed``, its attention layers replaced
    (freshly initialised from ``seed``, as the model initialises its layers), so that every variant of
    a seed shares the other layers' weights."""
    from ..attention import swap_attention
    from ..models import create_model
    from ..analysis.eigen import apply_ranks

    spec = dict(config["model"])
    name = spec.pop("name")
    spec.pop("attention", None)
    spec.pop("attention_kwargs", None)
    torch.manual_seed(seed)
    model = create_model(name, attention="csa", **spec)
    if variant.attention == "csa" and not variant.options:
        return model
    torch.manual_seed(seed + 7919)  # the new attention layers' own stream, the same for every variant
    if ranks is not None:
        return apply_ranks(model, ranks, variant.attention, init="random", **variant.options)
    return swap_attention(model, variant.attention, init="random", **variant.options)


# ----------------------------------------------------------------------------- one run
@dataclass
class RunScores:
    """One trained variant of one task and seed."""

    task: str
    variant: str
    seed: int
    metrics: dict[str, float]
    per_image: list[dict[str, float]]
    params: int
    macs: int
    train_seconds: float
    ranks: dict[str, int] | None = None


def _score(task, model: nn.Module, device: torch.device) -> tuple[dict[str, float], list[dict[str, float]], int, int]:
    from ..analysis import profile
    from .demo import _test_batches, _to

    engine_task = task.engine_task()
    per_image = []
    with torch.no_grad():
        for batch in _test_batches(task):
            batch = _to(batch, device)
            pred = engine_task.predict(model, batch).float()
            per_image.append({k: float(v.mean()) for k, v in engine_task.metrics(pred, batch).items()})
    metrics = {k: float(np.mean([row[k] for row in per_image])) for k in per_image[0]}
    first = _to(_test_batches(task)[0], device)
    stats = profile(model, *task.model_inputs(first))
    return metrics, per_image, stats.params, stats.macs


def _suggested_ranks(task, reference_run: Path, device: torch.device, share: float) -> dict[str, int]:
    from ..analysis.eigen import attention_spectra, suggest_ranks
    from ..models.checkpoint import load_checkpoint
    from .demo import _test_batches, _to
    from ..engine.settings import build_model

    config = json.loads((reference_run / "study_config.json").read_text())
    model = load_checkpoint(build_model(config), reference_run / "model.safetensors").to(device).eval()
    batches = [task.model_inputs(_to(b, device)) for b in _test_batches(task)[:2]]
    return suggest_ranks(attention_spectra(model, batches), share)


def run_variant(task, variant: Variant, seed: int, folder: Path, device: torch.device, reference: Path | None = None,
                progress: bool = True) -> RunScores:
    """Train (or resume) one variant of one task for one seed, score it, and keep the scores in ``folder``."""
    from ..engine.run_state import config_differences
    from ..engine.trainer import train

    scores_path = folder / "scores.json"
    config = json.loads(json.dumps(task.config))
    config["seed"] = seed
    config["model"]["attention"] = variant.attention
    config["train"]["progress"] = progress
    if scores_path.is_file():
        # a finished run is reused only for the settings it was trained and scored with (another
        # budget, --iterations or --test-images in the same folder would otherwise mix runs silently)
        saved = json.loads((folder / "study_config.json").read_text())
        changed = config_differences(saved, config, free=("train.progress",))
        if changed:
            raise ValueError(f"{folder} was trained with other settings ({', '.join(changed)}); "
                             "use another --output for another budget, number of iterations or of test images")
        return RunScores(**json.loads(scores_path.read_text()))
    ranks = None
    if variant.ranks_share is not None:
        if reference is None or not (reference / "model.safetensors").is_file():
            raise ValueError(f"variant {variant.spec!r} needs the trained reference model of seed {seed} first")
        ranks = _suggested_ranks(task, reference, device, variant.ranks_share)
    model = build_variant_model(config, variant, seed, ranks)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "study_config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=1)))
    result = train(config, output_dir=folder, device=device, model=model)
    model = model.to(device).eval()
    metrics, per_image, params, macs = _score(task, model, device)
    scores = RunScores(task.name, variant.spec, seed, metrics, per_image, params, macs, result.train_seconds, ranks)
    atomic_write(scores_path, lambda tmp: Path(tmp).write_text(json.dumps(asdict(scores), indent=1)))
    return scores


# ----------------------------------------------------------------------------- statistics
def t_interval(values: Sequence[float], confidence: float = 0.95) -> float:
    """Half-width of the Student-t confidence interval of the mean of ``values`` (nan for one value)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def summarise(runs: Sequence[RunScores], reference: str, higher_is_better: dict[str, bool]) -> list[dict[str, Any]]:
    """Per task and variant: mean and standard deviation of each metric, and the paired difference to ``reference``."""
    rows = []
    by_key = {(r.task, r.variant, r.seed): r for r in runs}
    for task in dict.fromkeys(r.task for r in runs):
        variants = list(dict.fromkeys(r.variant for r in runs if r.task == task))
        for variant in variants:
            mine = sorted((r for r in runs if r.task == task and r.variant == variant), key=lambda r: r.seed)
            row: dict[str, Any] = {"task": task, "variant": variant, "seeds": [r.seed for r in mine],
                                   "params": mine[0].params, "macs": mine[0].macs, "metrics": {}}
            for metric in mine[0].metrics:
                values = [r.metrics[metric] for r in mine]
                entry = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                         "values": values, "higher_is_better": higher_is_better.get(metric, True)}
                paired = [r.metrics[metric] - by_key[(task, reference, r.seed)].metrics[metric]
                          for r in mine if (task, reference, r.seed) in by_key]
                if variant != reference and paired:
                    entry["difference"] = {"mean": float(np.mean(paired)), "ci95": t_interval(paired), "values": paired}
                    base = [by_key[(task, reference, r.seed)].metrics[metric] for r in mine if (task, reference, r.seed) in by_key]
                    entry["difference"]["relative"] = float(np.mean(paired) / np.mean(base)) if np.mean(base) else math.nan
                row["metrics"][metric] = entry
            rows.append(row)
    return rows


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_summary(rows: Sequence[dict[str, Any]], reference: str) -> str:
    """Markdown tables, one per task."""
    parts = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        metrics = list(mine[0]["metrics"])
        header = ["variant", "params (K)", "GMACs"] + [f"{m} (mean ± sd)" for m in metrics] + [f"{m} - {reference} (95 % CI)" for m in metrics]
        lines = [f"### {task}", "", "| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
        for row in mine:
            digits = {m: 3 if "psnr" in m else 4 for m in metrics}
            cells = [row["variant"], f"{row['params'] / 1e3:.1f}", f"{row['macs'] / 1e9:.3f}"]
            cells += [f"{_fmt(row['metrics'][m]['mean'], digits[m])} ± {_fmt(row['metrics'][m]['std'], digits[m])}" for m in metrics]
            for m in metrics:
                diff = row["metrics"][m].get("difference")
                cells.append("-" if diff is None else f"{diff['mean']:+.{digits[m]}f} ± {_fmt(diff['ci95'], digits[m])}")
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot_quality_vs_macs(rows: Sequence[dict[str, Any]], path: Path, primary: dict[str, str]) -> Path:
    """One panel per task: the primary metric's mean against MACs, with the 95 % interval over the seeds."""
    from .report import _pyplot, save_figure

    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), dpi=100, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        metric = primary[task]
        for row in (r for r in rows if r["task"] == task):
            entry = row["metrics"][metric]
            ci = t_interval(entry["values"])
            ax.errorbar(row["macs"] / 1e9, entry["mean"], yerr=0 if math.isnan(ci) else ci, fmt="o", capsize=3, label=row["variant"])
        ax.set_title(task)
        ax.set_xlabel("GMACs per image")
        ax.set_ylabel(f"{metric} ({'higher' if rows[0]['metrics'].get(metric, {}).get('higher_is_better', True) else 'lower'} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- the study
@dataclass
class StudyResult:
    output_dir: Path
    rows: list[dict[str, Any]]
    markdown: Path
    json: Path
    figure: Path
    seconds: float


def run_study(
    output_dir: str | Path = "glmha-study",
    tasks: Sequence[str] = DEFAULT_TASKS,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    seeds: int | Sequence[int] = 3,
    budget: str = "default",
    device: str | torch.device = "cpu",
    reference: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    test_images: int | None = 16,
    iterations: int | None = None,
) -> StudyResult:
    """Train every variant of every task for every seed (resuming what is done) and write the report.

    ``test_images`` replaces the budget's number of held-out images (None keeps it): the demo
    shows a few, a study needs enough of them that the test set does not decide the ranking.
    ``iterations`` replaces the budget's training iterations (the learning-rate schedule is
    stretched to run to its end), to train closer to convergence than the demo does.
    """
    from .demo import BUDGETS

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; available: {list(BUDGETS)}")
    parsed = [parse_variant(v) for v in variants]
    if len({v.spec for v in parsed}) != len(parsed):
        raise ValueError("a variant is listed twice")
    reference = reference or parsed[0].spec
    if reference not in {v.spec for v in parsed}:
        raise ValueError(f"the reference variant {reference!r} is not among the variants {[v.spec for v in parsed]}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("a study needs at least one seed")
    device = torch.device(device)
    output_dir = Path(output_dir)
    start = time.monotonic()
    settings = BUDGETS[budget]
    if test_images is not None:
        if test_images < 1:
            raise ValueError(f"test_images must be at least 1, got {test_images}")
        settings = dataclasses.replace(settings, test_images=test_images)
    if iterations is not None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
        settings = dataclasses.replace(settings, iterations=iterations)
    # the reference first: per-layer rank variants read its trained model
    ordered = sorted(parsed, key=lambda v: (v.spec != reference, v.ranks_share is not None))
    runs: list[RunScores] = []
    higher: dict[str, bool] = {}
    primary: dict[str, str] = {}
    total = len(tasks) * len(parsed) * len(seed_list)
    done = 0
    for seed in seed_list:
        for task in study_tasks(settings, 0, tasks):
            higher.update(task.metrics)
            primary[task.name] = next(iter(task.metrics))
            base = output_dir / "runs" / task.name
            reference_folder = base / parse_variant(reference).slug / f"seed{seed}"
            for variant in ordered:
                done += 1
                folder = base / variant.slug / f"seed{seed}"
                state = "done" if (folder / "scores.json").is_file() else "training"
                log(f"[{done}/{total}] {task.name} {variant.spec} seed {seed}: {state}")
                runs.append(run_variant(task, variant, seed, folder, device, reference_folder, progress))
    rows = summarise(runs, reference, higher)
    markdown = format_summary(rows, reference)
    intro = (f"Budget `{budget}` ({settings.iterations} iterations per model, {settings.test_images} held-out images per task), "
             f"seeds {seed_list}, device `{device}` ({torch.get_num_threads()} threads); "
             f"differences are paired by seed against `{reference}`, with the half-width of the 95 % t interval.")
    md_path = atomic_write(output_dir / "study.md", lambda tmp: Path(tmp).write_text(f"# glmha study\n\n{intro}\n\n{markdown}\n"))
    payload = {"budget": budget, "iterations": settings.iterations, "test_images": settings.test_images, "threads": torch.get_num_threads(), "seeds": seed_list, "reference": reference, "device": str(device), "tasks": list(tasks),
               "variants": [v.spec for v in parsed], "rows": rows, "runs": [asdict(r) for r in runs]}
    json_path = atomic_write(output_dir / "study.json", lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1) + "\n"))
    figure = plot_quality_vs_macs(rows, output_dir / "quality_vs_macs.png", primary)
    return StudyResult(output_dir, rows, md_path, json_path, figure, time.monotonic() - start)
