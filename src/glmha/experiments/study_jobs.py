"""Running a study's runs: one after the other in this process, N at once in processes of this
machine (``--jobs``), or as jobs through submitit (``--executor local`` or ``slurm``).

The study folder is the only state the runs share. Each run folder
(``runs/<task>/<variant>/seed<k>``) says where its run stands::

    scores.json                  finished: the run is never trained again
    .run-00001.glmha-claim       held by the process training it (host, pid, job id, log)
    failure.json                 why its last attempt failed, and where its log is
    job.json                     the last job submitted for it (executor, job id, log)
    jobs/                        submitit's files of its jobs: pickles, <job id>_0_log.out/.err
    worker.log                   the output of its --jobs process
    checkpoints/, train.log ...  the training run itself (resumed from its last checkpoint)

What a run is (training and scoring one variant, :func:`glmha.experiments.study.execute_run`)
is the study's; this module only decides where and when runs go, and reads where they stand.

A process trains a run only while it holds the run's claim. Claims are numbered files created
exclusively (a hard link that fails if the name exists), so of two processes taking the next
number only one succeeds; the next number may be taken once the newest claim is released or
stale: its process is dead (same host), or its Slurm job has ended, or it is this very job
(requeued by Slurm after a pre-emption). After taking the claim the process looks for
``scores.json`` again, so a run finished meanwhile is not trained twice.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..io.files import OutputExistsError, atomic_write, pid_alive

SCORES = "scores.json"
FAILURE = "failure.json"
JOB = "job.json"
WORKER_LOG = "worker.log"
PLAN = "study_plan.json"
_CLAIM = re.compile(r"\.run-(\d+)\.glmha-claim")
# exit code of a --jobs process that found its run claimed by another process (EX_TEMPFAIL)
HELD_EXIT = 75
EXECUTORS = ("local", "slurm")
# Seconds between looks at the runs in flight, per executor, and at runs other processes train
# (each look at a Slurm job is a call to sacct, which clusters ask to keep rare).
POLL_SECONDS = {"inline": 1.0, "processes": 0.5, "local": 1.0, "slurm": 30.0, "elsewhere": 10.0}
# Slurm states of a job that will still run, or runs (sacct's words; the rest have ended).
_SLURM_WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "CONFIGURING"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ----------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class RunSpec:
    """One run of a study: what to train and where; everything a fresh process or a job needs."""

    task: str
    variant: str
    seed: int
    folder: str
    budget: str
    test_images: int | None
    iterations: int | None
    reference: str | None = None  # the reference run's folder (a ranks=suggest variant reads its model)
    needs_reference: bool = False

    @property
    def label(self) -> str:
        return f"{self.task} {self.variant} seed {self.seed}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        return cls(**json.loads(text))


def cpu_count() -> int:
    """The cores this process may use (a container's or a job's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def write_failure(folder: Path, err: BaseException, log: str | None, job_id: str | None = None) -> None:
    """Record in the run's ``failure.json`` why its attempt failed and where its log is."""
    from ..engine.run_log import one_line

    record = {"error": f"{type(err).__name__}: {one_line(err)}", "log": log, "host": socket.gethostname(), "pid": os.getpid(),
              "job_id": job_id, "when": time.time()}
    atomic_write(folder / FAILURE, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))


# ----------------------------------------------------------------------------- claims
class RunClaimed(RuntimeError):
    """Another live process holds the run."""


def _claims(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CLAIM.fullmatch(p.name))]
    return sorted(found)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def read_claim(folder: Path) -> dict | None:
    """The newest claim's record of a run folder, or None."""
    claims = _claims(Path(folder))
    return _read_json(claims[-1][1]) if claims else None


def claim_is_stale(record: dict | None, executor: str | None = None, job_id: str | None = None) -> bool:
    """Whether a claim may be taken over: its process or job has ended, or it is this job's own (requeued)."""
    if record is None:
        return False  # not readable: treated as held
    if job_id and record.get("job_id") == job_id and record.get("executor") == executor:
        return True
    if record.get("host") == socket.gethostname():
        return not pid_alive(int(record.get("pid", 0)))
    if record.get("executor") == "slurm" and record.get("job_id"):
        return slurm_state(str(record["job_id"])) == "ended"
    return False  # another machine's process, not a Slurm job: cannot tell, so it is respected


