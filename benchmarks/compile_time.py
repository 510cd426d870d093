"""How long glmha.optimize's first call takes, and what it buys: each compile scope in fresh processes.

    python benchmarks/compile_time.py                                   # Restormer (CSA) at 3x256x256
    python benchmarks/compile_time.py --attention glmha --size 128 128 --repeats 3
    python benchmarks/compile_time.py --model-kwargs '{"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}'  # 0.2 M params

For the plain model and for each scope of ``glmha.optimize`` ("blocks", the default, and
"model") a new Python process builds the model and times its first call and then the median
of ``--repeats`` calls. Each scope runs twice: with an empty Inductor cache (a first run on a
machine) and again in a new process with the cache the first one left (a later run: Inductor
keeps compiled graphs and kernels on disk). The plain model is ``model.eval()`` under
``torch.no_grad()``. The first call's cost follows the number of distinct block shapes the
model has (5 for a Restormer of any width), not its parameter count: ``--model-kwargs`` measures
a small model.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(args: argparse.Namespace) -> None:
    import torch

    import glmha

    torch.manual_seed(0)
    model = glmha.create_model(args.model, attention=args.attention, **json.loads(args.model_kwargs)).eval()
    x = torch.rand(1, model.in_channels, *args.size)
    if args.scope == "plain":
        def run():
            with torch.no_grad():
                return model(x)
    else:
        fast = glmha.optimize(model, scope=args.scope)

        def run():
            return fast(x)
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(json.dumps({"first": first, "median": sorted(times)[len(times) // 2]}))


def measure(args: argparse.Namespace, scope: str, cache: str) -> dict:
    command = [sys.executable, __file__, "--child", "--scope", scope, "--model", args.model, "--attention", args.attention,
               "--model-kwargs", args.model_kwargs, "--size", *map(str, args.size), "--repeats", str(args.repeats)]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        raise SystemExit(f"{scope} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="restormer")
    parser.add_argument("--attention", default="csa")
    parser.add_argument("--model-kwargs", default="{}", metavar="JSON", help='constructor arguments, e.g. \'{"dim": 8}\'')
    parser.add_argument("--size", nargs=2, type=int, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scopes", nargs="+", default=["blocks", "model"], choices=["blocks", "model"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scope", default="plain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import torch

    import glmha

    params = sum(p.numel() for p in glmha.create_model(args.model, attention=args.attention, **json.loads(args.model_kwargs)).parameters())
    print(f"# {args.model} ({args.attention}, {args.model_kwargs}, {params / 1e6:.2f} M parameters) at {args.size[0]}x{args.size[1]}, "
          f"PyTorch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    with tempfile.TemporaryDirectory() as empty:
        plain = measure(args, "plain", empty)
    print("| path | first call, empty cache | first call, cache of an earlier run | forward (median) | speed-up over plain |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| plain | - | - | {plain['median']:.2f} s | 1.00x |", flush=True)
    for scope in args.scopes:
        with tempfile.TemporaryDirectory() as cache:
            cold = measure(args, scope, cache)
            warm = measure(args, scope, cache)
        median = min(cold["median"], warm["median"])
        print(f"| optimize(scope={scope!r}) | {cold['first']:.1f} s | {warm['first']:.1f} s | {median:.2f} s | "
              f"{plain['median'] / median:.2f}x |", flush=True)
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
