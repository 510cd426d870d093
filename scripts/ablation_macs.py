"""Full-size cost of the GLMHA options compared in docs/ablations.md.

Parameters and MACs of Restormer at 3 x 256 x 256 and MST++ at 3 x 482 x 512 (the sizes of
the papers' tables) with CSA and each GLMHA option, counted on the meta device by
``glmha.profile`` (``torch.utils.flop_counter``), and the share of CSA's MACs saved.

    python scripts/ablation_macs.py
"""
from __future__ import annotations

import torch

from glmha import create_model, profile

VARIANTS = [
    ("csa", {}),
    ("glmha", {}),
    ("glmha", {"rank_ratio": 0.25}),
    ("glmha", {"rank_ratio": 0.75}),
    ("glmha", {"calibration": False}),
]
MODELS = [("restormer", (256, 256)), ("mst_plus_plus", (482, 512))]


def main() -> None:
    print("| model | input | variant | params | GMACs | MACs saved |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for name, (height, width) in MODELS:
        csa_macs = None
        for attention, options in VARIANTS:
            with torch.device("meta"):
                model = create_model(name, attention=attention, attention_kwargs=options)
                cost = profile(model, *model.example_inputs(height, width))
            csa_macs = csa_macs or cost.macs
            label = attention + "".join(f":{key}={str(value).lower()}" for key, value in options.items())
            print(f"| {name} | 3x{height}x{width} | {label} | {cost.params:,} | {cost.macs / 1e9:.2f} | "
                  f"{1 - cost.macs / csa_macs:.1%} |")


if __name__ == "__main__":
    main()
