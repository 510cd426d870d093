"""``glmha demo``: the CSA and the GLMHA version of the same small model, trained side by side.

For each built-in task (synthetic deraining of scikit-image photographs, RGB-to-hyperspectral
reconstruction of synthetic scenes, CASSI snapshot reconstruction when available) the demo
trains the CSA model and its GLMHA version with the same seed, data order, iterations and
optimiser through the engine (:func:`glmha.engine.trainer.train`), evaluates both on the same
held-out images, measures parameters, MACs and latency per image in this run, runs the
attention eigen-analysis on the trained CSA model, and writes a report folder::

    report.md, report.html     the table and every figure
    results.json               the numbers of the table
    figures/*.png              restored images side by side, spectral bands and curves, spectra
    runs/<task>/<attention>/   the engine's training runs (weights, config)

Budgets (``--budget``) scale iterations, model width and image sizes. ``default`` takes 6 to
16 minutes on one CPU thread, ``tiny`` is for the test suite (seconds).
"""
from __future__ import annotations

import json
import platform
import shlex
import shutil
import statistics
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

from ..analysis import profile
from . import report
from .._version import __version__
from ..analysis.eigen import analyse_attention
from ..models.checkpoint import load_checkpoint
from ..io.files import atomic_write
from ..io.folders import claim_folder
from .tasks import DemoTask, ModelResult


@dataclass(frozen=True)
class Budget:
    """How much work each model of each task gets."""

    iterations: int  # training iterations per model
    batch_size: int
    patch_size: int  # training crop side
    train_images: int  # built-in training images per task
    test_images: int  # held-out images per task
    image_size: int  # side of the built-in images
    width: int  # Restormer's dim / MST's base width
    blocks: tuple[int, int, int, int]  # Restormer blocks per level
    lr: float = 1e-3
    latency_repeats: int = 5


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(iterations=6, batch_size=2, patch_size=32, train_images=3, test_images=2, image_size=32, width=8, blocks=(1, 1, 1, 1), latency_repeats=1),
    "small": Budget(iterations=40, batch_size=4, patch_size=32, train_images=8, test_images=2, image_size=64, width=12, blocks=(1, 1, 1, 2)),
    "default": Budget(iterations=500, batch_size=4, patch_size=48, train_images=24, test_images=3, image_size=96, width=16, blocks=(1, 1, 2, 2)),
    "long": Budget(iterations=1000, batch_size=8, patch_size=64, train_images=48, test_images=6, image_size=128, width=16, blocks=(1, 2, 2, 4)),
}

ATTENTIONS = ("csa", "glmha")


