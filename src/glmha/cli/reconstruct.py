"""``glmha reconstruct``: spectral cubes from RGB images (MST++) or from CASSI measurements (MST)."""
from __future__ import annotations

import argparse

from .common import (
    CommandError, add_inference_arguments, add_model_arguments, check_model_job, inference_options, model_from_args, model_title,
)

HELP = "spectral reconstruction: RGB images to cubes (MST++), or CASSI measurements and mask to cubes (MST)"
EXAMPLES = (
    "glmha reconstruct photos/ --preset mst_plus_plus --checkpoint mst_plus_plus.pth --output cubes/ --preview\n"
    "  glmha reconstruct 'ARAD_1K_*.jpg' --checkpoint runs/mst_plus_plus_glmha --output cubes/ --format npy\n"
    "  glmha reconstruct measurements/ --mask mask.mat --preset mst_l --checkpoint mst_l.pth --output cubes/\n"
    "  glmha reconstruct Truth/scene01.mat --mask mask.mat --preset mst_s --checkpoint mst_s.pth --output out/  # a cube: measured first\n"
    "  glmha reconstruct TSA_real_data/Measurements/ --mask TSA_real_data/mask.mat --model mst_l_real --checkpoint mst_l_real.pth --output real/"
)


# What Ctrl-C or SIGTERM leaves, printed after "interrupted; " (formatted with the arguments).
INTERRUPTED = (
    "the cubes written so far in {output} are whole files and no partial file was left; "
    "a rerun needs --overwrite for them, or only the remaining inputs"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .choices import CUBE_FORMATS

    parser.add_argument("inputs", nargs="+", help="RGB images, or with --mask or a real-data model (mst_*_real) CASSI measurements / cubes (.mat, .npy): files, folders or globs")
    add_model_arguments(parser, default_model=None, checkpoint_required=True)
    parser.add_argument("--mask", default=None, help="CASSI coded aperture (.mat with variable 'mask', or .npy): reconstruct snapshots with MST (optional for mst_*_real)")
    parser.add_argument("--key", default=None, help="variable of the measurement in .mat inputs (default: meas, meas_real, measurement, y; else a cube to measure)")
    parser.add_argument("--output", required=True, help="folder for the cubes")
    parser.add_argument("--format", choices=CUBE_FORMATS, default="mat",
                        help="mat (v7.3, 'cube' H x W x bands and 'bands' in nm; default) or npy (bands x H x W, wavelengths in <name>.json)")
    parser.add_argument("--preview", action="store_true", help="also write <name>_srgb.png (CIE 1931 observer, D65) and <name>_bands.png (every band, own colour scale)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist already (never an input)")
    add_inference_arguments(parser)  # tiles: RGB inputs only


def run(args: argparse.Namespace) -> None:
    from ..data.cassi import load_mask
    from ..inference.reconstruction import (
        MEASUREMENT_SUFFIXES, band_wavelengths, reconstruct_cassi_files, reconstruct_real_cassi_files, reconstruct_rgb_files,
    )
    from ..io.images import find_images
    from ..models.jobs import CASSI, REAL_CASSI, RGB_TO_HSI
    from ..models.mst_real import RealMST

    def read_mask():
        try:
            return load_mask(args.mask)
        except (ValueError, KeyError, OSError) as err:
            raise CommandError(f"cannot read the mask {args.mask}: {err}") from None

    cassi = args.mask is not None
    model = model_from_args(args, "mst_l" if cassi else "mst_plus_plus")
    check_model_job(model, "reconstruct", RGB_TO_HSI, CASSI, REAL_CASSI)  # before any input is read
    real = isinstance(model, RealMST)  # the raw measurement alone; a mask only checks sizes (or measures cubes)
    if cassi and not real and not getattr(model, "mask_guided", False):
        raise CommandError(f"--mask reconstructs CASSI snapshots with a mask-guided MST model (mst_s, mst_m, mst_l) "
                           f"or a real-data one (mst_s_real, ...), not {model_title(model)}")
    if not cassi and getattr(model, "mask_guided", False):
        raise CommandError(f"{model_title(model)} reconstructs CASSI snapshots: pass the coded aperture with --mask")
    if (args.ensemble or "none") != "none" and (cassi or real):
        raise CommandError("--ensemble is for RGB inputs: a CASSI measurement is sheared along its width by the disperser, "
                           "so flips and rotations do not commute with the model")
    if args.preview and band_wavelengths(int(model.out_channels)) is None:
        raise CommandError(f"--preview needs the band wavelengths, known for 31 (NTIRE 2022) and 28 (CASSI) bands, not {model.out_channels}")
    if real:
        paths = find_images(args.inputs, MEASUREMENT_SUFFIXES)
        written, failed = reconstruct_real_cassi_files(model, paths, args.output, args.format, read_mask() if cassi else None, args.key,
                                                       precision=args.precision, preview=args.preview, overwrite=args.overwrite)
    elif cassi:
        paths = find_images(args.inputs, MEASUREMENT_SUFFIXES)
        written, failed = reconstruct_cassi_files(model, paths, read_mask(), args.output, args.format, key=args.key,
                                                  precision=args.precision, preview=args.preview, overwrite=args.overwrite)
    else:
        paths = find_images(args.inputs)
        written, failed = reconstruct_rgb_files(model, paths, args.output, args.format, preview=args.preview, overwrite=args.overwrite,
                                                read_depth=args.read_depth or "native", **inference_options(args))
    print(f"reconstructed {len(written)} of {len(paths)} input(s) into {args.output}")
    if failed:
        raise CommandError(f"{len(failed)} of {len(paths)} input(s) skipped: " + "; ".join(failed))
