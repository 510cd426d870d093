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
so an interrupted study restarts where it stopped (an unfinished run from its last
checkpoint, written every tenth of its iterations), and adding seeds or variants reuses
what is there. Runs go one after the other in this process, several at once in processes of
this machine (``jobs``), or as submitit jobs on Slurm (:mod:`glmha.experiments.study_jobs`);
the numbers are the same either way, for the same number of threads per run.

Variant specs: ``csa``, ``glmha``, ``glmha:rank_ratio=0.25``,
``glmha:calibration=false,gate_weights=false``, ``glmha:ranks=suggest`` (per-layer ranks
keeping 95 % of the attention spectrum of the same seed's trained reference model, as
``glmha rank --suggest`` chooses them; ``ranks=suggest@0.9`` for another share),
``linformer``, ... Option values are parsed as YAML.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from ..io.files import atomic_write
from ..io.folders import claim_folder
from .study_report import RunScores, format_summary, plot_quality_vs_macs, summarise

if TYPE_CHECKING:
    from .demo import Budget
    from .study_jobs import ClusterOptions, RunSpec, RunState

LOG = logging.getLogger("glmha.study")
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
def study_budget(budget: str, test_images: int | None = None, iterations: int | None = None) -> "Budget":
    """The demo's budget ``budget`` with the study's number of held-out images and of iterations, if given."""
    from .demo import BUDGETS

    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; available: {list(BUDGETS)}")
    settings = BUDGETS[budget]
    if test_images is not None:
        if test_images < 1:
            raise ValueError(f"test_images must be at least 1, got {test_images}")
        settings = dataclasses.replace(settings, test_images=test_images)
    if iterations is not None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
        settings = dataclasses.replace(settings, iterations=iterations)
    return settings


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
def claim_run_folder(folder: Path) -> Path:
    """Make ``folder`` a training-run folder (new, or one of this study's runs, also of older versions)."""
    return claim_folder(folder, "train", legacy=("study_config.json", "scores.json", "job.json", "failure.json", "worker.log", "jobs"),
                        option="study run folder")


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


