#!/usr/bin/env python
"""Tile size on the CPU: time and peak memory of ``glmha.restore`` per tile size and memory budget.

Sets the CPU default of ``--tile auto`` (``glmha.inference.memory.CPU_TILE_MEMORY``: on the CPU
one forward, a tile's or the whole image's, is kept under it). Every case runs in a fresh
process, so that its peak resident memory and its user and system CPU seconds are its own
(``os.wait4``); the restore call alone is timed, after the imports and the model are built.

Cases per model and image (``--cases`` picks some):

- ``tile=N``: tiles of N pixels (``glmha.restore(model, x, tile=N, overlap=32)``);
- ``whole``: the image in one forward (skipped when its estimated memory is over half the
  available RAM);
- ``cap=SIZE``: ``tile="auto"`` with the CPU cap set to SIZE, within the old default budget
  (half the available RAM); ``cap=none`` is the old default (the budget alone);
- ``default``: ``tile="auto"`` as the code stands (its budget and its cap).

Models: ``small`` (a Restormer of width 16, blocks 1/1/2/2, the demo's default size, 1.0 M
parameters) and ``deraining`` (the deraining preset's size, the official Restormer, 26 M).
Weights are random (time and memory do not depend on them). The allocator is left as a
user's process has it (no ``MALLOC_*`` settings): what it costs is part of what is measured.

    python benchmarks/tile_sweep.py --quick                 # small model, 3x768x1024, 6 cases: about a minute
    python benchmarks/tile_sweep.py --output tile-sweep.md  # both models; 10 to 20 minutes on a 2-core CPU
    python benchmarks/tile_sweep.py --models small --image small=3x3000x4000 --cases tile=512 cap=1GiB default
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODELS = {
    "small": {"dim": 16, "num_blocks": [1, 1, 2, 2], "num_refinement_blocks": 1, "heads": [1, 2, 4, 8], "ffn_expansion_factor": 2.0},
    "deraining": None,  # the preset's arguments
}
FULL_IMAGES = {"small": "3x1500x2000", "deraining": "3x512x768"}
QUICK_IMAGES = {"small": "3x768x1024", "deraining": "3x256x384"}
FULL_CASES = ["tile=256", "tile=384", "tile=512", "tile=768", "tile=1024", "whole",
              "cap=256MiB", "cap=512MiB", "cap=1GiB", "cap=2GiB", "cap=4GiB", "cap=none", "default"]
QUICK_CASES = ["tile=256", "tile=512", "whole", "cap=1GiB", "cap=none", "default"]


# --------------------------------------------------------------------------- one case, in its own process
def build_model(name: str):
    import glmha
    from glmha.models.presets import get_preset

    if MODELS[name] is None:
        preset = get_preset(name)
        return glmha.create_model(preset.model, **preset.model_kwargs).eval()
    return glmha.create_model("restormer", **MODELS[name]).eval()


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def worker(spec: dict) -> dict:
    """Run one case; returns what it measured (printed as one JSON line)."""
    import logging

    import torch

    import glmha
    from glmha.inference import memory
    from glmha.inference.memory import activation_cost, default_memory_budget, parse_memory

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = build_model(spec["model"])
    channels, height, width = spec["image"]
    x = torch.rand(1, channels, height, width)
    cost = activation_cost(model)
    case = spec["case"]
    kwargs: dict = {"overlap": spec["overlap"], "cost": cost}
    if case.startswith("tile="):
        kwargs["tile"] = int(case.split("=", 1)[1])
    elif case == "whole":
        kwargs["tile"] = None
    elif case.startswith("cap="):
        value = case.split("=", 1)[1]
        memory.CPU_TILE_MEMORY = None if value == "none" else parse_memory(value)
        kwargs.update(tile="auto", max_memory=int(0.5 * memory._available_ram()))
    elif case == "default":
        kwargs["tile"] = "auto"
    else:
        raise SystemExit(f"unknown case {case!r}")
    plan: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: plan.append(record.getMessage())
    package_log = logging.getLogger("glmha")
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    sides: list[tuple[int, int]] = []
    model.register_forward_pre_hook(lambda m, args: None if args[0].is_meta else sides.append(tuple(args[0].shape[-2:])))
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the high-water mark from here on
        peak_supported = True
    except OSError:
        peak_supported = False
    before = _status("VmRSS:")
    start = time.perf_counter()
    glmha.restore(model, x, **kwargs)
    seconds = time.perf_counter() - start
    largest = max(sides, key=lambda s: s[0] * s[1])
    return {
        "seconds": seconds,
        "forwards": len(sides),
        "tile": f"{largest[0]}x{largest[1]}",
        "forward_estimate": 1.5 * cost.bytes_for(largest[0] * largest[1]),  # tiling's safety factor, as the cap counts it
        "extra_peak": _status("VmHWM:") - before if peak_supported else None,
        "budget": kwargs.get("max_memory") or (default_memory_budget("cpu") if kwargs["tile"] == "auto" else None),
        "plan": plan[0] if plan else "",
        "bytes_per_pixel": cost.bytes_per_pixel,
    }


def run_case(spec: dict) -> dict:
    """``spec`` in a fresh process: its result, wall seconds, user and system seconds and peak RSS."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        return {"error": f"exit code {process.returncode}"}
    result = json.loads(out.strip().splitlines()[-1])
    result.update(process_seconds=time.perf_counter() - start, user=usage.ru_utime, system=usage.ru_stime,
                  peak_rss=usage.ru_maxrss * 1024)
    return result


