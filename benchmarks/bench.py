#!/usr/bin/env python
"""CSA and GLMHA side by side: forward latency, training-step time and peak memory.

Three sections, all measured in one run so that the ratios compare like with like:

- ``layers``: one attention layer (Restormer's MDTA family) over a sweep of widths C and
  image sizes N = side x side;
- ``models``: whole models (Restormer, MST++, MST-L) with each attention, the plain eager
  path next to the fast path (:func:`glmha.optimize`);
- ``tiling``: a tiled restoration of a 4K image and its peak memory against the stated bound.

Timing and peak memory are measured as ``benchmarks/timing.py`` describes: the variants of one
configuration are called in turn (A, B, A, B, ...) and the median per variant is reported;
``--clock process`` times CPU seconds of this process instead of wall seconds (steadier on a
shared machine with ``--threads 1``). Peak memory is the extra memory one call needs: CUDA's
allocator statistics, or on the CPU the peak resident set size (the script re-executes itself
with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed blocks leave at once).

Examples::

    python benchmarks/bench.py --quick                  # small models and sizes, no compile: under 2 minutes on 2 cores
    python benchmarks/bench.py --device cuda            # bf16 autocast by default on CUDA
    python benchmarks/bench.py --sections models --models restormer@3x256x256 --train none
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import glmha
from glmha.attention import build_attention, list_attentions
from bench_report import format_layer_row, format_model_row, format_tiling, markdown
from timing import Clock, cpu_peak_supported, machine_description, peak_memory, reexec_with_mmap_threshold, time_interleaved
from workloads import Settings, count_macs, forward_fn, layer_heads, parse_model_spec, parse_shape, train_step_fn

FULL_CHANNELS = [32, 48, 96, 192, 384]
FULL_SIDES = [64, 128, 256, 512]
QUICK_CHANNELS = [48, 96]
QUICK_SIDES = [64, 96]
FULL_MODELS = ["restormer@3x256x256", "restormer@3x512x512", "mst_plus_plus@3x482x512", "mst_l@28x256x256"]
# --quick: small models (the demo's sizes), forward only for whole models, the fast path without
# torch.compile (compiling takes minutes on a CPU), and a small tiled image: every section and
# every side-by-side ratio, in under 2 minutes on a 2-core CPU. Options given explicitly win.
QUICK_MODELS = ["restormer@3x96x96", "mst_plus_plus@3x96x96"]
QUICK_MODEL_KWARGS = {
    "restormer": {"dim": 16, "num_blocks": [1, 1, 2, 2], "num_refinement_blocks": 1, "ffn_expansion_factor": 2.0},
    "mst_plus_plus": {"stage": 1},
}
QUICK_TILE_IMAGE = "3x192x288"
QUICK_TILE = 128
FULL_TILE_IMAGE = "3x2160x3840"
FULL_TILE = 256


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


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--quick", action="store_true",
                   help=f"small sweep, under 2 minutes on 2 cores: C {QUICK_CHANNELS}, sides {QUICK_SIDES}, models {QUICK_MODELS} "
                        f"with {QUICK_MODEL_KWARGS}, --train layers, --no-compile, tiling {QUICK_TILE_IMAGE} in tiles of {QUICK_TILE} "
                        "(options given explicitly win)"),
    p.add_argument("--sections", nargs="+", default=["layers", "models", "tiling"], choices=["layers", "models", "tiling"])
    p.add_argument("--attentions", nargs="+", default=["csa", "glmha"], help="attentions to compare (first is the reference)")
    p.add_argument("--channels", type=int, nargs="+", help=f"layer widths (default {FULL_CHANNELS})")
    p.add_argument("--sides", type=int, nargs="+", help=f"layer image sides, N = side^2 (default {FULL_SIDES})")
    p.add_argument("--models", nargs="+", help=f"NAME@CxHxW (default {FULL_MODELS})")
    p.add_argument("--model-kwargs", action="append", default=[], metavar="NAME=JSON",
                   help='constructor arguments for a model, e.g. restormer=\'{"dim": 8}\' (repeatable)')
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True, help="time the fast path too (models)")
    p.add_argument("--fast-attentions", nargs="+", help="attentions to run the fast path for (default: all)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile in the fast path (default: on; off with --quick)")
    p.add_argument("--compile-scope", choices=["blocks", "model"], default="blocks", help="glmha.optimize's scope: each attention block (default) or the whole model")
    p.add_argument("--train", choices=["all", "layers", "none"], default=None,
                   help="time training steps for layers and models (all, the default), layers only (--quick's default), or none")
    p.add_argument("--autocast", choices=["none", "bfloat16", "float16"], help="default: bfloat16 on CUDA, none on CPU")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-warmup", type=int, default=1, help="warm-up steps for model training steps")
    p.add_argument("--train-repeats", type=int, default=2, help="timed steps for model training steps")
    p.add_argument("--clock", choices=["wall", "process"], default="wall", help="wall seconds, or CPU seconds of this process (CPU only)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--tile-model", default="restormer")
    p.add_argument("--tile-image", default=None, help=f"CxHxW of the image restored with tiles (default {FULL_TILE_IMAGE}; --quick {QUICK_TILE_IMAGE})")
    p.add_argument("--tile", type=int, default=None, help=f"tile side (default {FULL_TILE}; --quick {QUICK_TILE})")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--output", type=Path, help="write the Markdown report here")
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    return p


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in what the command line left open: the full sweep's defaults, or --quick's."""
    model_kwargs = dict(QUICK_MODEL_KWARGS) if args.quick else {}
    for item in args.model_kwargs:
        name, _, text = item.partition("=")
        model_kwargs[name] = json.loads(text)
    args.model_kwargs = model_kwargs
    args.channels = args.channels or (QUICK_CHANNELS if args.quick else FULL_CHANNELS)
    args.sides = args.sides or (QUICK_SIDES if args.quick else FULL_SIDES)
    args.models = args.models or (QUICK_MODELS if args.quick else FULL_MODELS)
    args.compile = (not args.quick) if args.compile is None else args.compile
    args.train = args.train or ("layers" if args.quick else "all")
    args.tile_image = parse_shape(args.tile_image or (QUICK_TILE_IMAGE if args.quick else FULL_TILE_IMAGE))
    args.tile = args.tile or (QUICK_TILE if args.quick else FULL_TILE)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and __name__ == "__main__":
        reexec_with_mmap_threshold()  # large blocks mmapped, so that CPU peak memory is measured honestly
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "process" and device.type == "cuda":
        print("error: --clock process only makes sense on the CPU", file=sys.stderr)
        return 2
    autocast = args.autocast or ("bfloat16" if device.type == "cuda" else "none")
    resolve_defaults(args)
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
    print(f"# {machine}; autocast {autocast}; clock {args.clock}; warmup {args.warmup}, repeats {args.repeats}; "
          f"fast path {'with' if args.compile else 'without'} torch.compile" + (f"; model arguments {args.model_kwargs}" if args.model_kwargs else ""),
          flush=True)
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
