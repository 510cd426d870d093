"""``glmha evaluate``: a checkpoint on the config's test sets, with the paper's protocol."""
from __future__ import annotations

import argparse

from .common import CommandError, add_ensemble_argument, engine_errors

HELP = "evaluate a checkpoint with the paper's protocol on the config's test sets (CSV + Markdown)"
EXAMPLES = (
    "glmha evaluate configs/restormer/deraining_csa.yaml --checkpoint deraining.pth\n"
    "  glmha evaluate configs/mst/mst_l_cassi_csa.yaml --checkpoint best --save-images\n"
    "  glmha evaluate configs/restormer/deraining_csa.yaml --smoke --checkpoint runs/smoke/restormer_deraining_csa"
)


# What Ctrl-C or SIGTERM leaves, printed after "interrupted; " (formatted with the arguments).
INTERRUPTED = (
    "results.csv and results.md are written at the end, so none were; "
    "images saved so far (--save-images) are whole files"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the experiment config the model was trained with")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. data.test.Test100.root=/data/Test100 (anywhere on the command line)")
    parser.add_argument("--checkpoint", default=None,
                        help="last (the run's final weights), best (its best validation), a run folder, or a weights file (.safetensors or an official .pth); default: the config's evaluate.checkpoint, else last")
    parser.add_argument("--variant", default=None, help="a variant of the config, e.g. smoke")
    parser.add_argument("--smoke", action="store_const", const="smoke", dest="variant", help="same as --variant smoke")
    parser.add_argument("--sets", nargs="+", default=None, help="test sets to run (default: all of data.test)")
    parser.add_argument("--output-dir", default=None, help="where results.csv / results.md go (default: <run>/eval)")
    parser.add_argument("--tile", type=int, default=None, help="tiled inference for large images (not the official protocol, which restores whole images)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None, help="autocast precision (default: fp32, as the official scripts)")
    parser.add_argument("--save-images", action="store_true", help="also write the restored outputs as the official test scripts do")
    add_ensemble_argument(parser)  # default: the config's evaluate.ensemble, else none


def run(args: argparse.Namespace) -> None:
    from ..engine import evaluate
    from ..validation import error_message

    if args.output_dir:
        from ..io.images import prepare_output_dir

        prepare_output_dir(args.output_dir)  # before the model runs: an unwritable folder fails now, not at the end
    try:
        result = evaluate(args.config, args.checkpoint, args.overrides, variant=args.variant, sets=args.sets,
                          output_dir=args.output_dir, device=args.device, tile=args.tile, precision=args.precision,
                          save_images=args.save_images or None, ensemble=args.ensemble)
    except engine_errors() as err:
        raise CommandError(error_message(err)) from None
    print(result.markdown)
    print(f"written: {result.csv_path}, {result.markdown_path}")
    for name, folder in result.outputs.items():
        print(f"outputs of {name}: {folder}")
