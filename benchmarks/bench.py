#!/usr/bin/env python
"""CSA and GLMHA side by side: forward latency, training-step time and peak memory.

Three sections, all measured in one run so that the ratios compare like with like:

- ``layers``: one attention layer (Restormer's MDTA family) over a sweep of widths C and
  image sizes N = side x side;
- ``models``: whole models (Restormer, MST++, MST-L) with each attention, the plain eager
  path next to the fast path (:func:`glmha.optimize`);
- ``tiling``: a tiled restoration of a 4K image and its peak memory against the stated bound.

Timing: after warm-up calls, the variants of one configuration are called in turn
(A, B, A, B, ...) and the median per variant is reported, so a load that comes and goes
hits all variants alike. ``--clock process`` times CPU seconds of this process instead of
wall seconds (steadier on a shared machine with ``--threads 1``).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the call minus what was
allocated before it. On the CPU PyTorch keeps no allocator statistics, so the peak resident
set size is used: the kernel's high-water mark is reset (``/proc/self/clear_refs``), the call
runs, and the peak is ``VmHWM`` minus the ``VmRSS`` before the call. The script re-executes
itself with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns every large freed block to
the system at once; otherwise freed memory stays resident and later peaks are under-counted.
Either way the number is the extra memory one call needs (activations, workspaces, output,
gradients), beyond the weights and inputs that exist before it.

Examples::

    python benchmarks/bench.py --quick
    python benchmarks/bench.py --device cuda            # bf16 autocast by default on CUDA
    python benchmarks/bench.py --sections models --models restormer@3x256x256 --train none
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import glmha
from glmha.attention import build_attention, list_attentions

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
FULL_CHANNELS = [32, 48, 96, 192, 384]
FULL_SIDES = [64, 128, 256, 512]
QUICK_CHANNELS = [48, 96]
QUICK_SIDES = [64, 128]
FULL_MODELS = ["restormer@3x256x256", "restormer@3x512x512", "mst_plus_plus@3x482x512", "mst_l@28x256x256"]
QUICK_MODELS = ["restormer@3x128x128", "mst_plus_plus@3x128x128"]


# --------------------------------------------------------------------------- measuring


@dataclass
class Timing:
    """Seconds per call of one variant, over the timed repeats."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")


class Clock:
    def __init__(self, device: torch.device, kind: str):
        self.device = device
        self.kind = kind

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        return time.process_time() if self.kind == "process" else time.perf_counter()


def time_interleaved(fns: dict[str, Callable[[], object]], clock: Clock, warmup: int, repeats: int) -> dict[str, Timing]:
    """Warm each variant up, then time them in turn; returns the samples per variant."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    clock.sync()
    timings = {name: Timing() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            clock.sync()
            start = clock.now()
            fn()
            clock.sync()
            timings[name].samples.append(clock.now() - start)
    return timings


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def cpu_peak_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status_bytes("VmHWM:")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Extra bytes one call of ``fn`` needs at its peak (see the module docstring), or None."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return peak
    if not cpu_peak_supported():
        return None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident size
    before = _proc_status_bytes("VmRSS:")
    result = fn()
    peak = _proc_status_bytes("VmHWM:") - before
    del result
    return peak


# --------------------------------------------------------------------------- what is run


@dataclass
class Settings:
    device: torch.device
    autocast: torch.dtype | None
    clock: Clock
    warmup: int
    repeats: int
    compile: bool
    compile_scope: str = "blocks"


def autocast_context(settings: Settings):
    if settings.autocast is None:
        return torch.autocast(settings.device.type, enabled=False)
    return torch.autocast(settings.device.type, dtype=settings.autocast)


def forward_fn(model: torch.nn.Module, inputs: tuple, settings: Settings) -> Callable[[], object]:
    """The plain eager forward: ``torch.no_grad`` (what a user writes), autocast if asked."""

    def run():
        with torch.no_grad(), autocast_context(settings):
            return model(*inputs)

    return run


def train_step_fn(model: torch.nn.Module, inputs: tuple, settings: Settings) -> Callable[[], object]:
    """One AdamW step on the mean of the output (forward, backward, update)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def run():
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(settings):
            loss = model(*inputs).float().mean()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return run


