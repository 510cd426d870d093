#!/usr/bin/env python
"""Op-level CPU profile of one forward: where CSA and GLMHA spend their time.

Prints PyTorch profiler tables (self CPU time per op, and per op and input shape) for one
attention layer or a whole model, once per attention, after a warm-up call::

    python benchmarks/profile_ops.py --layer 48 256            # C=48, 256x256, channels-last input
    python benchmarks/profile_ops.py --model restormer 128     # whole model at 3x128x128
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import glmha
from glmha.attention import build_attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--layer", nargs=2, type=int, metavar=("C", "SIDE"), help="one attention layer")
    target.add_argument("--model", nargs=2, metavar=("NAME", "SIDE"), help="a whole model")
    parser.add_argument("--attentions", nargs="+", default=["csa", "glmha"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for attention in args.attentions:
        torch.manual_seed(0)
        if args.layer:
            channels, side = args.layer
            module = build_attention(attention, "mdta", dim=channels, num_heads=max(1, channels // 48), bias=False)
            # The block's layer norm hands the attention a channels-last tensor.
            inputs = (torch.randn(1, channels, side, side).contiguous(memory_format=torch.channels_last),)
        else:
            name, side = args.model[0], int(args.model[1])
            module = glmha.create_model(name, attention=attention)
            inputs = tuple(torch.rand_like(t) for t in module.example_inputs(side, side))
        module.eval()
        with torch.inference_mode():
            module(*inputs)
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                module(*inputs)
        print(f"== {attention}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=30))
        print(prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=28, max_shapes_column_width=70))


if __name__ == "__main__":
    main()
