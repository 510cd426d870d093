"""Export small Restormer, MST++ and MST models (CSA and GLMHA) to ONNX and TorchScript; print how far each file is from PyTorch.

    python benchmarks/export_check.py                 # both formats, the models of tests/test_export.py
    python benchmarks/export_check.py --formats onnx

Each file is run at two input sizes (onnxruntime for ONNX, torch.jit.load for TorchScript);
the table gives the largest absolute difference to the PyTorch model and the export time.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import glmha
from glmha.inference.export import FORMATS, export_model

MODELS = {
    "Restormer (dim 8, 1 block per level)": ("restormer", {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}, ((64, 64), (37, 91))),
    "MST++ (1 stage)": ("mst_plus_plus", {"stage": 1}, ((64, 64), (37, 91))),
    "MST-S (1 block per level)": ("mst_s", {"num_blocks": [1, 1, 1]}, ((64, 64), (48, 80))),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    args = parser.parse_args()
    print("| model | attention | format | sizes | max abs diff | export time |")
    print("| --- | --- | --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for label, (name, kwargs, sizes) in MODELS.items():
            for attention in ("csa", "glmha"):
                torch.manual_seed(0)
                model = glmha.create_model(name, attention=attention, **kwargs).eval()
                for fmt in args.formats:
                    start = time.perf_counter()
                    result = export_model(model, Path(folder) / f"model.{fmt}", fmt, sizes=sizes)
                    seconds = time.perf_counter() - start
                    diff = "onnxruntime missing" if result.max_abs_diff is None else f"{result.max_abs_diff:.1e}"
                    shown = " and ".join(f"{h}x{w}" for h, w in sizes)
                    print(f"| {label} | {attention} | {fmt} | {shown} | {diff} | {seconds:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
