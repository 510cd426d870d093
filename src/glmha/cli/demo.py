"""``glmha demo``: the CSA and the GLMHA version of small models trained side by side on built-in data."""
from __future__ import annotations

import argparse

from .common import CommandError, Interrupted

HELP = "train the CSA and the GLMHA version of small models side by side on built-in data; write a report"
EXAMPLES = "glmha demo\n  glmha demo --budget tiny --output /tmp/demo\n  glmha demo --budget long --device cuda --tasks deraining"


# What Ctrl-C or SIGTERM leaves, printed after "interrupted; " (formatted with the arguments).
INTERRUPTED = (
    "the report is written at the end, so {output} holds none; "
    "run the command again to start over (the demo trains its runs afresh)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .choices import BUDGETS

    parser.add_argument("--output", default="glmha-demo", help="report folder (default: glmha-demo)")
    parser.add_argument("--budget", choices=list(BUDGETS), default="default", help="training budget (default: 6 to 16 minutes on one CPU thread; tiny: for tests)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed shared by both models (default: 0)")
    parser.add_argument("--tasks", nargs="+", default=None, help="run only these built-in tasks (default: all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch CPU threads (default: PyTorch's); the same seed, budget and thread count give the same numbers")


def run(args: argparse.Namespace) -> None:
    from ..experiments.demo import run_demo

    try:
        result = run_demo(args.output, args.budget, args.device, args.seed, args.tasks, threads=args.threads)
    except ValueError as err:
        raise CommandError(str(err)) from None
    except KeyboardInterrupt as err:  # the trainer's "run again to resume" is not so here: the demo trains its runs afresh
        raise Interrupted("", getattr(err, "exit_code", 130)) from None
    print(f"\n{result.table}\n\nreport: {result.report_md} and {result.report_html} ({result.seconds / 60:.1f} min)")
