"""``glmha restore``: restore image files with a checkpoint."""
from __future__ import annotations

import argparse

from .common import (
    CommandError, add_inference_arguments, add_model_arguments, check_model_job, grey_conversion, inference_options, model_from_args,
    model_title, read_depth,
)

HELP = "restore image files (a file, a folder or a glob) with a checkpoint; PNG outputs of the same size"
EXAMPLES = (
    "glmha restore rainy/ --preset deraining --checkpoint deraining.pth --output derained/\n"
    "  glmha restore 'photos/*.jpg' --checkpoint runs/restormer_motion_deblurring_glmha --output sharp/ --max-memory 2GB\n"
    "  glmha restore DPDD/test/ --preset dual_pixel_defocus_deblurring --checkpoint dual_pixel_defocus_deblurring.pth --output out/\n"
    "  glmha restore noisy.png --preset gaussian_color_denoising_blind --checkpoint gaussian_color_denoising_blind.pth "
    "--output out/ --device cuda --precision bf16 --tile 720"
)


# What Ctrl-C or SIGTERM leaves, printed after "interrupted; " (formatted with the arguments).
INTERRUPTED = (
    "the PNGs written so far in {output} are whole files and no partial file was left; "
    "a rerun needs --overwrite for them, or only the remaining images"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="images to restore: files, folders or glob patterns "
                        "(dual pixel: DPDD folders with inputL/ and inputR/, or the left views with --right)")
    add_model_arguments(parser, checkpoint_required=True)
    parser.add_argument("--output", required=True, help="folder for the restored PNGs (same names, same sizes)")
    parser.add_argument("--right", nargs="+", default=None, metavar="IMAGES", help="dual pixel: the right views, paired in order with the images (the left views)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=None, help="bits per channel of the PNGs (default: the input's, 8 or 16)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist already (never an input)")
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> None:
    from ..inference.restoration import restore_files
    from ..io.images import find_dual_pixel_pairs, find_images
    from ..models.jobs import IMAGE

    model = model_from_args(args)
    check_model_job(model, "restore", IMAGE)  # before any image is read
    if getattr(model, "dual_pixel_task", False):
        paths = find_dual_pixel_pairs(args.images, args.right)
    elif args.right:
        raise CommandError(f"--right gives the right views of a dual-pixel model; {model_title(model)} takes single images")
    else:
        paths = find_images(args.images)
    written, failed = restore_files(model, paths, args.output, bit_depth=args.bit_depth, grey_conversion=grey_conversion(model),
                                    overwrite=args.overwrite, read_depth=read_depth(args, model), **inference_options(args))
    print(f"restored {len(written)} of {len(paths)} image(s) into {args.output}")
    if failed:
        raise CommandError(f"{len(failed)} of {len(paths)} image(s) skipped: " + "; ".join(failed))
