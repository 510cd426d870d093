"""glmha study's runs elsewhere than in its own process: --jobs, submitit's local executor, Slurm, --status, claims.

The commands of docs/studies.md are run as printed, with a tiny study added (later options win)
and the GPUs replaced by the CPU; Slurm is played by stand-ins for sbatch, srun and sacct that
run each job on this machine. Every study trains with one thread per run, so that its numbers
can be compared to the last digit with those of the same study trained in this process.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glmha.cli import main
from glmha.experiments import study_jobs
from glmha.experiments.study import StudyPlan
from glmha.experiments.study_jobs import RunClaimed, acquire_claim, read_claim, release_claim

DOCS = Path(__file__).resolve().parents[2] / "docs" / "studies.md"
ITERATIONS = 20  # a checkpoint every 2 iterations: long enough to kill a run in the middle
SMALL = ["--budget", "tiny", "--tasks", "deraining", "--variants", "csa", "glmha:ranks=suggest", "--seeds", "1",
         "--test-images", "1", "--iterations", str(ITERATIONS), "--threads", "1"]
RUNS = ["csa", "glmha__ranks=suggest"]  # the run folders' names
# --jobs is shown with one more variant, which trains beside CSA while the per-layer ranks wait for it
THREE = ["--variants", "csa", "glmha", "glmha:ranks=suggest"]


def doc_commands(section: str) -> list[list[str]]:
    """The ``glmha study`` command lines of a section of docs/studies.md."""
    text = DOCS.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.startswith("glmha study")]


def on_this_machine(command: list[str], output: Path) -> list[str]:
    """A docs command as the tests run it: the study folder in ``output``, the CPU for GPUs, a tiny study added."""
    args = command[2:]
    for index, arg in enumerate(args):
        if re.fullmatch(r"cuda(:\d+)?", arg):
            args[index] = "cpu"
        if index and args[index - 1] in ("--output", "--status"):
            args[index] = str(output)
        if index and args[index - 1] == "--gpus-per-job":
            args[index] = "0"
    return ["study", *args] + ([] if "--status" in args else SMALL)


def numbers(folder: Path, variants: tuple[str, ...] = ("csa", "glmha:ranks=suggest")) -> tuple[list, list]:
    """The report's rows and runs of ``variants``, without the training times."""
    payload = json.loads((folder / "study.json").read_text())
    runs = [{k: v for k, v in run.items() if k != "train_seconds"} for run in payload["runs"] if run["variant"] in variants]
    return [row for row in payload["rows"] if row["variant"] in variants], runs


