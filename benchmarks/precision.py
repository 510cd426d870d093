"""fp32 against bf16 mixed precision on a short training run, side by side, over seeds.

Trains the deraining recipe's smoke model (Restormer, dim 8) on the built-in deraining data
for ``--iters`` iterations at each precision and seed, then scores held-out images with the
official deraining protocol. Prints one row per run and the per-seed difference bf16 - fp32.

    python benchmarks/precision.py --iters 300 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from glmha.engine import evaluate, train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "restormer" / "deraining_csa.yaml"


def run(precision: str, seed: int, iters: int, device: str, folder: Path) -> tuple[float, float, float]:
    overrides = [
        "train.progress=false", "train.tensorboard=false", f"seed={seed}", f"train.precision={precision}",
        f"train.total_iters={iters}", f"train.stages=[{{iters: {iters}, patch_size: 48, batch_size: 4}}]",
        f"train.val_every={iters}", f"train.checkpoint_every={iters}",
        f"scheduler={{name: CosineAnnealingLR, T_max: {iters}, eta_min: 1.0e-6}}", "optimizer.lr=1.0e-3",
        "data.train={type: synthetic, task: deraining, num_images: 16, image_size: 64, augment: true, seed: 0}",
        "data.val={type: synthetic, task: deraining, num_images: 2, image_size: 48, seed: 1}",
        "data.test={held_out: {type: synthetic, task: deraining, num_images: 8, image_size: 64, seed: 2}}",
    ]
    start = time.perf_counter()
    result = train(CONFIG, overrides, variant="smoke", output_dir=folder / f"{precision}_{seed}", device=device)
    seconds = time.perf_counter() - start
    table = evaluate(CONFIG, result.weights, overrides, variant="smoke", output_dir=folder / f"{precision}_{seed}" / "eval",
                     device=device, progress=False)
    return table.summary[0]["psnr"], table.summary[0]["ssim"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for precision in ("fp32", "bf16"):
                rows[precision, seed] = run(precision, seed, args.iters, args.device, Path(tmp))
                print(f"seed {seed} {precision}: PSNR {rows[precision, seed][0]:.4f}, {rows[precision, seed][2]:.1f} s", flush=True)
    print(f"\n| seed | fp32 PSNR | bf16 PSNR | bf16 - fp32 (dB) | fp32 SSIM | bf16 SSIM | fp32 s | bf16 s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    diffs = []
    for seed in args.seeds:
        (p32, s32, t32), (p16, s16, t16) = rows["fp32", seed], rows["bf16", seed]
        diffs.append(p16 - p32)
        print(f"| {seed} | {p32:.4f} | {p16:.4f} | {p16 - p32:+.4f} | {s32:.4f} | {s16:.4f} | {t32:.1f} | {t16:.1f} |")
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    print(f"\nbf16 - fp32: mean {statistics.mean(diffs):+.4f} dB, standard deviation {spread:.4f} dB over {len(diffs)} seeds")


if __name__ == "__main__":
    main()