# --------------------------------------------------------------------------- the sweep
def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def table(rows: list[dict]) -> str:
    header = ["model", "image", "case", "forwards", "largest forward", "its estimate", "restore (s)", "user (s)", "system (s)",
              "peak RSS", "restore's extra peak"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * 3 + " ---: |" * (len(header) - 3)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['image']} | {r['case']} | {r['error']} |" + " |" * (len(header) - 4))
            continue
        lines.append(
            f"| {r['model']} | {r['image']} | {r['case']} | {r['forwards']} | {r['tile']} | {_gib(r['forward_estimate'])} | "
            f"{r['seconds']:.1f} | {r['user']:.1f} | {r['system']:.1f} | {_gib(r['peak_rss'])} | {_gib(r['extra_peak'])} |"
        )
    return "\n".join(lines)


def _median_row(results: list[dict]) -> dict:
    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[0]
    ok.sort(key=lambda r: r["seconds"])
    return ok[len(ok) // 2]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"the small model only, images {QUICK_IMAGES['small']}, cases {QUICK_CASES}")
    p.add_argument("--models", nargs="+", choices=list(MODELS), help="default: both (quick: small)")
    p.add_argument("--image", action="append", default=[], metavar="MODEL=CxHxW", help=f"image size per model (default {FULL_IMAGES})")
    p.add_argument("--cases", nargs="+", help=f"default {FULL_CASES}")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each case (default: PyTorch's)")
    p.add_argument("--repeats", type=int, default=1, help="runs per case; the run of median time is reported")
    p.add_argument("--output", type=Path, help="write the Markdown table here")
    p.add_argument("--json", type=Path, help="write every run's numbers here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    from glmha.inference.memory import ActivationCost, _available_ram, activation_cost
    from timing import machine_description

    models = args.models or (["small"] if args.quick else list(MODELS))
    images = dict(QUICK_IMAGES if args.quick else FULL_IMAGES)
    for item in args.image:
        name, _, shape = item.partition("=")
        images[name] = shape
    cases = args.cases or (QUICK_CASES if args.quick else FULL_CASES)
    threads = args.threads or torch.get_num_threads()
    machine = machine_description(torch.device("cpu"), threads)
    print(f"# {machine}; {_available_ram() / 2**30:.1f} GiB available; overlap {args.overlap}; {args.repeats} run(s) per case", flush=True)
    rows, runs = [], []
    for name in models:
        channels, height, width = (int(v) for v in images[name].lower().split("x"))
        cost: ActivationCost = activation_cost(build_model(name))
        for case in cases:
            if case == "whole" and 1.5 * cost.bytes_for(height * width) > 0.5 * _available_ram():
                print(f"{name} {images[name]} whole: skipped (needs about {1.5 * cost.bytes_for(height * width) / 2**30:.1f} GiB)", flush=True)
                continue
            spec = {"model": name, "image": [channels, height, width], "case": case, "overlap": args.overlap, "threads": args.threads}
            results = [run_case(spec) for _ in range(args.repeats)]
            for result in results:
                result.update(model=name, image=images[name], case=case)
            runs += results
            row = _median_row(results)
            rows.append(row)
            if "error" in row:
                print(f"{name} {images[name]} {case}: {row['error']}", flush=True)
            else:
                print(f"{name} {images[name]} {case}: {row['forwards']} forward(s) of up to {row['tile']}, {row['seconds']:.1f} s "
                      f"(user {row['user']:.1f} s, system {row['system']:.1f} s), peak RSS {_gib(row['peak_rss'])}"
                      + (f"; {row['plan']}" if row["plan"] else ""), flush=True)
    command = "python benchmarks/tile_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = f"{machine}\n\n```\n{command}\n```\n\n{table(rows)}\n"
    print("\n" + text)
    if args.output:
        args.output.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "command": command, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
