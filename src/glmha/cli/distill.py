"""``glmha distill``: a trained CSA model into GLMHA, from input images alone."""
from __future__ import annotations

import argparse
import os

from .common import CommandError

HELP = "a trained CSA model (an official release file too) into GLMHA, from input images alone"
EXAMPLES = (
    "glmha distill --teacher runs/restormer_deraining_csa --inputs builtin --test builtin --output distilled/\n"
    "  glmha distill --teacher deraining.pth --preset deraining --inputs rainy/ --test Test100/ --output distilled/ --iterations 20000\n"
    "  torchrun --nproc_per_node 4 -m glmha.cli distill --teacher deraining.pth --preset deraining --inputs rainy/ --output distilled/ --batch-size 8"
)


# What Ctrl-C or SIGTERM leaves, printed after "interrupted; " (formatted with the arguments).
INTERRUPTED = "before the run started: nothing was written to {output}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .choices import LOSSES, PRESETS

    parser.add_argument("--teacher", required=True, help="the CSA model: this project's checkpoint or run folder, or an official .pth with --preset")
    parser.add_argument("--preset", choices=PRESETS, default=None, metavar="PRESET", help="the teacher's official release settings")
    parser.add_argument("--inputs", required=True, help="'builtin' (the task's built-in data) or a folder of degraded images (no ground truth needed)")
    parser.add_argument("--test", default=None, help="held-out data: 'builtin', a folder with input/ and target/ (task metrics too), or a folder of inputs")
    parser.add_argument("--output", required=True, help="run folder (an existing one is resumed)")
    parser.add_argument("--task", default=None, help="deraining, gaussian_denoising, rgb_to_hsi, ... (default: from the preset or the model)")
    ranks = parser.add_mutually_exclusive_group()
    ranks.add_argument("--macs-saving", type=float, default=None,
                       help="share of the teacher's MACs the student saves, with per-layer ranks and tokens that change the teacher's "
                            "output on the inputs least (default: what rank ratio 0.5 for every layer saves)")
    ranks.add_argument("--rank-ratio", type=float, default=None, help="one GLMHA rank ratio for every layer instead")
    ranks.add_argument("--share", type=float, default=None,
                       help="per-layer ranks keeping this share of each attention spectrum on the inputs instead (as glmha rank --suggest)")
    parser.add_argument("--loss", choices=sorted(LOSSES), default=None,
                        help="distance to the teacher's output (default: l1; relative_l1 for RGB-to-HSI, whose MRAE is relative)")
    parser.add_argument("--iterations", type=int, default=1000, help="training iterations (default: 1000)")
    parser.add_argument("--choice-minutes", type=float, default=5.0,
                        help="time the per-layer rank choice may take; when its measured estimate is longer, it is made on fewer and "
                             "smaller crops with fewer candidate ranks, and says so (default: 5; 0: the full choice however long)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="the global batch: under torchrun each of N processes trains on batch/N of it (default: 4)")
    parser.add_argument("--patch-size", type=int, default=64, help="training crop side (default: 64)")
    parser.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate, cosine-annealed (default: 2e-4)")
    parser.add_argument("--feature-weight", type=float, default=0.0,
                        help="weight of the L1 distance between student and teacher block features (default: 0, outputs only)")
    parser.add_argument("--builtin-images", type=int, default=24, help="images of the built-in data (default: 24; 8 held out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if available)")


def run(args: argparse.Namespace) -> None:
    import torch

    from ..experiments.distill import DistillInterrupted, data_spec, default_task, distill
    from ..models.checkpoint import CheckpointError, load_model

    for name in ("iterations", "batch_size", "patch_size", "builtin_images"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    for name in ("share", "rank_ratio"):
        if getattr(args, name) is not None and not 0 < getattr(args, name) <= 1:
            raise CommandError(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(args, name)}")
    if args.macs_saving is not None and not 0 < args.macs_saving < 1:
        raise CommandError(f"--macs-saving must be in (0, 1), got {args.macs_saving}")
    if not args.choice_minutes >= 0:
        raise CommandError(f"--choice-minutes must be 0 (no limit) or more, got {args.choice_minutes}")
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 speaks; the others' errors are its errors
    try:
        teacher = load_model(args.teacher, "cpu", args.preset, verbose=False)
        task = args.task or default_task(teacher)
        grey = next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 1  # grey denoisers
        del teacher  # distill reads the file itself, and references it rather than copying it
        spectral = task == "rgb_to_hsi"
        train_data = data_spec(task, args.inputs, grey, args.builtin_images, seed=args.seed,
                               crop_size=args.patch_size if spectral else None)
        if not spectral or train_data["type"] != "synthetic_rgb2hsi":
            train_data.pop("crop_size", None)
        test_data = None if args.test is None else data_spec(task, args.test, grey, max(1, args.builtin_images // 3), seed=args.seed + 1000)
        result = distill(args.teacher, args.output, train_data, test_data, task=task, preset=args.preset, rank_ratio=args.rank_ratio,
                         share=args.share, macs_saving=args.macs_saving, loss=args.loss, iterations=args.iterations,
                         batch_size=args.batch_size, patch_size=None if train_data["type"] == "synthetic_rgb2hsi" else args.patch_size,
                         lr=args.lr, feature_weight=args.feature_weight, seed=args.seed, device=args.device,
                         choice_budget_s=args.choice_minutes * 60 or None)
    except DistillInterrupted as err:
        if not err.main:
            raise SystemExit(err.exit_code) from None
        raise
    except (ValueError, CheckpointError) as err:
        if not main:
            raise SystemExit(1) from None
        raise CommandError(str(err)) from None
    if result.is_main:
        print(result.report.read_text())
        print(f"student: {result.student}")
