"""benchmarks/gpu_check.py end to end on the CPU (--quick): the CUDA tests run on the CPU
(GLMHA_TEST_DEVICE=cpu), every benchmark job runs, the report has every section, and a failing
check makes the script exit non-zero."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def gpu_check(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GLMHA_TEST_DEVICE"}
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    run = gpu_check("--output", str(out))
    return run, out


@pytest.mark.slow
def test_quick_cpu_run_has_every_section(quick_run):
    run, out = quick_run
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["passed"] and report["device"] == "cpu" and report["quick"]
    assert report["machine"]["description"] and report["machine"]["versions"]["torch"]
    # the CUDA tests ran on the CPU: passed, none failed, each case listed
    tests = report["tests"]
    assert tests["returncode"] == 0 and tests["counts"]["passed"] >= 20 and not tests["counts"]["failed"]
    assert any("test_precision.py::" in c["test"] and c["outcome"] == "passed" for c in tests["cases"])
    assert (out / "cuda-tests.xml").is_file()
    # every benchmark job: Restormer, MST++, MST-L; forward, train, compiled train; with numbers
    bench = report["benchmarks"]
    jobs = {j["job"]: j for j in bench["jobs"]}
    assert not bench["failed"] and not bench["skipped"]
    for model in ("restormer@3x32x32", "mst_plus_plus@3x20x28", "mst_l@28x16x16"):
        forward, train, compiled = (jobs[f"{model}:{kind}"] for kind in ("forward", "train", "train-compiled"))
        assert set(forward["variants"]) == {f"{a} {p}" for a in ("csa", "glmha") for p in ("fp32 eager", "bf16 eager", "bf16 compiled")}
        assert set(train["variants"]) == {f"{a} {p}" for a in ("csa", "glmha") for p in ("fp32 eager", "bf16 eager")}
        assert set(compiled["variants"]) == {"csa fp32 eager", "csa bf16 compiled", "glmha bf16 compiled"}
        for job in (forward, train, compiled):
            assert job["macs"]["glmha"] < job["macs"]["csa"]
            assert all(v["seconds"] > 0 for v in job["variants"].values())
        assert forward["variants"]["glmha bf16 compiled"]["relative_error_vs_fp32"] < 5e-2
        assert compiled["variants"]["csa bf16 compiled"]["first_call_s"] > 0
    assert bench["compile_backend"] == "eager" and any("skipped on cpu --quick" in n for n in report["notes"])
    # the targets are computed (whether met or not: CPU quick sizes say nothing about them)
    assert {t["target"] for t in report["targets"]} == {"a", "b"}
    checks = report["checks"]
    assert len(checks) > 40 and all(c["passed"] is not False for c in checks)
    text = (out / "gpu_check.md").read_text()
    for heading in ("# GPU check", "## CUDA tests", "## Benchmarks", "## Targets", "## All checks"):
        assert heading in text


def test_a_failing_check_fails_the_run(tmp_path):
    run = gpu_check("--output", str(tmp_path), "--sections", "machine", "--fail-check", "machine:device", timeout=120)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not report["passed"] and report["tests"] is None and report["benchmarks"] is None
    (check,) = [c for c in report["checks"] if c["name"] == "machine:device"]
    assert check["passed"] is False and "--fail-check" in check["detail"]
    assert "## Failed checks" in (tmp_path / "gpu_check.md").read_text()
    assert "FAILED: machine:device" in run.stdout


def test_cuda_asked_without_cuda_is_an_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = subprocess.run([sys.executable, str(SCRIPT), "--output", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "PyTorch sees no CUDA device" in run.stderr
