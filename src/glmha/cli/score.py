"""``glmha score``: restored files scored with an official evaluation protocol (no model)."""
from __future__ import annotations

import argparse

from .common import CommandError, check_output_file

HELP = "score restored files with an official evaluation protocol (no model needed)"
EXAMPLES = (
    "glmha score deraining --restored results/Rain100H --target Datasets/test/Rain100H/target\n"
    "  glmha score gopro_hide --restored results/GoPro --target Datasets/test/GoPro/target --per-image\n"
    "  glmha score sidd --restored results/Real_Denoising/SIDD/mat/Idenoised.mat --target Datasets/test/SIDD/ValidationGtBlocksSrgb.mat\n"
    "  glmha score cassi --restored results/Test_result.mat"
)


# What Ctrl-C or SIGTERM leaves, printed after "interrupted; " (formatted with the arguments).
INTERRUPTED = "nothing was written (--output is written whole, at the end)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .choices import SCORED_PROTOCOLS

    parser.add_argument("protocol", choices=SCORED_PROTOCOLS, help="the official protocol")
    parser.add_argument("--restored", nargs="+", required=True, help="restored images (files or folders), Idenoised.mat (sidd), Test_result.mat (cassi) or cubes (ntire2022)")
    parser.add_argument("--target", default=None, help="ground truth: a folder of images / cubes, or ValidationGtBlocksSrgb.mat (sidd)")
    parser.add_argument("--grayscale", action="store_true", help="gaussian_denoising: read both as grey images (the grey denoising script)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="dpdd: 16 for the dual-pixel (16-bit) data (default: 8)")
    parser.add_argument("--per-image", action="store_true", help="print every image's row")
    parser.add_argument("--output", default=None, help="also write the rows to this CSV file (not among the scored files)")
    parser.add_argument("--overwrite", action="store_true", help="replace the --output file if it exists (never a scored file)")


def run(args: argparse.Namespace) -> None:
    from ..data.restoration import DatasetError
    from ..engine.evaluate import format_markdown, write_csv
    from ..engine.score import score_files
    from ..validation import error_message

    restored = args.restored[0] if len(args.restored) == 1 else args.restored
    if args.output:
        check_output_file(args.output, "--output", inputs=[*args.restored, *([args.target] if args.target else [])], overwrite=args.overwrite)
    try:
        rows, mean = score_files(args.protocol, restored, args.target, args.grayscale, args.bit_depth)
    except (DatasetError, ValueError, KeyError, OSError) as err:
        raise CommandError(error_message(err)) from None
    print(format_markdown((rows if args.per_image else []) + [mean]))
    if args.output:
        print(f"written: {write_csv(args.output, rows + [mean], replace=args.overwrite)}")
