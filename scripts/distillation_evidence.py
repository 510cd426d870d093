"""The distillation evidence of docs/distillation.md: teacher, distilled student, GLMHA from scratch, SVD fine-tune.

Per task and seed, on the built-in data of the demo's ``default`` budget:

- teacher: the CSA model trained for B = ``--scale`` x the budget's iterations;
- scratch: GLMHA trained the same way for B (paired with the teacher: same shared-layer
  initialisation and data order, as ``glmha study`` pairs seeds);
- distilled: the teacher's GLMHA student (``glmha distill``'s default: per-layer ranks and tokens
  at the MACs of rank ratio 0.5, or ``--rank-ratio`` for every layer) trained ``--fraction`` x B
  iterations to reproduce the teacher's outputs on the training inputs (no ground truth);
- svd_finetune: the same warm-started student trained ``--fraction`` x B iterations on the ground truth.

All four are scored on the same held-out images: the task's metrics against the ground truth
and PSNR against the teacher's output. Finished runs are reused (the script resumes).

    python scripts/distillation_evidence.py --output distillation-evidence
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from glmha.models.checkpoint import load_model
from glmha.experiments.demo import BUDGETS, _test_batches, _to
from glmha.experiments.distill import distill
from glmha.engine.trainer import train
from glmha.experiments.study import _score, parse_variant, run_variant, study_tasks
from glmha.experiments.study_report import t_interval

MODELS = ("teacher", "distilled", "scratch", "svd_finetune")


@torch.no_grad()
def psnr_to_teacher(task, model, teacher) -> float:
    engine_task = task.engine_task()
    values = []
    for batch in _test_batches(task):
        batch = _to(batch, torch.device("cpu"))
        pred, ref = engine_task.predict(model, batch).double(), engine_task.predict(teacher, batch).double()
        values.append(float(10 * torch.log10(1 / (pred - ref).pow(2).mean().clamp_min(1e-20))))
    return float(np.mean(values))


def score(task, model, teacher) -> dict[str, float]:
    metrics, _, params, macs = _score(task, model.eval(), torch.device("cpu"))
    return {**metrics, "psnr_to_teacher": psnr_to_teacher(task, model, teacher), "params": params, "macs": macs}


def run_seed(task_name: str, seed: int, budget, args, folder: Path) -> dict[str, dict[str, float]]:
    scores_path = folder / "scores.json"
    if scores_path.is_file():
        return json.loads(scores_path.read_text())
    short = max(1, round(args.fraction * budget.iterations))
    task = study_tasks(budget, 0, [task_name])[0]
    run_variant(task, parse_variant("csa"), seed, folder / "teacher", torch.device("cpu"), progress=False)
    run_variant(task, parse_variant("glmha"), seed, folder / "scratch", torch.device("cpu"), progress=False)
    teacher = load_model(folder / "teacher", verbose=False).eval()
    config = task.config
    lr = config["optimizer"]["lr"]
    patch = config["train"].get("patch_size")
    distill(teacher, folder / "distilled", config["data"]["train"], task=task_name, rank_ratio=args.rank_ratio,
            iterations=short, batch_size=budget.batch_size, patch_size=patch, lr=lr, seed=seed, device="cpu", progress=False, keep_init=True)
    distilled = load_model(folder / "distilled", verbose=False).eval()
    student_ranks = json.loads((folder / "distilled" / "student_ranks.json").read_text())
    # the same warm start, fine-tuned on the ground truth with the task's own loss and schedule
    short_task = study_tasks(dataclasses.replace(budget, iterations=short), 0, [task_name])[0]
    short_config = {**short_task.config, "seed": seed}
    short_config["model"] = {**short_config["model"], "attention": "glmha"}
    short_config["train"] = {**short_config["train"], "progress": False}
    student = load_model(folder / "distilled" / "student_init.safetensors", verbose=False).train()
    train(short_config, output_dir=folder / "svd_finetune", device="cpu", model=student)
    models = {"teacher": teacher, "distilled": distilled, "scratch": load_model(folder / "scratch", verbose=False),
              "svd_finetune": student.eval()}
    scores = {name: score(task, model, teacher) for name, model in models.items()}
    scores["iterations"] = {"B": budget.iterations, "short": short}
    scores["student"] = student_ranks
    scores_path.write_text(json.dumps(scores, indent=1))
    return scores


def summarise(task_name: str, runs: list[dict], primary: str, higher: bool) -> str:
    b, short = runs[0]["iterations"]["B"], runs[0]["iterations"]["short"]
    digits = 3 if "psnr" in primary else 4
    lines = [f"### {task_name} (B = {b} iterations, 0.2 B = {short}; seeds {len(runs)})", "",
             f"| model | iterations | params (K) | GMACs | {primary} (mean ± sd) | {primary} - teacher (95 % CI) | PSNR to teacher (dB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    iterations = {"teacher": b, "scratch": b, "distilled": short, "svd_finetune": short}
    for name in MODELS:
        values = [r[name][primary] for r in runs]
        diffs = [r[name][primary] - r["teacher"][primary] for r in runs]
        to_teacher = [r[name]["psnr_to_teacher"] for r in runs]
        diff = "-" if name == "teacher" else f"{np.mean(diffs):+.{digits}f} ± {t_interval(diffs):.{digits}f}"
        tt = "-" if name == "teacher" else f"{np.mean(to_teacher):.2f} ± {np.std(to_teacher, ddof=1):.2f}"
        lines.append(f"| {name} | {iterations[name]} | {runs[0][name]['params'] / 1e3:.1f} | {runs[0][name]['macs'] / 1e9:.3f} | "
                     f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f} | {diff} | {tt} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="distillation-evidence")
    parser.add_argument("--tasks", nargs="+", default=["deraining", "rgb_to_hsi"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", default="default", choices=list(BUDGETS))
    parser.add_argument("--scale", type=float, default=4.0, help="B = scale x the budget's iterations (default: 4)")
    parser.add_argument("--fraction", type=float, default=0.2, help="distillation / fine-tuning iterations as a share of B (default: 0.2)")
    parser.add_argument("--rank-ratio", type=float, default=None,
                        help="one GLMHA rank ratio for every layer of the student (default: glmha distill's per-layer ranks at rank ratio 0.5's MACs)")
    parser.add_argument("--test-images", type=int, default=16)
    parser.add_argument("--width", type=int, default=None, help="Restormer width (default: the budget's)")
    parser.add_argument("--blocks", type=int, nargs=4, default=None, help="Restormer blocks per level (default: the budget's)")
    parser.add_argument("--image-size", type=int, default=None, help="side of the built-in images (default: the budget's)")
    parser.add_argument("--patch-size", type=int, default=None, help="training crop side (default: the budget's)")
    args = parser.parse_args()
    base = BUDGETS[args.budget]
    sizes = {"width": args.width, "blocks": tuple(args.blocks) if args.blocks else None, "image_size": args.image_size, "patch_size": args.patch_size}
    budget = dataclasses.replace(base, iterations=round(args.scale * base.iterations), test_images=args.test_images,
                                 **{k: v for k, v in sizes.items() if v is not None})
    output = Path(args.output)
    parts = []
    for task_name in args.tasks:
        runs = [run_seed(task_name, seed, budget, args, output / task_name / f"seed{seed}") for seed in range(args.seeds)]
        primary, higher = ("psnr", True) if task_name != "rgb_to_hsi" else ("mrae", False)
        parts.append(summarise(task_name, runs, primary, higher))
        if task_name == "rgb_to_hsi":
            parts.append(summarise(task_name + " (PSNR)", runs, "psnr", True))
    text = "\n\n".join(parts) + "\n"
    (output / "distillation.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
