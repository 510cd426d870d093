"""The Markdown report of ``benchmarks/gpu_check.py`` (its JSON holds the same numbers and more)."""
from __future__ import annotations

from bench_report import fmt_bytes, fmt_s

ANCHOR = "csa fp32 eager"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows), ""]


def _result(passed: bool | None) -> str:
    return {True: "pass", False: "**FAIL**", None: "skipped"}[passed]


def job_table(job: dict) -> list[str]:
    anchor = job["variants"].get(ANCHOR, {}).get("seconds")
    rows = []
    for key, v in job["variants"].items():
        attention = key.split()[0]
        error = v.get("relative_error_vs_fp32")
        rows.append([key + (" (official)" if key == ANCHOR else ""), f"{job['macs'][attention] / 1e9:.3f}",
                     f"{job['params'][attention] / 1e6:.3f} M", fmt_s(v["seconds"]),
                     f"{anchor / v['seconds']:.2f}x" if anchor and v["seconds"] else "-", fmt_bytes(v.get("peak_bytes")),
                     fmt_s(v.get("first_call_s")), "-" if error is None else f"{error:.1e}"])
    title = f"**{job['model']} {job['input']}, {job['kind']}**" + (f" (constructor {job['kwargs']})" if job["kwargs"] else "")
    head = ["variant", "GMACs", "params", "median", "speed vs official", "peak memory", "first call (compile)", "rel. error vs fp32"]
    return [title + f": {job['wall_s']:.1f} s", "", *_table(head, rows)]


def target_lines(targets: list[dict]) -> list[str]:
    lines = []
    a = [t for t in targets if t["target"] == "a"]
    if a:
        lines += ["(a) GLMHA's time saving against CSA, as a share of its MAC saving (want >= 0.8):", ""]
        lines += _table(["job", "path", "MAC saving", "time saving", "ratio", "met"],
                        [[t["job"], t["path"], f"{t['mac_saving']:.1%}", f"{t['time_saving']:.1%}", f"{t['ratio']:.2f}",
                          "yes" if t["met"] else "**no**"] for t in a])
    b = [t for t in targets if t["target"] == "b"]
    if b:
        lines += ["(b) ours (bf16 + glmha.optimize) against the official fp32 eager Restormer forward (want >= 3x):", ""]
        lines += _table(["job", "comparison", "speed-up", "met", "note"],
                        [[t["job"], t["path"], f"{t['speedup']:.2f}x", "yes" if t["met"] else "**no**", t["note"] or ""] for t in b])
    return lines


def markdown(report: dict, tests_table: bool = True) -> str:
    machine = report["machine"]
    checks = report["checks"]
    counts = {r: sum(c["passed"] is r for c in checks) for r in (True, False, None)}
    lines = ["# GPU check", "", f"Machine: {machine['description']}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v is not None), "",
             f"Command: `{report['command']}` (started {report['started']}, {report.get('wall_s', 0):.0f} s)", "",
             f"Result: **{'PASSED' if report.get('passed') else 'FAILED'}**: {counts[True]} checks passed, "
             f"{counts[False]} failed, {counts[None]} skipped.", ""]
    lines += [f"Note: {note}" for note in report["notes"]] + ([""] if report["notes"] else [])
    failed = [c for c in checks if c["passed"] is False]
    if failed:
        lines += ["## Failed checks", "", *_table(["check", "detail"], [[c["name"], c["detail"]] for c in failed])]
    tests = report.get("tests")
    if tests:
        lines += ["## CUDA tests", "", f"`{tests['command']}`: {tests['summary']} ({tests['wall_s']:.1f} s)", ""]
        if tests_table:
            lines += _table(["test", "outcome", "time", "message"],
                            [[c["test"], c["outcome"], f"{c['seconds']:.2f} s", c["message"][:120].replace("|", "/").replace("\n", " ")]
                             for c in tests["cases"]])
    bench = report.get("benchmarks")
    if bench:
        lines += ["## Benchmarks", "", f"Compile backend {bench['compile_backend']}; forward: {bench['warmup']} warm-up, "
                  f"{bench['repeats']} timed calls; training step: {bench['train_warmup']} warm-up, {bench['train_repeats']} timed "
                  "steps; medians of interleaved calls; peak memory beyond weights and inputs.", ""]
        for job in bench["jobs"]:
            lines += job_table(job)
        for skipped in bench["skipped"]:
            lines.append(f"- skipped {skipped['job']}: {skipped['reason']}")
        for job in bench["failed"]:
            lines.append(f"- **failed** {job['job']}: {job['error'][:300]}")
        lines += ["", "## Targets (reported; not checks)", ""]
        if report["quick"]:
            lines += ["--quick: tiny models and sizes, so these numbers say nothing about the targets.", ""]
        lines += target_lines(report["targets"])
    if tests_table and checks:
        lines += ["## All checks", "", *_table(["check", "result", "detail"],
                                               [[c["name"], _result(c["passed"]), c["detail"].replace("|", "/")] for c in checks])]
    return "\n".join(lines)