def count_macs(build: Callable[[], torch.nn.Module], shape_inputs: Callable[[torch.nn.Module], tuple]) -> int:
    """MACs of one forward, counted on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = build()
        inputs = shape_inputs(model)
    return glmha.profile(model, *inputs).macs


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected a shape CxHxW such as 3x256x256, got {text!r}")
    c, h, w = (int(p) for p in parts)
    return c, h, w


def layer_heads(channels: int) -> int:
    # Restormer's levels: 48 channels / 1 head, 96 / 2, 192 / 4, 384 / 8.
    return max(1, channels // 48)


# --------------------------------------------------------------------------- sections


def bench_layers(args, settings: Settings, attentions: list[str]) -> list[dict]:
    rows = []
    for channels in args.channels:
        heads = layer_heads(channels)
        for side in args.sides:
            shape = (1, channels, side, side)
            row = {"C": channels, "heads": heads, "N": f"{side}x{side}", "results": {}}
            forward, train, modules = {}, {}, {}
            for name in attentions:
                def build(name=name):
                    return build_attention(name, "mdta", dim=channels, num_heads=heads, bias=False)

                torch.manual_seed(0)
                module = build().to(settings.device)
                x = torch.randn(shape, device=settings.device)
                modules[name] = (module, x)
                macs = count_macs(build, lambda m: (torch.zeros(shape),))
                params = sum(p.numel() for p in module.parameters())
                row["results"][name] = {"macs": macs, "params": params}
                forward[name] = forward_fn(module.eval(), (x,), settings)
            for name, timing in time_interleaved(forward, settings.clock, args.warmup, args.repeats).items():
                row["results"][name]["forward_s"] = timing.median
            for name, fn in forward.items():
                row["results"][name]["forward_peak"] = peak_memory(fn, settings.device)
            if args.train in ("all", "layers"):
                for name, (module, x) in modules.items():
                    train[name] = train_step_fn(module.train(), (x,), settings)
                for name, timing in time_interleaved(train, settings.clock, args.warmup, args.repeats).items():
                    row["results"][name]["train_s"] = timing.median
                for name, fn in train.items():
                    row["results"][name]["train_peak"] = peak_memory(fn, settings.device)
            del forward, train, modules
            rows.append(row)
            print(format_layer_row(row, attentions), flush=True)
    return rows


def parse_model_spec(spec: str) -> tuple[str, tuple[int, int, int]]:
    if "@" not in spec:
        raise ValueError(f"expected NAME@CxHxW such as restormer@3x256x256, got {spec!r}")
    name, shape = spec.split("@", 1)
    return name, parse_shape(shape)


def bench_models(args, settings: Settings, attentions: list[str]) -> list[dict]:
    rows = []
    for spec in args.models:
        name, (channels, height, width) = parse_model_spec(spec)
        kwargs = args.model_kwargs.get(name, {})
        row = {"model": name, "input": f"{channels}x{height}x{width}", "results": {}}
        fns, train, built = {}, {}, {}
        for attention in attentions:
            def build(attention=attention):
                return glmha.create_model(name, attention=attention, **kwargs)

            def inputs_of(model):
                inputs = model.example_inputs(height, width)
                if inputs[0].shape[1] != channels:
                    raise ValueError(f"{name} takes {inputs[0].shape[1]} channels, the spec says {channels}")
                return inputs

            torch.manual_seed(0)
            model = build().to(settings.device).eval()
            inputs = tuple(torch.rand_like(t) for t in inputs_of(model))
            built[attention] = (model, inputs)
            row["results"][attention] = {
                "macs": count_macs(build, inputs_of),
                "params": sum(p.numel() for p in model.parameters()),
            }
            fns[f"{attention}/plain"] = forward_fn(model, inputs, settings)
        if args.fast:
            for attention in attentions:
                if attention not in args.fast_attentions:
                    continue
                model, inputs = built[attention]
                # optimize() converts the weights to channels-last in place; a copy keeps the plain
                # model as it was, so that both are timed as a user would run them.
                fast_model = glmha.create_model(name, attention=attention, **kwargs).to(settings.device).eval()
                fast_model.load_state_dict(model.state_dict())
                fast = glmha.optimize(fast_model, compile=settings.compile, autocast=settings.autocast, scope=settings.compile_scope)
                with torch.no_grad():
                    reference = fns[f"{attention}/plain"]()
                start = time.perf_counter()
                out = fast(*inputs)  # compiles on the first call
                row["results"][attention]["first_fast_call_s"] = time.perf_counter() - start
                row["results"][attention]["fast_max_abs_diff"] = (out.float() - reference.float()).abs().max().item()
                del out, reference
                fns[f"{attention}/fast"] = lambda fast=fast, inputs=inputs: fast(*inputs)
        for key, timing in time_interleaved(fns, settings.clock, args.warmup, args.repeats).items():
            attention, path = key.split("/")
            row["results"][attention][f"forward_{path}_s"] = timing.median
        for key, fn in fns.items():
            attention, path = key.split("/")
            row["results"][attention][f"forward_{path}_peak"] = peak_memory(fn, settings.device)
        del fns
        if args.train == "all":
            for attention, (model, inputs) in built.items():
                train[attention] = train_step_fn(model.train(), inputs, settings)
            for attention, timing in time_interleaved(train, settings.clock, args.train_warmup, args.train_repeats).items():
                row["results"][attention]["train_s"] = timing.median
            for attention, fn in train.items():
                row["results"][attention]["train_peak"] = peak_memory(fn, settings.device)
        del train, built
        rows.append(row)
        print(format_model_row(row, attentions), flush=True)
    return rows


def bench_tiling(args, settings: Settings) -> dict:
    """Peak memory of a tiled restoration against: one tile's peak + the image-sized buffers."""
    channels, height, width = args.tile_image
    kwargs = args.model_kwargs.get(args.tile_model, {})
    torch.manual_seed(0)
    model = glmha.create_model(args.tile_model, **kwargs).to(settings.device).eval()
    image = torch.rand(1, channels, height, width, device=settings.device)
    tile_input = image[..., : args.tile, : args.tile].clone()

    def one_tile():
        return glmha.restore(model, tile_input)

    def whole_image():
        return glmha.restore(model, image, tile=args.tile, overlap=args.overlap)

    one_tile()  # warm-up: one-off allocations (oneDNN caches) are not the call's peak
    tile_peak = peak_memory(one_tile, settings.device)
    start = time.perf_counter()
    image_peak = peak_memory(whole_image, settings.device)
    seconds = time.perf_counter() - start
    out_channels = getattr(model, "out_channels", channels)
    # restore() holds, at full size, the weighted output sum and a one-channel weight sum, and
    # at the end divides them into a new output tensor: 2 x out_channels + 1 image planes.
    buffers = (2 * out_channels + 1) * height * width * image.element_size()
    stride = args.tile - args.overlap
    n_tiles = _count_tiles(height, args.tile, stride) * _count_tiles(width, args.tile, stride)
    result = {
        "model": args.tile_model,
        "model_kwargs": kwargs,
        "params": sum(p.numel() for p in model.parameters()),
        "image": f"{channels}x{height}x{width}",
        "tile": args.tile,
        "overlap": args.overlap,
        "tiles": n_tiles,
        "seconds": seconds,
        "tile_peak": tile_peak,
        "buffers": buffers,
        "image_peak": image_peak,
        "bound": None if tile_peak is None else tile_peak + buffers,
    }
    print(format_tiling(result), flush=True)
    return result