def _run_config(task, variant: Variant, seed: int, progress: bool) -> dict:
    config = json.loads(json.dumps(task.config))
    config["seed"] = seed
    config["model"]["attention"] = variant.attention
    config["train"]["progress"] = progress
    # checkpoints through the run, so that a killed or pre-empted run loses at most a tenth of it
    config["train"]["checkpoint_every"] = max(1, config["train"]["total_iters"] // 10)
    return config


def load_finished_run(task, variant: Variant, seed: int, folder: Path) -> RunScores:
    """The scores of a finished run, refused (ValueError) if it was trained or scored with other settings."""
    from ..engine.run_state import config_differences

    # another budget, --iterations or --test-images in the same folder would otherwise mix runs silently
    saved = json.loads((folder / "study_config.json").read_text())
    changed = config_differences(saved, _run_config(task, variant, seed, False), free=("train.progress", "train.checkpoint_every"))
    if changed:
        raise ValueError(f"{folder} was trained with other settings ({', '.join(changed)}); "
                         "use another --output for another budget, number of iterations or of test images")
    return RunScores(**json.loads((folder / "scores.json").read_text()))


def run_variant(task, variant: Variant, seed: int, folder: Path, device: torch.device, reference: Path | None = None,
                progress: bool = True) -> RunScores:
    """Train (or resume) one variant of one task for one seed, score it, and keep the scores in ``folder``."""
    from ..engine.trainer import train

    scores_path = folder / "scores.json"
    if scores_path.is_file():
        return load_finished_run(task, variant, seed, folder)
    config = _run_config(task, variant, seed, progress)
    ranks = None
    if variant.ranks_share is not None:
        if reference is None or not (reference / "model.safetensors").is_file():
            raise ValueError(f"variant {variant.spec!r} needs the trained reference model of seed {seed} first")
        ranks = _suggested_ranks(task, reference, device, variant.ranks_share)
    model = build_variant_model(config, variant, seed, ranks)
    claim_run_folder(folder)  # before study_config.json: the trainer accepts only a new, empty or training-run folder
    atomic_write(folder / "study_config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=1)))
    result = train(config, output_dir=folder, device=device, model=model)
    model = model.to(device).eval()
    metrics, per_image, params, macs = _score(task, model, device)
    scores = RunScores(task.name, variant.spec, seed, metrics, per_image, params, macs, result.train_seconds, ranks)
    atomic_write(scores_path, lambda tmp: Path(tmp).write_text(json.dumps(asdict(scores), indent=1)))
    return scores


# ----------------------------------------------------------------------------- one run, in any process
def execute_run(spec: "RunSpec", device: str = "cpu", threads: int | None = None, progress: bool = False,
                executor: str = "inline", job_id: str | None = None, log: str | None = None) -> str:
    """Train and score the run ``spec`` unless another process holds it: ``"done"``, or ``"held"`` when one does.

    The run is claimed first (:func:`glmha.experiments.study_jobs.acquire_claim`) and looked at
    again once claimed, so that no run is trained twice; on an error, the reason and ``log`` go
    to the run's ``failure.json`` before the error is raised.
    """
    from .study_jobs import FAILURE, SCORES, RunClaimed, acquire_claim, release_claim, write_failure

    if threads:
        torch.set_num_threads(threads)
    folder = Path(spec.folder)
    log = log or str(folder / "train.log")
    try:
        claim = acquire_claim(folder, executor, job_id, log)
    except RunClaimed:
        return "held"
    try:
        if (folder / SCORES).is_file():
            return "done"  # finished by another process between our look and our claim
        (folder / FAILURE).unlink(missing_ok=True)
        task = study_tasks(study_budget(spec.budget, spec.test_images, spec.iterations), 0, [spec.task])[0]
        reference = Path(spec.reference) if spec.reference else None
        run_variant(task, parse_variant(spec.variant), spec.seed, folder, torch.device(device), reference, progress)
        return "done"
    except SystemExit:
        raise  # submitit requeues a pre-empted job this way: not a failure of the run
    except BaseException as err:
        write_failure(folder, err, log, job_id)
        raise
    finally:
        release_claim(claim)


class StudyJob:
    """A run as a submitit job; on submitit's pre-emption or time-out signal it is requeued and resumes."""

    def __init__(self, spec: "RunSpec", device: str, threads: int | None, executor: str):
        self.spec, self.device, self.threads, self.executor = spec, device, threads, executor

    def __call__(self) -> str:
        import submitit

        environment = submitit.JobEnvironment()
        return execute_run(self.spec, self.device, self.threads, False, self.executor, environment.job_id, str(environment.paths.stderr))

    def checkpoint(self) -> Any:
        # the requeued job resumes from the trainer's own checkpoints (every tenth of the run)
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(StudyJob(self.spec, self.device, self.threads, self.executor))


# how glmha study --jobs starts a process training one run (a -c line: the module is not run as __main__)
WORKER_COMMAND = (sys.executable, "-c", "import sys; from glmha.experiments.study import worker_main; sys.exit(worker_main(sys.argv[1:]))")


def worker_main(argv: Sequence[str]) -> int:
    """One run in a process of its own (``glmha study --jobs``): 0 when done, HELD_EXIT when another process holds it."""
    import argparse

    from .study_jobs import HELD_EXIT, RunSpec, describe_holder, read_claim

    parser = argparse.ArgumentParser(prog="glmha study worker", description="train one run of a study")
    parser.add_argument("spec", help="the run, as JSON")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--log", default=None, help="this process's log, recorded with its claim and failures")
    args = parser.parse_args(list(argv))
    spec = RunSpec.from_json(args.spec)
    try:
        status = execute_run(spec, args.device, args.threads, False, "processes", None, args.log)
    except KeyboardInterrupt as err:  # SIGINT / SIGTERM, after the trainer's checkpoint
        print(f"{spec.label}: {err or 'interrupted'}", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    if status == "held":
        print(f"{spec.label}: {describe_holder(read_claim(Path(spec.folder)))} holds this run; not trained here")
        return HELD_EXIT
    return 0


# ----------------------------------------------------------------------------- the study
@dataclass
class StudyResult:
    """The report's files; without them (``complete`` false) the runs ``pending`` of a ``wait=False`` call."""

    output_dir: Path
    rows: list[dict[str, Any]]
    markdown: Path | None
    json: Path | None
    figure: Path | None
    seconds: float
    submitted: list[str] = field(default_factory=list)  # job ids left running (wait=False)
    pending: list["RunState"] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.markdown is not None


class StudyFailed(RuntimeError):
    """Runs of a study failed (each reported as it failed); the other runs are kept, the report waits for all."""

    def __init__(self, message: str, failures: dict[str, str]):
        super().__init__(message)
        self.failures = failures  # run label -> what failed and where its log is


@dataclass
class StudyPlan:
    """What a study trains and how its runs were run, kept in ``study_plan.json`` for ``--status`` and the report."""

    tasks: list[str]
    variants: list[str]
    seeds: list[int]
    budget: str
    reference: str
    test_images: int | None
    iterations: int | None
    device: str  # where the runs train, for the report: "cpu", "cuda:0 cuda:1", "slurm (cuda)"
    threads: int | None  # CPU threads per run (None: each Slurm job's default)
    jobs: int | None  # runs at once (None: as many as Slurm grants)
    executor: str  # inline, processes, local or slurm

    def settings(self) -> "Budget":
        return study_budget(self.budget, self.test_images, self.iterations)

    def ordered_variants(self) -> list[Variant]:
        # the reference first: per-layer rank variants read its trained model
        return sorted((parse_variant(v) for v in self.variants), key=lambda v: (v.spec != self.reference, v.ranks_share is not None))

    def runs(self, output_dir: Path) -> list["RunSpec"]:
        """Every run, references before the runs that read them (seed by seed, task by task)."""
        from .study_jobs import RunSpec

        specs = []
        reference_slug = parse_variant(self.reference).slug
        for seed in self.seeds:
            for task in self.tasks:
                base = output_dir / "runs" / task
                for variant in self.ordered_variants():
                    specs.append(RunSpec(task, variant.spec, seed, str(base / variant.slug / f"seed{seed}"), self.budget,
                                         self.test_images, self.iterations, str(base / reference_slug / f"seed{seed}"),
                                         variant.ranks_share is not None))
        return specs

    def save(self, output_dir: Path) -> None:
        from .study_jobs import PLAN

        atomic_write(output_dir / PLAN, lambda tmp: Path(tmp).write_text(json.dumps(asdict(self), indent=1) + "\n"))

    @classmethod
    def load(cls, output_dir: Path) -> "StudyPlan":
        from .study_jobs import PLAN

        path = Path(output_dir) / PLAN
        if not path.is_file():
            raise ValueError(f"{output_dir} is not a study folder of this version (no {PLAN}): "
                             f"run glmha study --output {output_dir} with the study's options once")
        return cls(**json.loads(path.read_text()))


def _check_devices(devices: Sequence[str]) -> list[str]:
    checked = []
    for text in devices:
        try:
            checked.append(str(torch.device(text)))
        except RuntimeError:
            raise ValueError(f"{text!r} is not a device; use cpu, cuda, cuda:1, ...") from None
    return checked


def _threads_warning(threads: int | None, at_once: int) -> None:
    from .study_jobs import cpu_count

    cores = cpu_count()
    if threads and threads > cores:
        LOG.warning(f"--threads {threads} is more than the {cores} cores this process may use: the runs will be slower, not faster")
    elif threads and at_once > 1 and threads * at_once > cores:
        LOG.warning(f"{at_once} runs at once x {threads} threads = {threads * at_once} threads on {cores} cores: "
                    "the runs slow each other down (lower --threads or --jobs)")


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
    *,
    jobs: int | None = None,
    devices: Sequence[str] | None = None,
    threads: int | None = None,
    executor: str | None = None,
    cluster: "ClusterOptions | None" = None,
    wait: bool = True,
) -> StudyResult:
    """Train every variant of every task for every seed (resuming what is done) and write the report.

    ``test_images`` replaces the budget's number of held-out images (None keeps it): the demo
    shows a few, a study needs enough of them that the test set does not decide the ranking.
    ``iterations`` replaces the budget's training iterations (the learning-rate schedule is
    stretched to run to its end), to train closer to convergence than the demo does.

    Where the runs go: one after the other in this process (default); ``jobs`` at once, each in
    a fresh process on the next free of ``devices`` (round robin) with ``threads`` CPU threads
    (default: this process's cores shared out); or, with ``executor`` ``"local"`` or ``"slurm"``,
    as submitit jobs (``cluster``: what each Slurm job asks for; ``jobs``: at most that many at
    once). The numbers do not depend on where runs go, given the same threads per run. A run
    needing the reference run of its seed starts once that one is done. A failed run is
    reported (one line, with its log) while the others go on, and :class:`StudyFailed` is
    raised at the end. ``wait=False`` (submitit executors only) submits what can start and
    returns; a later call, or :func:`study_status`, writes the report once all runs are done.
    """
    from .study_jobs import EXECUTORS, ClusterOptions, InlineExecutor, ProcessExecutor, SubmititExecutor, cpu_count, run_jobs

    start = time.monotonic()
    parsed = [parse_variant(v) for v in variants]
    if len({v.spec for v in parsed}) != len(parsed):
        raise ValueError("a variant is listed twice")
    reference = reference or parsed[0].spec
    if reference not in {v.spec for v in parsed}:
        raise ValueError(f"the reference variant {reference!r} is not among the variants {[v.spec for v in parsed]}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("a study needs at least one seed")
    settings = study_budget(budget, test_images, iterations)
    study_tasks(settings, 0, tasks)  # unknown task names refused before anything runs
    if executor is not None and executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; available: {list(EXECUTORS)}")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be at least 1, got {jobs!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be at least 1, got {threads!r}")
    if not wait and executor is None:
        raise ValueError("not waiting needs an executor (local or slurm): runs of this process end with it")
    device_list = _check_devices(devices or [str(device)])
    if executor == "slurm" and devices:
        raise ValueError("devices are chosen on this machine; Slurm jobs get theirs from --gpus-per-job")
    if executor is None and (jobs or 1) == 1 and len(device_list) > 1:
        raise ValueError(f"{len(device_list)} devices but 1 run at a time: run {len(device_list)} at once (--jobs {len(device_list)}) "
                         "to use them all")

    if executor is None and (jobs or 1) == 1:
        runner: Any = InlineExecutor(execute_run, device_list[0], threads, progress)
        run_threads, at_once = threads or torch.get_num_threads(), 1
    elif executor is None:
        run_threads, at_once = threads or max(1, cpu_count() // jobs), jobs
        runner = ProcessExecutor(WORKER_COMMAND, jobs, device_list, run_threads)
    else:
        at_once = jobs or (len(device_list) if executor == "local" else None)
        run_threads = threads or (max(1, cpu_count() // at_once) if executor == "local" else None)
        runner = SubmititExecutor(StudyJob, executor, at_once, device_list, run_threads, cluster or ClusterOptions())
    if executor != "slurm":  # a Slurm job gets the cores it asks for (--cpus-per-task)
        _threads_warning(threads, at_once)
    where = (" ".join(device_list) if executor != "slurm"
             else f"slurm ({'cuda' if (cluster or ClusterOptions()).gpus_per_job else 'cpu'})")
    plan = StudyPlan(list(tasks), [v.spec for v in parsed], seed_list, budget, reference, test_images, iterations, where, run_threads,
                     at_once, runner.name)

    output_dir = claim_folder(Path(output_dir), "study", legacy=("study.json", "runs"))
    specs = plan.runs(output_dir)
    task_objects = {t.name: t for t in study_tasks(settings, 0, tasks)}
    for spec in specs:  # finished runs of other settings refuse the folder before anything trains
        if (Path(spec.folder) / "scores.json").is_file():
            load_finished_run(task_objects[spec.task], parse_variant(spec.variant), spec.seed, Path(spec.folder))
    plan.save(output_dir)

    previous_threads = torch.get_num_threads()
    try:
        outcome = run_jobs(specs, runner, wait, log)
    finally:
        torch.set_num_threads(previous_threads)  # an inline run sets this process's threads
    if outcome.failed:
        raise StudyFailed(f"{len(outcome.failed)} of {len(specs)} runs failed, each reported above with its log "
                          f"({', '.join(outcome.failed)}); the others are kept: run the same command again to retry the failed ones",
                          outcome.failed)
    if outcome.pending:
        return StudyResult(output_dir, [], None, None, None, time.monotonic() - start, outcome.submitted, outcome.pending)
    return write_report(output_dir, plan, time.monotonic() - start)


def write_report(output_dir: Path, plan: StudyPlan, seconds: float = 0.0) -> StudyResult:
    """``study.md``, ``study.json`` and ``quality_vs_macs.png`` from the finished runs of ``plan``."""
    start = time.monotonic()
    settings = plan.settings()
    task_objects = {t.name: t for t in study_tasks(settings, 0, plan.tasks)}
    runs = [load_finished_run(task_objects[spec.task], parse_variant(spec.variant), spec.seed, Path(spec.folder))
            for spec in plan.runs(Path(output_dir))]
    higher: dict[str, bool] = {}
    primary: dict[str, str] = {}
    for task in task_objects.values():
        higher.update(task.metrics)
        primary[task.name] = next(iter(task.metrics))
    reference = plan.reference
    rows = summarise(runs, reference, higher)
    markdown = format_summary(rows, reference)
    threads = f" ({plan.threads} thread{'s' if plan.threads > 1 else ''} per run)" if plan.threads else ""
    at_once = f", {plan.jobs} runs at once" if plan.jobs and plan.jobs > 1 else ""
    intro = (f"Budget `{plan.budget}` ({settings.iterations} iterations per model, {settings.test_images} held-out images per task), "
             f"seeds {plan.seeds}, device `{plan.device}`{threads}{at_once}; "
             f"differences are paired by seed against `{reference}`, with the half-width of the 95 % t interval.")
    md_path = atomic_write(output_dir / "study.md", lambda tmp: Path(tmp).write_text(f"# glmha study\n\n{intro}\n\n{markdown}\n"))
    payload = {"budget": plan.budget, "iterations": settings.iterations, "test_images": settings.test_images, "threads": plan.threads,
               "jobs": plan.jobs, "executor": plan.executor, "seeds": plan.seeds, "reference": reference, "device": plan.device,
               "tasks": plan.tasks, "variants": plan.variants, "rows": rows, "runs": [asdict(r) for r in runs]}
    json_path = atomic_write(output_dir / "study.json", lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1) + "\n"))
    figure = plot_quality_vs_macs(rows, output_dir / "quality_vs_macs.png", primary)
    return StudyResult(output_dir, rows, md_path, json_path, figure, seconds + time.monotonic() - start)


def study_status(output_dir: str | Path) -> tuple[list["RunState"], StudyResult | None]:
    """Where each run of the study in ``output_dir`` stands; once all are done, the report (written if out of date)."""
    from .study_jobs import PLAN, run_state

    output_dir = Path(output_dir)
    plan = StudyPlan.load(output_dir)
    states = [run_state(spec) for spec in plan.runs(output_dir)]
    if any(state.state != "done" for state in states):
        return states, None
    report = output_dir / "study.json"
    newest = max([(Path(s.spec.folder) / "scores.json").stat().st_mtime for s in states] + [(output_dir / PLAN).stat().st_mtime])
    if report.is_file() and report.stat().st_mtime >= newest:
        rows = json.loads(report.read_text())["rows"]
        return states, StudyResult(output_dir, rows, output_dir / "study.md", report, output_dir / "quality_vs_macs.png", 0.0)
    return states, write_report(output_dir, plan)
