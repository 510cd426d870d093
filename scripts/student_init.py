"""How close a GLMHA student starts to its CSA teacher, before any training (docs/distillation.md).

For a teacher of ``scripts/distillation_evidence.py`` (its run folder), on the held-out images of
the evidence: PSNR of the converted model's output against the teacher's, per layer (only that
layer converted at rank ratio 0.5, with the SVD tokens and with the tokens chosen on data) and
for whole students (rank ratio 0.5 everywhere; ranks keeping 95 % of each spectrum; ranks and
tokens chosen on data at the MACs of rank ratio 0.5).

    python scripts/student_init.py distillation-evidence/deraining/seed0/teacher --task deraining \\
        --width 8 --blocks 1 1 1 2 --image-size 64 --patch-size 32
"""
from __future__ import annotations

import argparse
import copy
import dataclasses

import numpy as np
import torch

from glmha.analysis import allocation, profile
from glmha.analysis.eigen import apply_ranks
from glmha.attention.convert import svd_init_
from glmha.attention.glmha import resolve_rank
from glmha.models.checkpoint import load_model
from glmha.experiments.demo import BUDGETS, _test_batches
from glmha.experiments.distill import ANALYSIS_INPUTS, _batches, build_student
from glmha.experiments.study import study_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher")
    parser.add_argument("--task", default="deraining")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--blocks", type=int, nargs=4, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--patch-size", type=int, default=None)
    args = parser.parse_args()
    sizes = {"width": args.width, "blocks": tuple(args.blocks) if args.blocks else None, "image_size": args.image_size, "patch_size": args.patch_size}
    budget = dataclasses.replace(BUDGETS["default"], test_images=16, **{k: v for k, v in sizes.items() if v is not None})
    task = study_tasks(budget, 0, [args.task])[0]
    engine_task = task.engine_task()
    teacher = load_model(args.teacher, verbose=False).eval()
    test = _test_batches(task)
    with torch.no_grad():
        references = [engine_task.predict(teacher, b).double() for b in test]

    def to_teacher(model) -> float:
        with torch.no_grad():
            return float(np.mean([10 * np.log10(1 / float((engine_task.predict(model.eval(), b).double() - r).square().mean()))
                                  for b, r in zip(test, references)]))

    analysis = [b["input"] for b in _batches({**task.config["data"]["train"], "augment": False}, ANALYSIS_INPUTS)]
    print("| layer | dim / heads | SVD tokens (dB) | tokens chosen on data (dB) |\n| --- | --- | ---: | ---: |")
    names = allocation.csa_layers(teacher)
    captured = allocation.capture_layer_inputs(teacher, [(x,) for x in analysis], names)
    for name in names:
        layer = teacher.get_submodule(name)
        rank = resolve_rank(layer.dim, layer.num_heads, rank_ratio=0.5)
        svd = apply_ranks(copy.deepcopy(teacher), {name: rank}, "glmha")
        data = copy.deepcopy(svd)
        svd_init_(data.get_submodule(name), layer, tokens=allocation.kept_tokens(allocation.token_orders(layer, captured[name]), rank))
        print(f"| {name} | {layer.dim} / {layer.num_heads} | {to_teacher(svd):.2f} | {to_teacher(data):.2f} |")
    macs = profile(teacher, test[0]["input"]).macs
    print("\n| student | MACs saved | PSNR to the teacher (dB) |\n| --- | ---: | ---: |")
    for label, options in [("rank ratio 0.5, SVD tokens", {"rank_ratio": 0.5}), ("ranks keeping 95 % of each spectrum", {"share": 0.95}),
                           ("ranks and tokens chosen on data", {})]:
        student, _ = build_student(teacher, analysis, **options)
        print(f"| {label} | {1 - profile(student, test[0]['input']).macs / macs:.1%} | {to_teacher(student):.2f} |")


if __name__ == "__main__":
    main()