def _count_tiles(size: int, tile: int, stride: int) -> int:
    return 1 if size <= tile else len(range(0, size - tile, stride)) + 1


# --------------------------------------------------------------------------- reporting


def fmt_s(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    mib = n / 2**20
    return f"{mib:.1f} MiB" if abs(mib) < 10 else f"{mib:.0f} MiB"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or a != a or b != b:
        return "-"
    return f"{a / b:.3f}"


def format_layer_row(row: dict, attentions: list[str]) -> str:
    parts = [f"layer C={row['C']} h={row['heads']} N={row['N']}:"]
    for name in attentions:
        r = row["results"][name]
        parts.append(f"{name} fwd {fmt_s(r.get('forward_s'))} train {fmt_s(r.get('train_s'))} peak {fmt_bytes(r.get('forward_peak'))}")
    if len(attentions) == 2:
        a, b = (row["results"][n] for n in attentions)
        parts.append(f"{attentions[1]}/{attentions[0]} fwd {ratio(b.get('forward_s'), a.get('forward_s'))} macs {ratio(b['macs'], a['macs'])}")
    return "  ".join(parts)


def format_model_row(row: dict, attentions: list[str]) -> str:
    parts = [f"model {row['model']} {row['input']}:"]
    for name in attentions:
        r = row["results"][name]
        parts.append(
            f"{name} plain {fmt_s(r.get('forward_plain_s'))} fast {fmt_s(r.get('forward_fast_s'))}"
            f" (fast/plain {ratio(r.get('forward_fast_s'), r.get('forward_plain_s'))})"
        )
    return "  ".join(parts)


def format_tiling(result: dict) -> str:
    return (
        f"tiling {result['model']} {result['image']} tile {result['tile']} overlap {result['overlap']} ({result['tiles']} tiles): "
        f"{fmt_s(result['seconds'])}, peak {fmt_bytes(result['image_peak'])} vs bound {fmt_bytes(result['bound'])} "
        f"(one tile {fmt_bytes(result['tile_peak'])} + buffers {fmt_bytes(result['buffers'])})"
    )


def saving_check(csa: dict, glmha_: dict, time_key: str) -> tuple[float, float, bool] | None:
    """(time saving, MAC saving, whether time saving >= 0.8 x MAC saving) for target (a)."""
    if time_key not in csa or time_key not in glmha_:
        return None
    time_saving = 1 - glmha_[time_key] / csa[time_key]
    mac_saving = 1 - glmha_["macs"] / csa["macs"]
    return time_saving, mac_saving, time_saving >= 0.8 * mac_saving


def markdown(report: dict) -> str:
    attentions = report["attentions"]
    lines = [f"Machine: {report['machine']}", "", f"Command: `{report['command']}`", ""]
    if report.get("layers"):
        lines += ["### Attention layer", ""]
        head = "| C | heads | N |"
        for n in attentions:
            head += f" {n} MACs | {n} fwd | {n} train | {n} fwd peak | {n} train peak |"
        if len(attentions) == 2:
            head += f" {attentions[1]}/{attentions[0]} MACs | fwd | train | fwd peak | train peak |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for row in report["layers"]:
            cells = [str(row["C"]), str(row["heads"]), row["N"]]
            for n in attentions:
                r = row["results"][n]
                cells += [f"{r['macs'] / 1e9:.3f} G", fmt_s(r.get("forward_s")), fmt_s(r.get("train_s")),
                          fmt_bytes(r.get("forward_peak")), fmt_bytes(r.get("train_peak"))]
            if len(attentions) == 2:
                a, b = (row["results"][n] for n in attentions)
                cells += [ratio(b["macs"], a["macs"]), ratio(b.get("forward_s"), a.get("forward_s")),
                          ratio(b.get("train_s"), a.get("train_s")), ratio(b.get("forward_peak"), a.get("forward_peak")),
                          ratio(b.get("train_peak"), a.get("train_peak"))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if report.get("models"):
        lines += ["### Models", ""]
        head = ("| model | input | attention | params | GMACs | fwd plain | fwd fast | fast/plain | first fast call "
                "| fast max abs diff | train step | fwd peak plain | fwd peak fast | train peak |")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for row in report["models"]:
            for n in attentions:
                r = row["results"][n]
                diff = r.get("fast_max_abs_diff")
                lines.append("| " + " | ".join([
                    row["model"], row["input"], n, f"{r['params'] / 1e6:.2f} M", f"{r['macs'] / 1e9:.2f}",
                    fmt_s(r.get("forward_plain_s")), fmt_s(r.get("forward_fast_s")),
                    ratio(r.get("forward_fast_s"), r.get("forward_plain_s")), fmt_s(r.get("first_fast_call_s")),
                    "-" if diff is None else f"{diff:.1e}", fmt_s(r.get("train_s")),
                    fmt_bytes(r.get("forward_plain_peak")), fmt_bytes(r.get("forward_fast_peak")), fmt_bytes(r.get("train_peak")),
                ]) + " |")
        lines.append("")
        if len(attentions) == 2:
            lines += ["GLMHA against CSA (time saving, MAC saving; target: time saving >= 0.8 x MAC saving):", ""]
            for row in report["models"]:
                a, b = (row["results"][n] for n in attentions)
                for key in ("forward_plain_s", "forward_fast_s", "train_s"):
                    check = saving_check(a, b, key)
                    if check:
                        lines.append(f"- {row['model']} {row['input']} {key}: time saving {check[0]:.1%}, "
                                     f"MAC saving {check[1]:.1%}, ratio {check[0] / check[1]:.2f} -> "
                                     f"{'met' if check[2] else 'NOT met'}")
            lines.append("")
    if report.get("tiling"):
        t = report["tiling"]
        lines += ["### Tiled restoration", "",
                  f"{t['model']} ({t['params'] / 1e6:.2f} M params, kwargs {json.dumps(t['model_kwargs'])}), image {t['image']}, "
                  f"tile {t['tile']}, overlap {t['overlap']}, {t['tiles']} tiles: {fmt_s(t['seconds'])}; "
                  f"peak {fmt_bytes(t['image_peak'])}, bound (one tile's peak {fmt_bytes(t['tile_peak'])} + "
                  f"image-sized buffers {fmt_bytes(t['buffers'])}) {fmt_bytes(t['bound'])}: "
                  f"{'within' if t['bound'] is not None and t['image_peak'] <= t['bound'] else 'NOT within'} the bound.", ""]
    return "\n".join(lines)


def machine_description(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = platform.processor() or platform.machine()
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
            model = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), hw)
            hw = model
        except (OSError, subprocess.CalledProcessError):
            pass
    return (f"{hw}, {os.cpu_count()} CPUs visible, torch {torch.__version__} ({threads} threads), "
            f"Python {platform.python_version()}")


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--quick", action="store_true", help=f"small sweep: C {QUICK_CHANNELS}, sides {QUICK_SIDES}, models {QUICK_MODELS}")
    p.add_argument("--sections", nargs="+", default=["layers", "models", "tiling"], choices=["layers", "models", "tiling"])
    p.add_argument("--attentions", nargs="+", default=["csa", "glmha"], help="attentions to compare (first is the reference)")
    p.add_argument("--channels", type=int, nargs="+", help=f"layer widths (default {FULL_CHANNELS})")
    p.add_argument("--sides", type=int, nargs="+", help=f"layer image sides, N = side^2 (default {FULL_SIDES})")
    p.add_argument("--models", nargs="+", help=f"NAME@CxHxW (default {FULL_MODELS})")
    p.add_argument("--model-kwargs", action="append", default=[], metavar="NAME=JSON",
                   help='constructor arguments for a model, e.g. restormer=\'{"dim": 8}\' (repeatable)')
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True, help="time the fast path too (models)")
    p.add_argument("--fast-attentions", nargs="+", help="attentions to run the fast path for (default: all)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile in the fast path")
    p.add_argument("--compile-scope", choices=["blocks", "model"], default="blocks", help="glmha.optimize's scope: each attention block (default) or the whole model")
    p.add_argument("--train", choices=["all", "layers", "none"], default="all", help="time training steps for layers and models, layers only, or none")
    p.add_argument("--autocast", choices=["none", "bfloat16", "float16"], help="default: bfloat16 on CUDA, none on CPU")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-warmup", type=int, default=1, help="warm-up steps for model training steps")
    p.add_argument("--train-repeats", type=int, default=2, help="timed steps for model training steps")
    p.add_argument("--clock", choices=["wall", "process"], default="wall", help="wall seconds, or CPU seconds of this process (CPU only)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--tile-model", default="restormer")
    p.add_argument("--tile-image", default="3x2160x3840", help="CxHxW of the image restored with tiles")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--output", type=Path, help="write the Markdown report here")
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and MMAP_ENV not in os.environ and __name__ == "__main__":
        # Re-run with large blocks mmapped so that CPU peak memory is measured honestly.
        env = dict(os.environ, **{MMAP_ENV: "65536"})
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "process" and device.type == "cuda":
        print("error: --clock process only makes sense on the CPU", file=sys.stderr)
        return 2
    autocast = args.autocast or ("bfloat16" if device.type == "cuda" else "none")
    model_kwargs = {}
    for item in args.model_kwargs:
        name, _, text = item.partition("=")
        model_kwargs[name] = json.loads(text)
    args.model_kwargs = model_kwargs
    args.channels = args.channels or (QUICK_CHANNELS if args.quick else FULL_CHANNELS)
    args.sides = args.sides or (QUICK_SIDES if args.quick else FULL_SIDES)
    args.models = args.models or (QUICK_MODELS if args.quick else FULL_MODELS)
    args.tile_image = parse_shape(args.tile_image)
    known = set(list_attentions("mdta"))
    attentions = [a for a in args.attentions if a in known]
    for missing in sorted(set(args.attentions) - known):
        print(f"note: attention {missing!r} is not registered, skipped", flush=True)
    args.fast_attentions = args.fast_attentions or attentions
    settings = Settings(
        device=device,
        autocast=None if autocast == "none" else getattr(torch, autocast),
        clock=Clock(device, args.clock),
        warmup=args.warmup,
        repeats=args.repeats,
        compile=args.compile,
        compile_scope=args.compile_scope,
    )
    machine = machine_description(device, torch.get_num_threads())
    print(f"# {machine}; autocast {autocast}; clock {args.clock}; warmup {args.warmup}, repeats {args.repeats}", flush=True)
    if device.type == "cpu" and not cpu_peak_supported():
        print("note: /proc/self/clear_refs is not writable here; CPU peak memory is not measured", flush=True)
    report = {"machine": machine, "command": "python benchmarks/bench.py " + " ".join(argv), "attentions": attentions}
    with torch.inference_mode(False):
        if "layers" in args.sections:
            report["layers"] = bench_layers(args, settings, attentions)
        if "models" in args.sections:
            report["models"] = bench_models(args, settings, attentions)
        if "tiling" in args.sections:
            report["tiling"] = bench_tiling(args, settings)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(markdown(report) + "\n")
        print(f"wrote {args.output}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