def acquire_claim(folder: Path, executor: str = "inline", job_id: str | None = None, log: str | None = None) -> Path:
    """Claim ``folder``'s run for this process, or raise :class:`RunClaimed` naming the live holder."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "executor": executor, "job_id": job_id, "log": log,
              "since": time.time()}
    while True:
        claims = _claims(folder)
        number = claims[-1][0] if claims else 0
        if claims:
            holder = _read_json(claims[-1][1])
            if holder is None and not claims[-1][1].exists():
                continue  # released while we looked
            if not claim_is_stale(holder, executor, job_id):
                raise RunClaimed(f"{folder} is being trained by {describe_holder(holder)}")
        path = folder / f".run-{number + 1:05d}.glmha-claim"
        try:
            atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record) + "\n"), replace=False)
        except OutputExistsError:
            continue  # another process took this number first: look at its claim
        for _, old in claims:
            old.unlink(missing_ok=True)
        return path


def release_claim(path: Path) -> None:
    """Give a run back (its claim file goes)."""
    path.unlink(missing_ok=True)


def describe_holder(record: dict | None) -> str:
    if record is None:
        return "another process (its claim is being written)"
    job = f", {record.get('executor')} job {record['job_id']}" if record.get("job_id") else ""
    return f"process {record.get('pid')} on {record.get('host')}{job}"


# ----------------------------------------------------------------------------- where a run stands
def slurm_state(job_id: str) -> str:
    """``pending``, ``running``, ``ended`` or ``unknown`` (no sacct, or Slurm does not know the job)."""
    try:
        output = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True,
                                timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = output.split()
    if not words:
        return "unknown"
    state = words[0].rstrip("+").upper()  # "CANCELLED by 1234", "RUNNING+"
    return "pending" if state in _SLURM_WAITING else "running" if state in _SLURM_RUNNING else "ended"


def job_state(record: dict) -> str:
    """The state of a job of ``job.json``: ``pending``, ``running``, ``ended`` or ``unknown``."""
    if record.get("executor") == "slurm":
        return slurm_state(str(record.get("job_id")))
    if record.get("host") != socket.gethostname():
        return "unknown"  # a local job of another machine
    try:
        return "running" if pid_alive(int(record.get("job_id"))) else "ended"  # a local job's id is its controller's pid
    except (TypeError, ValueError):
        return "unknown"


@dataclass
class RunState:
    """Where a run stands: done, running, queued, failed or missing; why, and its log."""

    spec: RunSpec
    state: str
    detail: str = ""
    log: str | None = None


def _latest_checkpoint_iteration(folder: Path) -> int | None:
    record = _read_json(folder / "checkpoints" / "latest.json")
    return int(record["iteration"]) if record and isinstance(record.get("iteration"), int) else None


def run_state(spec: RunSpec) -> RunState:
    """Read a run's state from its folder (and, for Slurm jobs, from sacct)."""
    folder = Path(spec.folder)
    train_log = str(folder / "train.log")
    if (folder / SCORES).is_file():
        return RunState(spec, "done", "", train_log)
    claim = read_claim(folder)
    if claim is not None and not claim_is_stale(claim):
        return RunState(spec, "running", describe_holder(claim), claim.get("log") or train_log)
    if claim is None and _claims(folder):
        return RunState(spec, "running", describe_holder(None), train_log)
    job = _read_json(folder / JOB)
    failure = _read_json(folder / FAILURE)
    failed_after_job = failure is not None and job is not None and failure.get("when", 0) >= job.get("submitted", 0)
    if job is not None and not failed_after_job:
        state = job_state(job)
        if state in ("pending", "running"):
            return RunState(spec, "queued", f"{job['executor']} job {job['job_id']} {state}", job.get("log"))
        if state == "unknown" and claim is None:
            return RunState(spec, "queued", f"{job['executor']} job {job['job_id']} (its state cannot be read here)", job.get("log"))
    resumes = _latest_checkpoint_iteration(folder)
    resume_note = f"; resumes from iteration {resumes}" if resumes else ""
    if failure is not None:
        return RunState(spec, "failed", failure.get("error", "failed") + resume_note, failure.get("log") or train_log)
    if claim is not None:
        return RunState(spec, "failed", f"{describe_holder(claim)} ended before finishing (killed or pre-empted){resume_note}",
                        claim.get("log") or train_log)
    if job is not None:
        return RunState(spec, "failed", f"{job['executor']} job {job['job_id']} ended before finishing{resume_note}", job.get("log"))
    if resumes:
        return RunState(spec, "missing", f"stopped at iteration {resumes}; resumes from there", train_log)
    return RunState(spec, "missing", "", None)


