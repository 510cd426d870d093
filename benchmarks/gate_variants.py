#!/usr/bin/env python
"""Where GLMHA's gate goes: three ways to compute ``W_kv diag(g) x``, side by side.

One GLMHA layer (Restormer family) on an input with channels-last strides, as the block's
layer norm hands it over. Variants of the key/value projection, same weights:

- ``batched``: gate the weight per image, one ``torch.bmm`` over the flattened input;
- ``activation``: scale the input by the gate, then the shared 1x1 conv;
- ``conv``: (one image) gate the 1x1 conv weight and run it as an ordinary ``conv2d``.

Medians of interleaved calls; ratios against the CSA layer of the same width.

    python benchmarks/gate_variants.py                 # forward, batch 1
    python benchmarks/gate_variants.py --batch 4 --backward
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from glmha.attention import build_attention
from glmha.attention.csa import channel_attention


def key_value(layer, x: torch.Tensor, variant: str) -> torch.Tensor:
    b, c, h, w = x.shape
    gate = layer.calibration(x.mean(dim=(2, 3)))
    if variant == "batched":
        return torch.bmm(layer.kv.weight.flatten(1) * gate[:, None, :], x.flatten(2)).reshape(b, -1, h, w)
    if variant == "activation":
        return layer.kv(x * gate[:, :, None, None])
    return torch.cat([F.conv2d(x[i : i + 1], layer.kv.weight * gate[i][None, :, None, None]) for i in range(b)])


def glmha_forward(layer, x: torch.Tensor, variant: str) -> torch.Tensor:
    b, c, h, w = x.shape
    q = layer.q_dwconv(layer.q(x)).reshape(b, layer.num_heads, -1, h * w)
    k, v = (t.reshape(b, layer.num_heads, -1, h * w) for t in layer.kv_dwconv(key_value(layer, x, variant)).chunk(2, 1))
    return layer.project_out(channel_attention(q, k, v, layer.temperature).reshape(b, c, h, w))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for dim, side in [(48, 256), (96, 128), (192, 64)]:
        heads = max(1, dim // 48)
        csa = build_attention("csa", "mdta", dim=dim, num_heads=heads)
        layer = build_attention("glmha", "mdta", dim=dim, num_heads=heads)
        x = torch.randn(args.batch, side, side, dim).permute(0, 3, 1, 2).requires_grad_(args.backward)
        calls = {"csa": lambda: csa(x)}
        calls.update({v: (lambda v=v: glmha_forward(layer, x, v)) for v in ("batched", "activation", "conv")})
        with torch.no_grad():
            ref = calls["batched"]()
            diff = max((calls[v]() - ref).abs().max().item() for v in ("activation", "conv"))

        def run(fn):
            out = fn()
            if args.backward:
                out.sum().backward()

        times = {name: [] for name in calls}
        with torch.set_grad_enabled(args.backward):
            for fn in calls.values():
                run(fn)  # warm-up
            for _ in range(args.repeats):
                for name, fn in calls.items():
                    start = time.perf_counter()
                    run(fn)
                    times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        cells = ", ".join(f"{name} {ms:.1f} ms ({ms / med['csa']:.2f})" for name, ms in med.items())
        print(f"C={dim} N={side}x{side} batch {args.batch}: {cells}; max output difference {diff:.1e}")


if __name__ == "__main__":
    main()
