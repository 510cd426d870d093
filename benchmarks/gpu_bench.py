"""The benchmark half of ``benchmarks/gpu_check.py``: the official Restormer against ours, side by side.

One *job* is one model at one input size and one kind of call, with these variants built
together and timed in turn (``timing.time_interleaved``), each with its peak memory:

- ``csa fp32 eager``: the official architecture (same state dict and outputs as the official
  code) run as the official code runs: float32, eager. The anchor of every ratio.
- ``{csa,glmha} fp32 eager``, ``{csa,glmha} bf16 eager`` (autocast), ``{csa,glmha} bf16 compiled``
  (``glmha.optimize(model, autocast="bfloat16")``: channels-last, compiled attention blocks).

Kinds: ``forward`` (``torch.no_grad``; the compiled path runs under ``torch.inference_mode``),
``train`` (one AdamW step on the mean of the output, eager variants) and ``train-compiled``
(the compiled variants in train mode next to the anchor), the last being the slowest to
compile and so run last. MACs come from ``torch.utils.flop_counter`` on the meta device
(``workloads.count_macs``, as bench.py counts them).

Checks per job: every variant ran and gave finite numbers, and the bf16 outputs are within
``BF16_OUTPUT_TOLERANCE`` (relative) of the float32 output of the same attention.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

import glmha
from timing import Clock, peak_memory, time_interleaved
from workloads import Settings, count_macs, forward_fn, train_step_fn

ATTENTIONS = ("csa", "glmha")
ANCHOR = "csa fp32 eager"
# Relative error ||y - y_fp32|| / ||y_fp32|| of a bf16 output against float32 of the same model:
# bf16 keeps 8 significant bits (eps 3.9e-3); the tiny models of tests/cuda stay under 4.1e-3 and
# deeper models at full size accumulate more. 5e-2 flags a broken kernel or cast (errors of
# order 1) without flagging rounding.
BF16_OUTPUT_TOLERANCE = 5e-2

TINY_RESTORMER = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2]}
# (model, CxHxW, constructor arguments): the official sizes (docs/complexity.md: Restormer at
# 3x256x256 and 3x512x512, MST++ at its NTIRE 2022 size 3x482x512, MST-L at 28x256x256) ...
FULL_CASES = [
    ("restormer", (3, 512, 512), {}),
    ("restormer", (3, 256, 256), {}),
    ("mst_plus_plus", (3, 482, 512), {}),
    ("mst_l", (28, 256, 256), {}),
]
# ... and tiny ones for --quick (seconds on a CPU; MST++'s is no multiple of 8, as 482 is not).
QUICK_CASES = [
    ("restormer", (3, 32, 32), TINY_RESTORMER),
    ("mst_plus_plus", (3, 20, 28), {"stage": 1}),
    ("mst_l", (28, 16, 16), {"stage": 1, "num_blocks": [1, 1]}),
]


@dataclass
class Job:
    model: str
    shape: tuple[int, int, int]
    kwargs: dict
    kind: str  # forward, train, train-compiled

    # Seconds a job of this kind is guessed to need at the official sizes on one H100/H200,
    # compiling included (not yet measured): gpu_check.py starts a job only with that much time left.
    FULL_SIZE_SECONDS = {"forward": 90, "train": 30, "train-compiled": 180}

    @property
    def name(self) -> str:
        c, h, w = self.shape
        return f"{self.model}@{c}x{h}x{w}:{self.kind}"


@dataclass
class Options:
    device: torch.device
    warmup: int
    repeats: int
    train_warmup: int
    train_repeats: int
    compile_backend: str  # "inductor"; "eager" (capture only) on cpu --quick
    notes: list[str] = field(default_factory=list)


def plan(quick: bool) -> list[Job]:
    """The jobs in the order they run: the targets' numbers first, compiled training last."""
    cases = QUICK_CASES if quick else FULL_CASES
    jobs = []
    for model, shape, kwargs in cases:
        jobs += [Job(model, shape, kwargs, "forward"), Job(model, shape, kwargs, "train")]
    return jobs + [Job(model, shape, kwargs, "train-compiled") for model, shape, kwargs in cases]


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach().double(), reference.detach().double()
    return ((value - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def _settings(options: Options, autocast: torch.dtype | None, kind: str) -> Settings:
    train = kind != "forward"
    return Settings(device=options.device, autocast=autocast, clock=Clock(options.device, "wall"),
                    warmup=options.train_warmup if train else options.warmup,
                    repeats=options.train_repeats if train else options.repeats, compile=False)


def run_job(job: Job, options: Options) -> dict:
    """Build, time and check every variant of ``job``; returns its result (numbers and checks)."""
    device = options.device
    channels, height, width = job.shape
    start = time.perf_counter()
    result = {"job": job.name, "model": job.model, "input": "x".join(map(str, job.shape)), "kind": job.kind,
              "kwargs": job.kwargs, "compile_backend": options.compile_backend, "macs": {}, "params": {},
              "variants": {}, "checks": []}
    fns, first_call, outputs = {}, {}, {}
    for attention in ATTENTIONS:
        def build(attention=attention):
            return glmha.create_model(job.model, attention=attention, **job.kwargs)

        def inputs_of(model):
            inputs = model.example_inputs(height, width)
            if inputs[0].shape[1] != channels:
                raise ValueError(f"{job.model} takes {inputs[0].shape[1]} channels, the job says {channels}")
            return inputs

        result["macs"][attention] = count_macs(build, inputs_of)
        torch.manual_seed(0)
        model = build().to(device)
        result["params"][attention] = sum(p.numel() for p in model.parameters())
        generator = torch.Generator().manual_seed(1)  # the same inputs for both attentions
        inputs = tuple(torch.rand(t.shape, generator=generator).to(device) for t in inputs_of(model))
        settings = {"fp32": _settings(options, None, job.kind), "bf16": _settings(options, torch.bfloat16, job.kind)}
        eager = [p for p in ("fp32", "bf16") if job.kind != "train-compiled" or (attention, p) == ("csa", "fp32")]
        if job.kind == "forward":
            model.eval()
            for precision in eager:
                fns[f"{attention} {precision} eager"] = forward_fn(model, inputs, settings[precision])
        else:
            model.train()
            for precision in eager:
                fns[f"{attention} {precision} eager"] = train_step_fn(model, inputs, settings[precision])
        if job.kind in ("forward", "train-compiled"):
            # optimize() converts the weights to channels-last in place: a copy keeps the eager model as it was.
            fast = glmha.optimize(copy.deepcopy(model), compile=True, autocast="bfloat16", compile_backend=options.compile_backend)
            key = f"{attention} bf16 compiled"
            if job.kind == "forward":
                fns[key] = lambda fast=fast, inputs=inputs: fast(*inputs)
            else:
                fast.train()
                fns[key] = train_step_fn(fast, inputs, settings["fp32"])  # autocast is the wrapper's own
            clock = Clock(device, "wall")
            clock.sync()
            began = clock.now()
            fns[key]()  # the first call compiles
            clock.sync()
            first_call[key] = clock.now() - began
        if job.kind == "forward":
            with torch.no_grad():
                for key, fn in fns.items():
                    if key.startswith(attention):
                        outputs[key] = fn().float()
    warmup, repeats = (options.warmup, options.repeats) if job.kind == "forward" else (options.train_warmup, options.train_repeats)
    timings = time_interleaved(fns, Clock(device, "wall"), warmup, repeats)
    for key, fn in fns.items():
        entry = {"seconds": timings[key].median, "samples": timings[key].samples, "peak_bytes": peak_memory(fn, device)}
        if key in first_call:
            entry["first_call_s"] = first_call[key]
        result["variants"][key] = entry
    for key in fns:
        finite = all(s == s and s > 0 for s in timings[key].samples)
        result["checks"].append({"name": f"{job.name}:{key}:ran", "passed": finite,
                                 "detail": f"median {timings[key].median:.4g} s over {len(timings[key].samples)} calls"})
    for key, out in outputs.items():
        attention, precision, _ = key.split()
        finite = bool(torch.isfinite(out).all())
        if precision == "fp32":
            result["checks"].append({"name": f"{job.name}:{key}:finite", "passed": finite, "detail": "output finite" if finite else "NaN/Inf in the output"})
            continue
        error = _relative_error(out, outputs[f"{attention} fp32 eager"])
        result["variants"][key]["relative_error_vs_fp32"] = error
        result["checks"].append({"name": f"{job.name}:{key}:matches-fp32", "passed": finite and error < BF16_OUTPUT_TOLERANCE,
                                 "detail": f"relative error {error:.2e} against fp32 eager (tolerance {BF16_OUTPUT_TOLERANCE:g})",
                                 "value": error})
    result["wall_s"] = time.perf_counter() - start
    return result


def targets(jobs: list[dict], quick: bool) -> list[dict]:
    """The project's performance targets from the jobs' numbers (reported, not checks).

    (a) GLMHA's time saving against CSA is at least 0.8 of its MAC saving, per job and path.
    (b) ours (bf16 + glmha.optimize) runs the Restormer forward at 512x512 at least 3x as fast
        as the official float32 eager forward.
    """
    rows = []
    for job in jobs:
        csa_macs, glmha_macs = job["macs"].get("csa"), job["macs"].get("glmha")
        mac_saving = 1 - glmha_macs / csa_macs if csa_macs else None
        for path in ("fp32 eager", "bf16 eager", "bf16 compiled"):
            a, b = job["variants"].get(f"csa {path}"), job["variants"].get(f"glmha {path}")
            if not a or not b or not mac_saving:
                continue
            time_saving = 1 - b["seconds"] / a["seconds"]
            rows.append({"target": "a", "job": job["job"], "path": path, "time_saving": time_saving, "mac_saving": mac_saving,
                         "ratio": time_saving / mac_saving, "want": 0.8, "met": time_saving / mac_saving >= 0.8})
    restormer = [j for j in jobs if j["model"] == "restormer" and j["kind"] == "forward" and ANCHOR in j["variants"]]
    if restormer:
        largest = max(restormer, key=lambda j: [int(n) for n in j["input"].split("x")][1:])
        for attention in ATTENTIONS:
            fast = largest["variants"].get(f"{attention} bf16 compiled")
            if fast:
                speedup = largest["variants"][ANCHOR]["seconds"] / fast["seconds"]
                rows.append({"target": "b", "job": largest["job"], "path": f"{attention} bf16 compiled vs {ANCHOR}",
                             "speedup": speedup, "want": 3.0, "met": speedup >= 3.0,
                             "note": "quick sizes, not the target's 3x512x512" if quick else ""})
    return rows