# ----------------------------------------------------------------------------- executors
@dataclass
class Outcome:
    """How a submitted run ended: ``done``, ``held`` (another process trains it) or ``failed`` (with why)."""

    status: str
    message: str = ""
    log: str | None = None


def _failure_message(folder: Path, fallback: str) -> tuple[str, str | None]:
    failure = _read_json(folder / FAILURE)
    return (failure["error"], failure.get("log")) if failure and failure.get("error") else (fallback, None)


# What trains one run: (spec, device, threads, progress, executor, job id, log) -> "done" or "held".
RunFunction = Callable[..., str]


class InlineExecutor:
    """Runs in this process, one after the other (with progress bars)."""

    name = "inline"

    def __init__(self, run: RunFunction, device: str, threads: int | None, progress: bool):
        self.capacity, self.run, self.device, self.threads, self.progress = 1, run, device, threads, progress

    def device_of(self, slot: int) -> str:
        return self.device

    def submit(self, spec: RunSpec, slot: int, after: str | None = None) -> Outcome:
        from ..engine.run_log import one_line

        try:
            status = self.run(spec, self.device, self.threads, self.progress, "inline")
        except Exception as err:
            return Outcome("failed", f"{type(err).__name__}: {one_line(err)}", str(Path(spec.folder) / "train.log"))
        return Outcome(status)

    def poll(self, handle: Outcome) -> Outcome | None:
        return handle

    def dependency(self, handle: Any, state: RunState) -> str | None:
        return None


class ProcessExecutor:
    """Each run in a fresh Python process of this machine, with its own device and ``threads`` threads.

    A fresh process per run (not a pool's reused worker) starts every run from the same state as
    a sequential study's and frees its GPU memory at the end; the thread variables are set before
    the BLAS libraries load, which ``torch.set_num_threads`` in a running process cannot do.
    """

    name = "processes"

    def __init__(self, command: Sequence[str], jobs: int, devices: Sequence[str], threads: int):
        """``command``: what starts a process training one run; ``--device``, ``--threads``, ``--log`` and the spec follow."""
        self.command, self.capacity, self.devices, self.threads = list(command), jobs, list(devices), threads

    def device_of(self, slot: int) -> str:
        return self.devices[slot % len(self.devices)]

    def submit(self, spec: RunSpec, slot: int, after: str | None = None) -> tuple[subprocess.Popen, Path]:
        log = Path(spec.folder) / WORKER_LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **{name: str(self.threads) for name in _THREAD_VARIABLES})
        command = [*self.command, "--device", self.device_of(slot), "--threads", str(self.threads), "--log", str(log), spec.to_json()]
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {spec.label} on {self.device_of(slot)}\n")
            handle.flush()
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        return process, log

    def log_of(self, handle: tuple[subprocess.Popen, Path]) -> str:
        return str(handle[1])

    def poll(self, handle: tuple[subprocess.Popen, Path]) -> Outcome | None:
        process, log = handle
        code = process.poll()
        if code is None:
            return None
        if code == 0:
            return Outcome("done")
        if code == HELD_EXIT:
            return Outcome("held")
        message, _ = _failure_message(log.parent, _last_line(log) or "no message")
        return Outcome("failed", f"exit code {code}: {message}", str(log))

    def dependency(self, handle: Any, state: RunState) -> str | None:
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


@dataclass
class ClusterOptions:
    """What each Slurm job asks for."""

    partition: str | None = None
    account: str | None = None
    gpus_per_job: int = 1
    time_limit: int = 240  # minutes
    extra: dict[str, str] = field(default_factory=dict)  # more #SBATCH options, e.g. {"qos": "high"}


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ImportError("--executor needs submitit, which is not installed: pip install 'glmha[cluster]'") from None
    return submitit