# ----------------------------------------------------------------------------- tasks
def _optimisation(budget: Budget, loss: str, lr: float | None = None) -> dict:
    lr = lr or budget.lr
    return {
        "optimizer": {"name": "AdamW", "lr": lr, "betas": [0.9, 0.999], "weight_decay": 1e-4},
        "scheduler": {"name": "CosineAnnealingLR", "T_max": budget.iterations, "eta_min": lr / 100},
        "train": {
            "total_iters": budget.iterations,
            "batch_size": budget.batch_size,
            "patch_size": budget.patch_size,
            "loss": loss,
            "precision": "fp32",
            "val_every": budget.iterations,
            "checkpoint_every": budget.iterations,
            "log_every": max(1, budget.iterations // 20),
            "keep_checkpoints": 1,
            "tensorboard": False,
        },
    }


def deraining_task(budget: Budget, seed: int) -> DemoTask:
    """Restormer on synthetic rain over scikit-image photographs; PSNR/SSIM on Y as the paper."""

    def synthetic(num_images: int, data_seed: int, **extra) -> dict:
        return {"type": "synthetic", "task": "deraining", "num_images": num_images, "image_size": budget.image_size, "seed": data_seed, **extra}

    config = {
        "task": {"name": "deraining"},
        "seed": seed,
        "model": {
            "name": "restormer",
            "dim": budget.width,
            "num_blocks": list(budget.blocks),
            "num_refinement_blocks": 1,
            "heads": [1, 2, 4, 8],
            "ffn_expansion_factor": 2.0,
        },
        "data": {
            "train": synthetic(budget.train_images, seed, augment=True),
            "test": synthetic(budget.test_images, seed + 1000),
        },
        **_optimisation(budget, "l1"),
    }
    return DemoTask("deraining", "Deraining (Restormer, synthetic rain)", "image", config, {"psnr": True, "ssim": True})


def rgb_to_hsi_task(budget: Budget, seed: int) -> DemoTask:
    """MST++ (one stage) on built-in 31-band scenes rendered to RGB; MRAE/RMSE/PSNR as NTIRE 2022."""
    from ..data.synthetic_hsi import RGB2HSI_WAVELENGTHS

    def synthetic(count: int, data_seed: int, **extra) -> dict:
        return {"type": "synthetic_rgb2hsi", "count": count, "size": budget.image_size, "seed": data_seed, **extra}

    optimisation = _optimisation(budget, "mrae", lr=4e-4)
    del optimisation["train"]["patch_size"]  # the spectral datasets crop themselves
    config = {
        "task": {"name": "rgb_to_hsi", "border": max(2, budget.image_size // 32)},
        "seed": seed,
        "model": {"name": "mst_plus_plus", "stage": 1},
        "data": {
            "train": synthetic(budget.train_images, seed, crop_size=budget.patch_size, augment=True),
            "test": synthetic(budget.test_images, seed + 1000),
        },
        **optimisation,
    }
    return DemoTask(
        "rgb_to_hsi", "RGB to hyperspectral (MST++, built-in 31-band scenes)", "spectral", config,
        {"mrae": False, "rmse": False, "psnr": True}, tuple(RGB2HSI_WAVELENGTHS),
    )


def cassi_task(budget: Budget, seed: int) -> DemoTask:
    """MST-S (one level) on built-in 28-band scenes seen through a random coded aperture; MST's PSNR/SSIM."""
    from ..data.synthetic_hsi import CASSI_WAVELENGTHS

    def synthetic(count: int, data_seed: int, **extra) -> dict:
        return {"type": "synthetic_cassi", "count": count, "size": budget.image_size, "seed": data_seed, **extra}

    optimisation = _optimisation(budget, "rmse", lr=4e-4)
    del optimisation["train"]["patch_size"]
    config = {
        "task": {"name": "cassi", "input_setting": "H", "mask_setting": "Phi", "step": 2},
        "seed": seed,
        "model": {"name": "mst_s", "stage": 1, "num_blocks": [1, 1]},
        "data": {
            "train": synthetic(budget.train_images, seed, crop_size=budget.patch_size, augment=True),
            "test": synthetic(budget.test_images, seed + 1000),
        },
        **optimisation,
    }
    return DemoTask(
        "cassi", "CASSI snapshot reconstruction (MST-S, built-in 28-band scenes)", "spectral", config,
        {"psnr": True, "ssim": True}, tuple(CASSI_WAVELENGTHS),
    )


def gaussian_denoising_task(budget: Budget, seed: int, sigma: float = 25.0) -> DemoTask:
    """Restormer (BiasFree norm, as the official denoisers) on scikit-image photographs with white
    Gaussian noise of ``sigma``; PSNR as the official denoising evaluation. Used by ``glmha study``."""
    config = deraining_task(budget, seed).config

    def synthetic(num_images: int, data_seed: int, **extra) -> dict:
        return {"type": "synthetic", "task": "gaussian_denoising", "sigma": sigma, "num_images": num_images,
                "image_size": budget.image_size, "seed": data_seed, **extra}

    config = {**config, "task": {"name": "gaussian_denoising"}, "model": {**config["model"], "layer_norm_type": "BiasFree"},
              "data": {"train": synthetic(budget.train_images, seed, augment=True), "test": synthetic(budget.test_images, seed + 1000)}}
    return DemoTask("gaussian_denoising", f"Gaussian denoising (Restormer, sigma {sigma:g})", "image", config, {"psnr": True})


def real_cassi_task(budget: Budget, seed: int) -> DemoTask:
    """The real-data MST-S (one level) on built-in 28-band scenes through a random 660 x 660 aperture with
    simulated shot noise; the CASSI protocols. Used by ``glmha study``."""
    from ..data.synthetic_hsi import CASSI_WAVELENGTHS

    def synthetic(count: int, data_seed: int, **extra) -> dict:
        return {"type": "synthetic_real_cassi", "count": count, "size": budget.image_size, "seed": data_seed, **extra}

    optimisation = _optimisation(budget, "l1", lr=4e-4)
    del optimisation["train"]["patch_size"]
    config = {
        "task": {"name": "real_cassi"},
        "seed": seed,
        "model": {"name": "mst_s_real", "stage": 1, "num_blocks": [1, 1]},
        "data": {
            "train": synthetic(budget.train_images, seed, crop_size=budget.patch_size, augment=True),
            "test": synthetic(budget.test_images, seed + 1000),
        },
        **optimisation,
    }
    return DemoTask("real_cassi", "Real CASSI reconstruction (real-data MST-S, built-in scenes, shot noise)", "spectral", config,
                    {"psnr": True, "ssim": True}, tuple(CASSI_WAVELENGTHS))


def available_tasks(budget: Budget, seed: int) -> list[DemoTask]:
    """The built-in tasks of the demo, in the order they run."""
    return [deraining_task(budget, seed), rgb_to_hsi_task(budget, seed), cassi_task(budget, seed)]


# ----------------------------------------------------------------------------- one model
def _config_for(task: DemoTask, attention: str) -> dict:
    config = json.loads(json.dumps(task.config))  # deep copy
    config["model"]["attention"] = attention
    return config


def _test_batches(task: DemoTask) -> list[dict]:
    from ..engine.tasks import build_dataset

    dataset = build_dataset(task.config["data"]["test"])
    return [
        {k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for k, v in dataset[i].items()}
        for i in range(len(dataset))
    ]


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass(frozen=True)
class Latency:
    """Wall time per call over the repeats, in ms."""

    median: float
    min: float
    max: float


@torch.no_grad()
def measure_latencies(runs: dict[str, Callable[[], Any]], device: torch.device, repeats: int) -> dict[str, Latency]:
    """Median, fastest and slowest wall time (ms) of each ``run()`` over ``repeats``, after one warm-up call each.

    The runs are timed in turns (a, b, a, b, ...), so a load that comes and goes on a shared
    machine weighs on every model alike.
    """

    def timed(run: Callable[[], Any]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1000

    for run in runs.values():
        timed(run)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(max(repeats, 1)):
        for name, run in runs.items():
            times[name].append(timed(run))
    return {name: Latency(statistics.median(values), min(values), max(values)) for name, values in times.items()}


def train_and_evaluate(
    task: DemoTask,
    attention: str,
    run_dir: Path,
    device: torch.device,
    test_batches: list[dict],
    progress: bool = True,
) -> ModelResult:
    """Train ``task``'s model with ``attention`` through the engine, then measure its quality and size."""
    from ..engine.settings import build_model
    from ..engine.trainer import train

    config = _config_for(task, attention)
    config["train"]["progress"] = progress
    if run_dir.exists():  # a demo run starts fresh: same seed, same budget for both models
        shutil.rmtree(run_dir)
    result = train(config, output_dir=run_dir, resume=False, device=device)
    engine_task = task.engine_task()

    model = build_model(config)
    load_checkpoint(model, result.weights)
    model = model.to(device).eval()

    totals: dict[str, float] = {}
    predictions, per_image = [], []
    with torch.no_grad():
        for batch in test_batches:
            batch = _to(batch, device)
            pred = engine_task.predict(model, batch).float()
            scores = {name: float(values.float().mean()) for name, values in engine_task.metrics(pred, batch).items()}
            for name, value in scores.items():
                totals[name] = totals.get(name, 0.0) + value
            predictions.append(pred.cpu())
            per_image.append(scores)
    metrics = {name: total / len(test_batches) for name, total in totals.items()}

    first = _to(test_batches[0], device)
    stats = profile(model, *task.model_inputs(first))
    return ModelResult(
        task=task.name,
        attention=attention,
        params=stats.params,
        macs=stats.macs,
        metrics=metrics,
        latency_ms=float("nan"),  # measured by run_demo, the models of a task in turns
        train_seconds=result.train_seconds,
        iterations=result.iteration,
        weights=str(result.weights),
        size=tuple(first["target"].shape[-2:]),
        model=model,
        predictions=predictions,
        per_image=per_image,
    )


# ----------------------------------------------------------------------------- the whole demo
@dataclass
class DemoResult:
    output_dir: Path
    budget: str
    results: list[ModelResult]
    report_md: Path
    report_html: Path
    figures: list[Path]
    table: str
    seconds: float


def run_demo(
    output_dir: str | Path = "glmha-demo",
    budget: str = "default",
    device: str | torch.device = "cpu",
    seed: int = 0,
    tasks: list[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    threads: int | None = None,
) -> DemoResult:
    """Train CSA and GLMHA side by side on the built-in tasks and write the report folder.

    ``threads`` sets PyTorch's CPU threads for the run (default: as they are). The numbers are
    identical for the same seed, budget and thread count: CPU kernels split their sums over the
    threads, so another count adds in another order and the rounding differs.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_demo(Path(output_dir), budget, device, seed, tasks, progress, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run_demo(
    output_dir: Path, budget: str, device: str | torch.device, seed: int, tasks: list[str] | None, progress: bool,
    log: Callable[[str], None],
) -> DemoResult:
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; available: {list(BUDGETS)}")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA device")
    settings = BUDGETS[budget]
    claim_folder(output_dir, "demo", legacy=("results.json",))  # never a study's or a user's folder: the demo replaces its runs
    start = time.monotonic()
    figures_dir = output_dir / "figures"
    all_tasks = available_tasks(settings, seed)
    if tasks:
        unknown = sorted(set(tasks) - {t.name for t in all_tasks})
        if unknown:
            raise ValueError(f"unknown demo task {unknown[0]!r}; available: {[t.name for t in all_tasks]}")
        all_tasks = [t for t in all_tasks if t.name in tasks]

    results: list[ModelResult] = []
    sections: list[report.Section] = []
    figures: list[Path] = []
    for task in all_tasks:
        test_batches = _test_batches(task)
        by_attention: dict[str, ModelResult] = {}
        for attention in ATTENTIONS:
            log(f"[{task.name}] training the {attention.upper()} model: {settings.iterations} iterations, seed {seed}")
            by_attention[attention] = train_and_evaluate(
                task, attention, output_dir / "runs" / task.name / attention, device, test_batches, progress
            )
        first = _to(test_batches[0], device)
        engine_task = task.engine_task()
        latencies = measure_latencies(
            {a: (lambda model=r.model: engine_task.predict(model, first)) for a, r in by_attention.items()},
            device,
            settings.latency_repeats,
        )
        for attention, result in by_attention.items():
            latency = latencies[attention]
            result.latency_ms, result.latency_min_ms, result.latency_max_ms = latency.median, latency.min, latency.max
        results.extend(by_attention.values())
        section = report.Section(title=task.title, text=_task_text(task, settings, by_attention))
        section.figures += report.task_figures(task, {a.upper(): r for a, r in by_attention.items()}, test_batches, figures_dir)

        log(f"[{task.name}] eigen-analysis of the trained CSA model's attention maps")
        spectra = analyse_attention(
            by_attention["csa"].model,
            [task.model_inputs(_to(b, device)) for b in test_batches[:2]],
            figures_dir / f"{task.name}_eigen",
            title=f"{task.name}: attention spectrum of the trained CSA model",
        )
        analysed = report.which_images(test_batches, range(min(2, len(test_batches))), len(test_batches))
        section.figures.append(report.Figure(spectra.plot, "Cumulative singular-value spectrum of the trained CSA model's attention maps, "
                                                           f"per level (paper Fig. 1), over held-out {analysed}."))
        section.text += "\n\nRank that keeps 90 / 95 / 99 % of each CSA layer's attention spectrum (per head):\n\n" + spectra.table
        sections.append(section)
        figures += [f.path for f in section.figures]

    seconds = time.monotonic() - start
    results_json = [
        {f.name: getattr(r, f.name) for f in fields(r) if f.name not in ("model", "predictions")} for r in results
    ]
    command = _command_line(output_dir, budget, device, seed, tasks)
    record = {
        "budget": budget,
        "seed": seed,
        "device": str(device),
        "device_name": _device_name(device),
        # PyTorch picks its CPU kernels by instruction set (AVX512, AVX2, ...): results repeat on a CPU of the same set
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "latency_repeats": settings.latency_repeats,
        "test_images": settings.test_images,  # per task: the table's metrics are means over them
        "command": command,
        "versions": package_versions(),
        "seconds": round(seconds, 1),
        "tasks": {t.name: {"title": t.title, "higher_is_better": t.metrics} for t in all_tasks},
        "results": results_json,
    }
    table = report.demo_table(json.loads(json.dumps(record)))  # the table is what results.json holds
    atomic_write(output_dir / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    intro = (
        f"CSA and GLMHA versions of the same small models, trained side by side on built-in data "
        f"(budget `{budget}`: {settings.iterations} iterations per model, seed {seed}, device `{device}`, "
        f"{record['threads']} CPU threads), evaluated on the same held-out images. {seed_statement(seed, settings.test_images)} "
        f"Latency is the median time per image "
        f"over {settings.latency_repeats} repeats in this run, with the fastest and slowest in brackets. "
        f"Made by `{command}` in {seconds / 60:.1f} minutes "
        f"(glmha {__version__}, PyTorch {torch.__version__}, Python {platform.python_version()})."
    )
    report_md, report_html = report.write_report(output_dir, "glmha demo: CSA vs GLMHA", intro, table, sections)
    return DemoResult(output_dir, budget, results, report_md, report_html, figures, table, seconds)


def seed_statement(seed: int, test_images: int) -> str:
    """What the report's numbers rest on: one seed, a few test images; and where a comparison is made."""
    return (
        f"Both models of a task are trained with seed {seed} (one seed, the same training samples in the same order), and "
        f"each metric in the table is the mean over the task's {test_images} held-out test images; the figures show single "
        f"test images, named in their captions with their own scores. One seed on {test_images} test images decides "
        f"nothing about which attention is better: another seed moves every number, by an amount this run cannot measure. "
        f"`glmha study` trains each model with several seeds (3 by default) on more test images (16) and gives the "
        f"differences paired by seed, with their 95 % confidence intervals."
    )


# the packages the built-in data are made with: their releases can move the last digits of the results
DATA_PACKAGES = ("numpy", "scipy", "scikit-image", "colour-science")


def package_versions() -> dict[str, str]:
    """glmha, PyTorch, Python and the data packages' versions, as a run records them."""
    from importlib.metadata import version

    return {"glmha": __version__, "torch": torch.__version__, "python": platform.python_version(),
            **{name: version(name) for name in DATA_PACKAGES}}


def _command_line(output_dir: Path, budget: str, device: torch.device, seed: int, tasks: list[str] | None) -> str:
    """The ``glmha demo`` command that repeats this run, every option spelled out (threads included)."""
    args = ["glmha", "demo", "--output", str(output_dir), "--budget", budget, "--seed", str(seed), "--device", str(device),
            "--threads", str(torch.get_num_threads())]
    if tasks:
        args += ["--tasks", *tasks]
    return shlex.join(args)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _task_text(task: DemoTask, budget: Budget, results: dict[str, ModelResult]) -> str:
    model = task.config["model"]
    args = ", ".join(f"{k}={v}" for k, v in model.items() if k != "name")
    train_s = ", ".join(f"{a.upper()} {r.train_seconds:.0f} s" for a, r in results.items())
    optimizer, loss = task.config["optimizer"], task.config["train"]["loss"]
    return (
        f"Model `{model['name']}` ({args}); {budget.iterations} iterations of batch {budget.batch_size}, "
        f"{budget.patch_size}x{budget.patch_size} crops, {loss.upper()} loss, {optimizer['name']} lr {optimizer['lr']:g} with cosine decay; "
        f"{budget.train_images} training and {budget.test_images} test images of {budget.image_size}x{budget.image_size}. "
        f"Training time: {train_s}."
    )
