#!/usr/bin/env python
"""The GPU check: the CUDA tests and the side-by-side benchmarks in one run, one report.

    python benchmarks/gpu_check.py --output gpu-check                  # on a machine with one GPU
    python benchmarks/gpu_check.py --output /tmp/gc --device cpu --quick   # the same paths on a CPU, tiny sizes

Writes OUTPUT/gpu_check.json and OUTPUT/gpu_check.md (rewritten after every step, so a run
stopped early still leaves what it did), and OUTPUT/cuda-tests.xml (JUnit). Sections:

- ``machine``: the device, the versions (Python, PyTorch, CUDA, cuDNN, glmha, the checkout).
- ``tests``: ``pytest -m cuda tests/cuda`` in a subprocess (with ``GLMHA_TEST_DEVICE=cpu`` on
  the CPU); every test case with its outcome and time, read from the JUnit XML.
- ``benchmarks``: the jobs of ``gpu_bench.py`` (the official Restormer, float32 eager, against
  ours eager fp32 / bf16 autocast / bf16 + glmha.optimize, CSA and GLMHA, forward and training
  step, peak memory; MST++ and MST-L at their paper sizes), and the project's targets computed
  from them (reported: a target not met does not fail the check).

The check fails (exit status 1) when a test fails or errors, or a benchmark job fails one of its
checks (a variant that did not run, a non-finite output, a bf16 output off float32). Jobs that
would start after ``--time-budget`` seconds are skipped and listed as such (not a failure).
On ``--device cpu --quick`` Inductor's code generation is replaced by the capture-only ``eager``
backend (it takes about a minute even for the tiny Restormer on two cores); the report says so.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

import glmha
import gpu_bench
from gpu_report import markdown
from timing import machine_description, reexec_with_mmap_threshold

ROOT = Path(__file__).resolve().parents[1]
TEST_DEVICE_ENV = "GLMHA_TEST_DEVICE"
EAGER_ON_CPU_QUICK = ("skipped on cpu --quick: Inductor code generation (about a minute for the tiny Restormer on two "
                      "cores); the compiled variants are captured with torch.compile's 'eager' backend instead")


def versions(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "glmha": glmha.__version__,
            "cuda_runtime": torch.version.cuda, "platform": platform.platform()}
    try:
        info["git"] = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                     text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                    gpus_visible=torch.cuda.device_count())
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            info["driver"] = None
    return info


def device_check(device: torch.device) -> dict:
    """A small product on the device, in float32 and bf16: the device is there and computes."""
    try:
        a = torch.randn(64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        errors = {str(dtype).replace("torch.", ""): ((a.to(device, dtype) @ a.to(device, dtype)).double().cpu() - a @ a).norm().item()
                  / (a @ a).norm().item() for dtype in (torch.float32, torch.bfloat16)}
        passed = errors["float32"] < 1e-3 and errors["bfloat16"] < 3e-2
        detail = ", ".join(f"{k} relative error {v:.1e}" for k, v in errors.items())
    except Exception as err:  # the device is unusable: say why
        passed, detail = False, f"{type(err).__name__}: {err}"
    return {"name": "machine:device", "passed": passed, "detail": f"{device.type}: 64x64 product, {detail}"}


def read_junit(path: Path) -> list[dict]:
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = {"failure": "failed"}.get(child.tag, child.tag), child.get("message") or ""
                break
        module = case.get("classname", "").replace(".", "/")
        cases.append({"test": f"{module}.py::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message[:500]})
    return cases


def run_tests(device: torch.device, output: Path, timeout: float) -> dict:
    xml = output / "cuda-tests.xml"
    xml.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/cuda", "-p", "no:cacheprovider", "-q",
               f"--junitxml={xml}", "-o", "junit_family=xunit2"]
    env = dict(os.environ, **{TEST_DEVICE_ENV: device.type})
    env.pop("MALLOC_MMAP_THRESHOLD_", None)  # only the benchmarks' memory measurement needs it
    start = time.perf_counter()
    try:
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        returncode, out = run.returncode, run.stdout + run.stderr
    except subprocess.TimeoutExpired as err:
        returncode, out = None, f"timed out after {timeout:.0f} s\n" + (err.stdout or b"").decode(errors="replace")[-4000:]
    lines = [line for line in out.strip().splitlines() if line.strip()]
    if returncode is None:
        lines.append(f"timed out after {timeout:.0f} s (--tests-timeout)")
    cases = read_junit(xml) if xml.exists() else []
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    passed = returncode == 0 and counts["passed"] > 0 and not counts["failed"] and not counts["error"]
    checks = [{"name": f"test:{c['test']}", "passed": None if c["outcome"] == "skipped" else c["outcome"] == "passed",
               "detail": f"{c['outcome']} in {c['seconds']:.2f} s" + (f": {c['message']}" if c["message"] else "")} for c in cases]
    checks.append({"name": "tests:pytest -m cuda", "passed": passed,
                   "detail": f"exit status {returncode}; {lines[-1] if lines else 'no output'}"})
    return {"command": " ".join(["pytest", *command[3:-2]]) + f"  ({TEST_DEVICE_ENV}={device.type})", "returncode": returncode,
            "summary": lines[-1] if lines else "", "counts": counts, "cases": cases, "wall_s": time.perf_counter() - start,
            "output_tail": out[-3000:] if not passed else "", "checks": checks}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True, help="folder for gpu_check.json, gpu_check.md and cuda-tests.xml")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="default: cuda")
    p.add_argument("--quick", action="store_true", help="tiny models and sizes, 1-2 repeats (what CI runs on the CPU)")
    p.add_argument("--sections", nargs="+", choices=["machine", "tests", "benchmarks"], default=["machine", "tests", "benchmarks"],
                   help="what to run (the machine is always described and checked)")
    p.add_argument("--jobs", nargs="+", metavar="TEXT",
                   help="run only the benchmark jobs whose name contains one of these, e.g. restormer@3x512x512 train-compiled")
    p.add_argument("--time-budget", type=float, default=540.0,
                   help="seconds after which no further benchmark job starts (default 540: the whole check fits 10 minutes)")
    p.add_argument("--tests-timeout", type=float, default=300.0, help="seconds the test run may take (default 300)")
    p.add_argument("--fail-check", action="append", default=[], metavar="NAME", help=argparse.SUPPRESS)  # tests the exit status
    return p


class Report:
    def __init__(self, args, device: torch.device, argv: list[str]):
        self.args, self.started = args, time.perf_counter()
        self.data = {"command": "python benchmarks/gpu_check.py " + " ".join(argv), "device": device.type, "quick": args.quick,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "machine": {"description": machine_description(device, torch.get_num_threads()), "versions": versions(device)},
                     "notes": [], "tests": None, "benchmarks": None, "targets": [], "checks": []}

    def add_checks(self, checks: list[dict]) -> None:
        for check in checks:
            if check["name"] in self.args.fail_check:
                check.update(passed=False, detail=f"failed by --fail-check (injected); measured: {check['detail']}")
            self.data["checks"].append(check)

    def failed(self) -> list[str]:
        return [c["name"] for c in self.data["checks"] if c["passed"] is False]

    def write(self) -> None:
        self.data["wall_s"] = time.perf_counter() - self.started
        self.data["passed"] = not self.failed()
        self.args.output.mkdir(parents=True, exist_ok=True)
        (self.args.output / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        (self.args.output / "gpu_check.md").write_text(markdown(self.data) + "\n")


def run_benchmarks(report: Report, device: torch.device, deadline: float) -> None:
    quick = report.args.quick
    backend = "eager" if device.type == "cpu" and quick else "inductor"
    if device.type == "cpu" and quick:
        torch.set_num_threads(1)  # tiny tensors: one thread is faster, and steadier on a shared CPU
        report.data["notes"].append("cpu --quick: one thread")
    options = gpu_bench.Options(device=device, warmup=1 if quick else 3, repeats=2 if quick else 10,
                                train_warmup=1 if quick else 2, train_repeats=1 if quick else 5, compile_backend=backend)
    if backend == "eager":
        report.data["notes"].append(EAGER_ON_CPU_QUICK)
    section = report.data["benchmarks"] = {"compile_backend": backend, "warmup": options.warmup, "repeats": options.repeats,
                                           "train_warmup": options.train_warmup, "train_repeats": options.train_repeats,
                                           "jobs": [], "skipped": [], "failed": []}
    jobs = [j for j in gpu_bench.plan(quick) if not report.args.jobs or any(t in j.name for t in report.args.jobs)]
    for job in jobs:
        needs = 0 if quick else job.FULL_SIZE_SECONDS[job.kind]
        if deadline - time.perf_counter() < needs:
            reason = f"time budget: {max(0, deadline - time.perf_counter()):.0f} s of {report.args.time_budget:.0f} s left, the job may need {needs} s"
            section["skipped"].append({"job": job.name, "reason": reason})
            print(f"[gpu_check] skipped {job.name}: {reason}", flush=True)
            continue
        print(f"[gpu_check] {job.name} ...", flush=True)
        try:
            result = gpu_bench.run_job(job, options)
        except Exception as err:  # one job's failure (an out-of-memory error, a compile error) is reported, the rest run
            section["failed"].append({"job": job.name, "error": f"{type(err).__name__}: {err}"[:2000]})
            report.add_checks([{"name": f"{job.name}:ran", "passed": False, "detail": f"{type(err).__name__}: {str(err)[:300]}"}])
        else:
            section["jobs"].append(result)
            report.add_checks(result.pop("checks"))
            print(f"[gpu_check] {job.name}: {result['wall_s']:.1f} s", flush=True)
        torch._dynamo.reset()  # the next job compiles other sizes: drop this job's graphs and their memory
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        report.data["targets"] = gpu_bench.targets(section["jobs"], quick)
        report.write()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but PyTorch sees no CUDA device (use --device cpu for a dry run)", file=sys.stderr)
        return 2
    if device.type == "cpu" and "benchmarks" in args.sections and __name__ == "__main__":
        reexec_with_mmap_threshold()  # honest CPU peak memory (timing.py)
    report = Report(args, device, argv)
    deadline = report.started + args.time_budget
    print(f"[gpu_check] {report.data['machine']['description']}", flush=True)
    report.add_checks([device_check(device)])
    report.write()
    if "tests" in args.sections:
        print("[gpu_check] pytest -m cuda tests/cuda ...", flush=True)
        tests = run_tests(device, args.output, args.tests_timeout)
        report.add_checks(tests.pop("checks"))
        report.data["tests"] = tests
        print(f"[gpu_check] tests: {tests['summary']} ({tests['wall_s']:.1f} s)", flush=True)
        report.write()
    if "benchmarks" in args.sections:
        run_benchmarks(report, device, deadline)
    report.write()
    print(markdown(report.data, tests_table=False), flush=True)
    failed = report.failed()
    print(f"[gpu_check] {'FAILED: ' + ', '.join(failed) if failed else 'passed'}; wrote {args.output / 'gpu_check.json'} "
          f"and gpu_check.md in {report.data['wall_s']:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