class SubmititExecutor:
    """Each run as a submitit job: ``local`` (a process of this machine) or ``slurm``; its files in ``<run>/jobs``."""

    def __init__(self, job: Callable[[RunSpec, str, int | None, str], Callable[[], str]], kind: str, jobs: int | None,
                 devices: Sequence[str], threads: int | None, cluster: ClusterOptions):
        """``job(spec, device, threads, executor)``: the picklable callable a job runs, returning "done" or "held"."""
        if kind not in EXECUTORS:
            raise ValueError(f"unknown executor {kind!r}; available: {list(EXECUTORS)}")
        self.submitit = import_submitit()
        self.job, self.name, self.capacity, self.devices, self.threads, self.cluster = job, kind, jobs, list(devices), threads, cluster

    def device_of(self, slot: int) -> str:
        if self.name == "slurm":
            return "cuda" if self.cluster.gpus_per_job else "cpu"
        return self.devices[slot % len(self.devices)]

    def _executor(self, spec: RunSpec, slot: int, after: str | None) -> tuple[Any, str]:
        folder = Path(spec.folder) / "jobs"
        # the thread variables must be set before Python starts, as in --jobs processes
        setup = [f"export {name}={self.threads}" for name in _THREAD_VARIABLES] if self.threads else []
        name = f"glmha-{spec.task}-{spec.variant}-s{spec.seed}"
        if self.name == "local":
            executor = self.submitit.LocalExecutor(folder)
            device = self.device_of(slot)
            gpu = device.split(":")[1] if device.startswith("cuda:") else "0" if device == "cuda" else None
            # submitit's local jobs see only the GPUs they are given: the run's GPU becomes its cuda:0
            executor.update_parameters(timeout_min=self.cluster.time_limit, setup=setup, gpus_per_node=1 if gpu else 0,
                                       visible_gpus=[int(gpu)] if gpu else ())
            return executor, "cuda" if gpu else device
        executor = self.submitit.SlurmExecutor(folder)
        extra = dict(self.cluster.extra)
        if after:
            extra.update({"dependency": f"afterok:{after}", "kill-on-invalid-dep": "yes"})
        parameters: dict[str, Any] = {"job_name": name, "time": self.cluster.time_limit, "setup": setup,
                                      "additional_parameters": extra}
        for key, value in (("partition", self.cluster.partition), ("account", self.cluster.account),
                           ("cpus_per_task", self.threads), ("gpus_per_node", self.cluster.gpus_per_job or None)):
            if value is not None:
                parameters[key] = value
        executor.update_parameters(**parameters)
        return executor, self.device_of(slot)

    def submit(self, spec: RunSpec, slot: int, after: str | None = None) -> Any:
        executor, device = self._executor(spec, slot, after)
        job = executor.submit(self.job(spec, device, self.threads, self.name))
        record = {"executor": self.name, "job_id": str(job.job_id), "host": socket.gethostname(), "submitted": time.time(),
                  "log": str(job.paths.stderr), "stdout": str(job.paths.stdout), "after": after}
        atomic_write(Path(spec.folder) / JOB, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
        return job

    def log_of(self, job: Any) -> str:
        return str(job.paths.stderr)

    def poll(self, job: Any) -> Outcome | None:
        if not job.done():
            return None
        log = str(job.paths.stderr)
        if not job.paths.result_pickle.exists():  # killed, pre-empted, out of time or memory
            message, _ = _failure_message(Path(job.paths.folder).parent, f"job {job.job_id} ended before finishing (state {job.state})")
            return Outcome("failed", message, log)
        if job.exception() is not None:
            message, _ = _failure_message(Path(job.paths.folder).parent, f"job {job.job_id} failed")
            return Outcome("failed", message, log)
        return Outcome(job.result())

    def dependency(self, handle: Any, state: RunState) -> str | None:
        """The Slurm job a dependent run may wait for (``afterok``), when the reference run is in one."""
        if self.name != "slurm":
            return None
        if handle is not None:
            return str(handle.job_id)
        record = _read_json(Path(state.spec.folder) / JOB)
        if state.state == "queued" and record and record.get("executor") == "slurm":
            return str(record["job_id"])
        claim = read_claim(Path(state.spec.folder))
        if state.state == "running" and claim and claim.get("executor") == "slurm" and claim.get("job_id"):
            return str(claim["job_id"])
        return None


# ----------------------------------------------------------------------------- the schedule
@dataclass
class JobsOutcome:
    """What a call did: runs done, failed (label -> line), left running (with --no-wait) or waiting for a reference."""

    done: list[RunSpec]
    failed: dict[str, str]
    submitted: list[str]
    pending: list[RunState]


def run_jobs(specs: Sequence[RunSpec], executor: Any, wait: bool = True, log: Callable[[str], None] = print) -> JobsOutcome:
    """Bring every run of ``specs`` to an end: submit what is missing or failed, wait for what others train.

    A run needing its reference run starts once that is done (with ``wait=False`` on Slurm it is
    queued behind the reference's job instead). A run fails at most once per call: failures are
    reported and the other runs go on. ``specs`` lists references before their dependents.
    """
    total = len(specs)
    number = {spec: i + 1 for i, spec in enumerate(specs)}
    reference_of = {spec: next((s for s in specs if s.folder == spec.reference), None) for spec in specs if spec.needs_reference}
    in_flight: dict[RunSpec, tuple[Any, int]] = {}
    started: dict[RunSpec, float] = {}
    free_slots = list(range(executor.capacity)) if executor.capacity else None
    attempted: set[RunSpec] = set()
    announced: set[RunSpec] = set()  # runs other processes train: looked at every POLL_SECONDS["elsewhere"]
    last_look: dict[RunSpec, float] = {}
    done: list[RunSpec] = []
    failed: dict[RunSpec, str] = {}
    submitted: list[str] = []

    def say(spec: RunSpec, text: str) -> None:
        log(f"[{number[spec]}/{total}] {spec.label}: {text}")

    def fail(spec: RunSpec, text: str, where: str | None) -> None:
        failed[spec] = f"{spec.label}: {text}" + (f" (log: {where})" if where else "")
        say(spec, f"failed: {text}" + (f" (log: {where})" if where else ""))

    while True:
        progressed = False
        for spec, (handle, slot) in list(in_flight.items()):
            outcome = executor.poll(handle)
            if outcome is None:
                continue
            progressed = True
            del in_flight[spec]
            if free_slots is not None:
                free_slots.append(slot)
                free_slots.sort()
            if outcome.status == "done":
                done.append(spec)
                if executor.name != "inline":
                    say(spec, f"finished ({(time.monotonic() - started[spec]) / 60:.1f} min)")
            elif outcome.status == "held":
                say(spec, f"trained by {describe_holder(read_claim(Path(spec.folder)))} meanwhile; waiting for it")
                announced.add(spec)
            else:
                fail(spec, outcome.message, outcome.log)
        states: dict[RunSpec, RunState] = {}
        for spec in specs:
            if spec in done or spec in failed or spec in in_flight:
                continue
            if spec in announced and time.monotonic() - last_look.get(spec, 0.0) < POLL_SECONDS["elsewhere"]:
                continue
            last_look[spec] = time.monotonic()
            state = states[spec] = run_state(spec)
            if state.state == "done":
                done.append(spec)
                say(spec, "done" if spec not in announced else "finished by another process")
                progressed = True
                continue
            if state.state in ("running", "queued"):
                if spec not in announced:
                    say(spec, f"{state.state} elsewhere: {state.detail}" + ("" if not wait else "; waiting for it"))
                    announced.add(spec)
                continue
            if spec in attempted:  # trained elsewhere meanwhile, and that failed too
                fail(spec, state.detail or state.state, state.log)
                continue
            after = None
            reference = reference_of.get(spec)
            if reference is not None and reference not in done:
                if reference in failed:
                    fail(spec, f"its reference run ({reference.label}) failed", None)
                    continue
                if wait:
                    continue
                after = executor.dependency(in_flight.get(reference, (None,))[0], states.get(reference) or run_state(reference))
                if after is None:
                    continue  # reported below as waiting for its reference
            if free_slots is not None and not free_slots:
                continue
            slot = free_slots.pop(0) if free_slots is not None else 0
            attempted.add(spec)
            (Path(spec.folder) / FAILURE).unlink(missing_ok=True)
            resumes = _latest_checkpoint_iteration(Path(spec.folder))
            start = f"resuming from iteration {resumes}" if resumes else "training"
            if executor.name != "inline":
                start += f" on {executor.device_of(slot)}"
            started[spec] = time.monotonic()
            if executor.name == "inline":
                say(spec, start)  # said before: the run trains within submit
            handle = executor.submit(spec, slot, after)
            in_flight[spec] = (handle, slot)
            if hasattr(handle, "job_id"):  # a submitit job
                submitted.append(str(handle.job_id))
                start += f": {executor.name} job {handle.job_id}" + (f" after job {after}" if after else "")
            if executor.name != "inline":
                say(spec, f"{start} (log: {executor.log_of(handle)})")
            progressed = True
        left = [s for s in specs if s not in done and s not in failed]
        if not left or not wait:
            pending = [RunState(s, "queued" if s in in_flight else run_state(s).state) for s in left]
            return JobsOutcome(done, {s.label: line for s, line in failed.items()}, submitted, pending)
        if not progressed:
            time.sleep(POLL_SECONDS[executor.name] if in_flight else POLL_SECONDS["elsewhere"])
