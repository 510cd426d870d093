"""``glmha prepare``: cut downloaded training data into the official patches."""
from __future__ import annotations

import argparse

from .common import CommandError

HELP = "cut downloaded training data into the official patches (GoPro, SIDD, DFWB, DPDD); resumable"
EXAMPLES = (
    "glmha prepare gopro --source Datasets/Downloads/GoPro --output Datasets\n"
    "  glmha prepare sidd --source Datasets/Downloads/SIDD --output Datasets\n"
    "  glmha prepare dfwb --source Datasets/Downloads --output Datasets\n"
    "  glmha prepare dpdd --source Datasets/Downloads/DPDD --output Datasets"
)


# What Ctrl-C or SIGTERM leaves, printed after "interrupted; " (formatted with the arguments).
INTERRUPTED = (
    "patch files are written whole, and each finished source image is recorded in "
    "{output}/.glmha-prepare-{task}.done; run the same command again to continue"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .choices import PREPARE_TASKS

    parser.add_argument("task", choices=PREPARE_TASKS, help="which official preparation script to run")
    parser.add_argument("--source", required=True, help="the downloaded data (see `glmha prepare --help` and docs/data.md)")
    parser.add_argument("--output", default="Datasets", help="the Datasets root the configs read (default: Datasets)")
    parser.add_argument("--val-source", default=None, help="gopro: the test frames for the validation crops (default: <output>/test/GoPro)")


def run(args: argparse.Namespace) -> None:
    from ..data.prepare import prepare
    from ..data.restoration import DatasetError

    try:
        report = prepare(args.task, args.source, args.output, args.val_source)
    except (DatasetError, ValueError, OSError) as err:
        raise CommandError(str(err)) from None
    print(f"{report.done} source image(s) prepared now, {report.skipped} already done; {report.patches} patch file set(s) written under {args.output}")
