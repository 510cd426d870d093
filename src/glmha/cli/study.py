"""``glmha study``: attention variants trained side by side over seeds, with means, spreads and paired differences."""
from __future__ import annotations

import argparse

from .common import CommandError

HELP = "train attention variants side by side over seeds on built-in tasks; means, spreads and paired differences"
EXAMPLES = (
    "glmha study\n  glmha study --tasks deraining --variants csa glmha glmha:rank_ratio=0.25 --seeds 5\n"
    "  glmha study --budget tiny --output /tmp/study  # seconds, for a try"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..experiments.demo import BUDGETS
    from ..experiments.study import DEFAULT_TASKS, DEFAULT_VARIANTS

    parser.add_argument("--output", default="glmha-study", help="study folder (default: glmha-study); an existing one is resumed")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS),
                        help=f"built-in tasks (default: {' '.join(DEFAULT_TASKS)}; also real_cassi)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        help="attentions and options, e.g. csa glmha glmha:rank_ratio=0.25 glmha:calibration=false glmha:ranks=suggest")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0 .. N-1 (default: 3)")
    parser.add_argument("--budget", choices=list(BUDGETS), default="default", help="the demo's training budgets (default: default)")
    parser.add_argument("--reference", default=None, help="the variant differences are taken against (default: the first)")
    parser.add_argument("--test-images", type=int, default=16, help="held-out images per task (default: 16)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations per model instead of the budget's (the schedule runs to its end)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")


def run(args: argparse.Namespace) -> None:
    from ..experiments.study import run_study

    if args.seeds < 1:
        raise CommandError(f"--seeds must be at least 1, got {args.seeds}")
    try:
        result = run_study(args.output, args.tasks, args.variants, args.seeds, args.budget, args.device, args.reference,
                           test_images=args.test_images, iterations=args.iterations)
    except ValueError as err:
        raise CommandError(str(err)) from None
    print(f"\n{result.markdown.read_text()}\nwritten: {result.markdown}, {result.json}, {result.figure} ({result.seconds / 60:.1f} min)")