def starts(run: Path) -> int:
    """How many times training started in a run folder."""
    return (run / "train.log").read_text().count("==== glmha train started")


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The tiny study trained in this process, one run after the other."""
    out = tmp_path_factory.mktemp("sequential")
    assert main(["study", *SMALL, *THREE, "--output", str(out)]) == 0
    return out


@pytest.fixture
def quick_polls(monkeypatch):
    for name in ("local", "slurm", "elsewhere"):
        monkeypatch.setitem(study_jobs.POLL_SECONDS, name, 0.2)


# ----------------------------------------------------------------------------- --jobs
def test_docs_jobs_command_gives_the_sequential_numbers(sequential, tmp_path, capsys):
    [command] = doc_commands("One machine with 8 GPUs")
    out = tmp_path / "study"
    assert main(on_this_machine(command, out) + THREE) == 0
    all_three = ("csa", "glmha", "glmha:ranks=suggest")
    assert numbers(out, all_three) == numbers(sequential, all_three) and len(numbers(out, all_three)[1]) == 3
    lines = capsys.readouterr().out.splitlines()
    # csa and glmha train at once; the per-layer ranks start only once the CSA run of their seed is done
    started = [i for i, line in enumerate(lines) if ": training on cpu" in line]
    assert len(started) == 3 and started[1] < next(i for i, line in enumerate(lines) if "csa seed 0: finished" in line)
    assert next(i for i, line in enumerate(lines) if "csa seed 0: finished" in line) < started[2]
    assert all((out / "runs" / "deraining" / run / "seed0" / "worker.log").is_file() for run in RUNS + ["glmha"])


def test_a_failing_run_is_reported_and_the_others_go_on(tmp_path, capsys):
    out = tmp_path / "study"
    broken = out / "runs" / "deraining" / "glmha" / "seed0"
    (broken / "checkpoints").mkdir(parents=True)
    (broken / ".glmha-folder.json").write_text('{"kind": "train"}')
    (broken / "checkpoints" / "latest.json").write_text("not JSON")  # the trainer refuses to resume from it
    args = ["study", "--budget", "tiny", "--tasks", "deraining", "--variants", "csa", "glmha", "--seeds", "1", "--test-images", "1",
            "--jobs", "2", "--threads", "1", "--output", str(out)]
    assert main(args) == 1
    captured = capsys.readouterr()
    [failure] = [line for line in captured.out.splitlines() if "failed" in line]
    assert failure.startswith("[2/2] deraining glmha seed 0: failed: exit code 1: CheckpointError: ")
    assert "latest.json is damaged" in failure and failure.endswith(f"(log: {broken / 'worker.log'})")
    assert "1 of 2 runs failed" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert (out / "runs" / "deraining" / "csa" / "seed0" / "scores.json").is_file()  # the other run went on
    assert not (out / "study.json").exists()  # the report waits for every run


# ----------------------------------------------------------------------------- submitit's local executor
def test_docs_local_executor_resumes_a_killed_job(sequential, tmp_path, capsys, quick_polls):
    [command] = doc_commands("On one machine without Slurm: `--executor local`")
    out = tmp_path / "study"
    submit = on_this_machine(command, out)
    assert "--no-wait" in submit
    assert main(submit) == 0
    run = out / "runs" / "deraining" / "csa" / "seed0"
    deadline = time.monotonic() + 120
    while True:  # kill the CSA run's job once it has a checkpoint and before it ends
        latest = run / "checkpoints" / "latest.json"
        claim = read_claim(run)
        if claim and latest.is_file() and json.loads(latest.read_text())["iteration"] < ITERATIONS:
            os.kill(claim["pid"], signal.SIGKILL)
            break
        assert not (run / "scores.json").exists() and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    capsys.readouterr()
    deadline = time.monotonic() + 60
    while True:  # submitit's controller notices its task's death and ends the job
        assert main(["study", "--status", str(out)]) == 0
        status = capsys.readouterr().out
        csa_line = next(line for line in status.splitlines() if line.startswith("deraining  csa "))
        if " failed " in csa_line or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "ended before finishing (killed or pre-empted); resumes from iteration" in csa_line

    assert main([arg for arg in submit if arg != "--no-wait"]) == 0
    assert "csa seed 0: resuming from iteration" in capsys.readouterr().out
    assert starts(run) == 2 and "resuming from" in (run / "train.log").read_text()
    assert numbers(out) == numbers(sequential)  # the resumed run computed what the uninterrupted one did


# ----------------------------------------------------------------------------- Slurm
FAKE_SLURM = '''
"""sbatch, srun and sacct for the tests: each job runs on this machine; its state is kept in $FAKE_SLURM_DIR."""
import json, os, re, socket, subprocess, sys, time
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM_DIR"])


def state_of(job):
    if (STATE / f"{job}.exit").exists():
        return {"0": "COMPLETED", "cancelled": "CANCELLED"}.get((STATE / f"{job}.exit").read_text(), "FAILED")
    return "RUNNING" if (STATE / f"{job}.started").exists() else "PENDING"


def sbatch(script):
    text = Path(script).read_text()
    counter = STATE / "counter"
    job = int(counter.read_text()) + 1 if counter.exists() else 1001
    counter.write_text(str(job))
    (STATE / f"{job}.json").write_text(json.dumps(dict(re.findall(r"^#SBATCH --([\\w-]+)=?(.*)$", text, flags=re.M))))
    (STATE / f"{job}.sh").write_text(text)
    subprocess.Popen([sys.executable, __file__, "run", str(job)], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"Submitted batch job {job}")


def run(job):
    dependency = json.loads((STATE / f"{job}.json").read_text()).get("dependency")
    if dependency:  # afterok:<job>
        other = dependency.split(":")[1]
        while state_of(other) in ("PENDING", "RUNNING"):
            time.sleep(0.1)
        if state_of(other) != "COMPLETED":
            (STATE / f"{job}.exit").write_text("cancelled")
            return
    (STATE / f"{job}.started").touch()
    env = dict(os.environ, SLURM_JOB_ID=job, SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0",
               SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_JOB_NODELIST=socket.gethostname())
    code = subprocess.call(["bash", str(STATE / f"{job}.sh")], env=env)
    (STATE / f"{job}.exit").write_text(str(code))


def srun(args):
    files = {}
    while args[0].startswith("--"):
        if args[0] in ("--output", "--error"):
            files[args[0]] = args[1].replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", "0")
            args = args[2:]
        else:
            args = args[1:]
    with open(files["--output"], "a") as out, open(files["--error"], "a") as err:
        return subprocess.call(args, stdout=out, stderr=err)


def sacct(args):
    fields, jobs, header = ["JobID", "State", "NodeList"], [], True
    for flag, value in zip(args, args[1:] + [""]):
        if flag == "-o":
            fields = value.split(",")
        elif flag == "-j":
            jobs.append(value)
    header = "-n" not in args
    if header:
        print("|".join(fields))
    for job in jobs:
        if (STATE / f"{job}.json").exists():
            values = {"JobID": job, "State": state_of(job), "NodeList": socket.gethostname()}
            print("|".join(values[field] for field in fields))


tool = Path(sys.argv[0]).name
if sys.argv[1:2] == ["run"]:  # sbatch's job in the background (started through the sbatch link)
    run(sys.argv[2])
elif tool == "sbatch":
    sbatch(sys.argv[-1])
elif tool == "srun":
    sys.exit(srun(sys.argv[1:]))
elif tool == "sacct":
    sacct(sys.argv[1:])
'''


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch, srun and sacct on the PATH; the folder where they keep each job's #SBATCH options and state."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    script = bin_dir / "fake_slurm.py"
    script.write_text(f"#!{sys.executable}\n{FAKE_SLURM}")
    for tool in ("sbatch", "srun", "sacct"):
        (bin_dir / tool).symlink_to(script)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    return state


def test_docs_slurm_commands(sequential, tmp_path, capsys, fake_slurm, quick_polls):
    submit, status, wait = (on_this_machine(command, tmp_path / "study") for command in doc_commands("A Slurm cluster"))
    out = tmp_path / "study"
    assert main(submit) == 0
    submitted = capsys.readouterr().out
    assert "2 job(s) submitted (1001 1002)" in submitted and "--status" in submitted
    options = {job: json.loads((fake_slurm / f"{job}.json").read_text()) for job in (1001, 1002)}
    for job in options.values():
        assert (job["partition"], job["time"], job["qos"], job["cpus-per-task"]) == ("gpu", "60", "normal", "1")
        assert "gpus-per-node" not in job  # --gpus-per-job 0: the CPU
    assert options[1001]["job-name"] == "glmha-deraining-csa-s0"
    # the per-layer ranks' job waits for the CSA job of its seed, and goes if that one fails
    assert (options[1002]["dependency"], options[1002]["kill-on-invalid-dep"]) == ("afterok:1001", "yes")
    assert "dependency" not in options[1001]

    # a second submission to the folder submits nothing: every run is queued or running already
    assert main(submit) == 0
    assert "0 job(s) submitted" in capsys.readouterr().out and (fake_slurm / "counter").read_text() == "1002"

    assert main(status) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["task", "variant", "seed", "state", "detail", "log"]
    assert re.search(r"^deraining  csa .* (queued|running|done) ", table, flags=re.M)

    assert main(wait) == 0
    assert (fake_slurm / "counter").read_text() == "1002"  # nothing submitted again
    runs = [out / "runs" / "deraining" / run / "seed0" for run in RUNS]
    assert [starts(run) for run in runs] == [1, 1]  # each run trained once
    assert json.loads((runs[1] / "job.json").read_text())["job_id"] == "1002"
    assert numbers(out) == numbers(sequential)


def test_a_failed_slurm_job_is_reported_with_its_log(tmp_path, capsys, fake_slurm, quick_polls):
    out = tmp_path / "study"
    broken = out / "runs" / "deraining" / "csa" / "seed0"
    (broken / "checkpoints").mkdir(parents=True)
    (broken / ".glmha-folder.json").write_text('{"kind": "train"}')
    (broken / "checkpoints" / "latest.json").write_text("not JSON")
    args = ["study", "--executor", "slurm", "--gpus-per-job", "0", "--budget", "tiny", "--tasks", "deraining",
            "--variants", "csa", "glmha:ranks=suggest", "--seeds", "1", "--test-images", "1", "--threads", "1", "--output", str(out)]
    assert main(args) == 1
    printed = capsys.readouterr()
    assert "csa seed 0: failed: CheckpointError: " in printed.out and "1001_0_log.err)" in printed.out
    assert "glmha:ranks=suggest seed 0: failed: its reference run (deraining csa seed 0) failed" in printed.out
    assert "2 of 2 runs failed" in printed.err
    assert main(["study", "--status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "0 done, 0 queued, 0 running, 1 failed, 1 missing" in status  # the second never started
    assert re.search(r"^deraining  csa .* failed +CheckpointError: .*latest.json is damaged.*  runs/deraining/csa/seed0/jobs/1001_0_log.err$",
                     status, flags=re.M)


# ----------------------------------------------------------------------------- --status
def test_status_lists_done_running_queued_failed_and_missing(tmp_path, capsys):
    plan = StudyPlan(["deraining"], ["csa", "glmha"], [0, 1, 2], "tiny", "csa", 1, None, "cpu", 1, 1, "inline")
    plan.save(tmp_path)
    folders = {(spec.variant, spec.seed): Path(spec.folder) for spec in plan.runs(tmp_path)}
    for folder in folders.values():
        folder.mkdir(parents=True)
    (folders["csa", 0] / "scores.json").write_text("{}")
    (folders["glmha", 0] / "failure.json").write_text(json.dumps(
        {"error": "ValueError: boom", "log": str(folders["glmha", 0] / "worker.log"), "when": time.time()}))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    host = socket.gethostname()
    (folders["csa", 1] / ".run-00001.glmha-claim").write_text(json.dumps({"host": host, "pid": ended.pid, "executor": "processes"}))
    (folders["glmha", 1] / ".run-00001.glmha-claim").write_text(json.dumps({"host": host, "pid": os.getpid(), "executor": "inline"}))
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a local job still running
    try:
        (folders["csa", 2] / "job.json").write_text(json.dumps(
            {"executor": "local", "job_id": str(job.pid), "host": host, "submitted": time.time(), "log": "jobs/1_0_log.err"}))
        assert main(["study", "--status", str(tmp_path)]) == 0
    finally:
        job.kill()
        job.wait()
    lines = capsys.readouterr().out.splitlines()
    state = {(line.split()[1], int(line.split()[2])): line.split()[3] for line in lines[1:-1]}
    assert state == {("csa", 0): "done", ("glmha", 0): "failed", ("csa", 1): "failed", ("glmha", 1): "running",
                     ("csa", 2): "queued", ("glmha", 2): "missing"}
    by_run = {(line.split()[1], int(line.split()[2])): line for line in lines[1:-1]}
    assert "ValueError: boom" in by_run["glmha", 0] and by_run["glmha", 0].endswith("runs/deraining/glmha/seed0/worker.log")
    assert f"process {ended.pid} on {host} ended before finishing" in by_run["csa", 1]
    assert f"process {os.getpid()} on {host}" in by_run["glmha", 1]
    assert f"local job {job.pid} running" in by_run["csa", 2]
    assert lines[-1].startswith("1 done, 1 queued, 1 running, 2 failed, 1 missing")
    assert not (tmp_path / "study.json").exists()


def test_status_writes_the_report_once_all_runs_are_done(sequential, tmp_path, capsys):
    out = tmp_path / "study"
    shutil.copytree(sequential, out)
    for name in ("study.json", "study.md", "quality_vs_macs.png"):
        (out / name).unlink()
    assert main(["study", "--status", str(out)]) == 0
    assert "3 done, 0 queued, 0 running, 0 failed, 0 missing" in capsys.readouterr().out
    all_three = ("csa", "glmha", "glmha:ranks=suggest")
    assert numbers(out, all_three) == numbers(sequential, all_three)


def test_status_of_a_folder_without_a_plan(tmp_path, capsys):
    assert main(["study", "--status", str(tmp_path)]) == 1
    assert "no study_plan.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- claims
def test_claims(tmp_path, monkeypatch):
    run = tmp_path / "run"
    claim = acquire_claim(run, "inline")
    with pytest.raises(RunClaimed, match=f"process {os.getpid()} on"):
        acquire_claim(run, "inline")  # held by a live process (this one)
    release_claim(claim)
    release_claim(acquire_claim(run, "inline"))  # free again once released

    def claimed_by(record: dict) -> Path:
        for old in run.glob(".run-*"):
            old.unlink()
        (run / ".run-00007.glmha-claim").write_text(json.dumps(record))
        return run / ".run-00007.glmha-claim"

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    old = claimed_by({"host": socket.gethostname(), "pid": ended.pid, "executor": "processes"})
    taken = acquire_claim(run, "processes")  # its process has ended: taken over, with the next number
    assert taken.name == ".run-00008.glmha-claim" and not old.exists()
    assert read_claim(run)["pid"] == os.getpid()

    claimed_by({"host": "another-machine", "pid": 1, "executor": "local", "job_id": "5"})
    with pytest.raises(RunClaimed, match="process 1 on another-machine, local job 5"):
        acquire_claim(run, "local")  # cannot be checked from here: respected
    claimed_by({"host": "another-machine", "pid": 1, "executor": "slurm", "job_id": "77"})
    monkeypatch.setattr(study_jobs, "slurm_state", lambda job: "running")
    with pytest.raises(RunClaimed):
        acquire_claim(run, "slurm", "78")
    acquire_claim(run, "slurm", "77")  # the same job, requeued after a pre-emption, takes its own claim back
    claimed_by({"host": "another-machine", "pid": 1, "executor": "slurm", "job_id": "77"})
    monkeypatch.setattr(study_jobs, "slurm_state", lambda job: "ended")
    acquire_claim(run, "slurm", "78")  # Slurm says that job has ended


def _race_for_a_claim(run: str, start, end) -> None:
    start.wait()
    try:
        acquire_claim(Path(run), "processes")
        won = True
    except RunClaimed:
        won = False
    end.wait()  # the winner lives until every racer has tried: a dead winner's claim would be stale
    os._exit(0 if won else 3)


def test_of_processes_racing_for_a_stale_claim_one_wins(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (run / ".run-00001.glmha-claim").write_text(json.dumps({"host": socket.gethostname(), "pid": ended.pid}))
    context = multiprocessing.get_context("fork")  # a few lines of Python each: no need to start interpreters
    start, end = context.Barrier(6), context.Barrier(6)
    racers = [context.Process(target=_race_for_a_claim, args=(str(run), start, end)) for _ in range(6)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(30)
    assert sorted(racer.exitcode for racer in racers) == [0, 3, 3, 3, 3, 3]
    assert [p.name for p in run.glob(".run-*")] == [".run-00002.glmha-claim"]


def test_the_docs_name_tests_that_exist():
    named = set(re.findall(r"`(test_\w+)`", DOCS.read_text()))
    assert len(named) >= 5 and named <= {name for name in globals() if name.startswith("test_")}
