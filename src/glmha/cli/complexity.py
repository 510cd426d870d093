"""``glmha complexity``: parameters and MACs of every model and attention, or one attention layer's sweep."""
from __future__ import annotations

import argparse

from .common import CommandError, check_output_file

HELP = "parameters and MACs of every model and attention"
EXAMPLES = (
    "glmha complexity\n  glmha complexity --models restormer --size 128 128\n"
    "  glmha complexity --sweep --attentions csa glmha linformer performer reformer --plot sweep.png"
)


# What Ctrl-C or SIGTERM leaves, printed after "interrupted; " (formatted with the arguments).
INTERRUPTED = "nothing was written (the --plot file is written whole, at the end)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=None, help="models to profile (default: all)")
    parser.add_argument("--attentions", nargs="+", default=None, help="attentions to compare (default: all)")
    parser.add_argument(
        "--size", nargs=2, type=int, default=None, metavar=("H", "W"),
        help="input height and width (default: the sizes of the papers' tables, per model)",
    )
    parser.add_argument("--sweep", action="store_true", help="instead: one attention layer's cost against C and N")
    parser.add_argument("--plot", default=None, help="PNG of the sweep, with --sweep (default: complexity_sweep.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace the --plot file if it exists")
    parser.add_argument("--sweep-pixels", type=int, default=64 * 64, help="N while C varies (default: %(default)s)")
    parser.add_argument("--sweep-dim", type=int, default=48, help="C while N varies (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    from ..analysis.complexity import attention_sweep, format_size_tables, format_sweep, plot_sweep
    from ..attention import list_attentions
    from ..models import list_models

    attentions = args.attentions or list_attentions()
    unknown = sorted(set(attentions) - set(list_attentions()))
    if unknown:
        raise CommandError(f"unknown attention {unknown[0]!r}; available: {list_attentions()}")
    if args.plot is not None and not args.sweep:
        raise CommandError("--plot draws the attention sweep: add --sweep (the model table has no plot)")
    if args.sweep:
        args.plot = args.plot or "complexity_sweep.png"
        if args.sweep_pixels < 1 or args.sweep_dim < 1:
            raise CommandError("--sweep-pixels and --sweep-dim must be positive")
        check_output_file(args.plot, "--plot", overwrite=args.overwrite)
        sweepable = [a for a in attentions if a in list_attentions("mdta")]
        rows = attention_sweep(sweepable, fixed_pixels=args.sweep_pixels, fixed_dim=args.sweep_dim)
        print(format_sweep(rows))
        plot_sweep(rows, args.plot)
        print(f"\nplot saved to {args.plot}")
        return
    models = args.models or list_models()
    for name in models:
        if name not in list_models():
            raise CommandError(f"unknown model {name!r}; available: {list_models()}")
    if args.size is not None and min(args.size) < 1:
        raise CommandError(f"--size must be positive, got {args.size[0]} {args.size[1]}")
    try:
        tables = format_size_tables(models, attentions, tuple(args.size) if args.size else None)
    except ValueError as err:  # a size a model cannot take, named with the model
        raise CommandError(str(err)) from None
    print(tables)
