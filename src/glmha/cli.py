"""The ``glmha`` command line: one sub-command per job.

Each sub-command is a pair of functions, ``_add_<name>(parser)`` declaring its arguments
and ``_run_<name>(args)`` doing the work, listed in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import sys
import textwrap

import torch

from . import create_model, list_models, profile
from .attention import list_attentions
from .checkpoint import CheckpointError
from .validation import InputError


class CommandError(RuntimeError):
    """A failure the user can act on: printed as one line, exit code 1."""


# --------------------------------------------------------------------------- complexity
def _add_complexity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=None, help="models to profile (default: all)")
    parser.add_argument("--attentions", nargs="+", default=None, help="attentions to compare (default: all)")
    parser.add_argument("--size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"), help="input height and width")


def model_size_table(models: list[str], attentions: list[str], height: int, width: int) -> list[dict]:
    """Params and MACs of each model with each attention, counted on the meta device (no memory)."""
    rows = []
    for name in models:
        for attention in attentions:
            with torch.device("meta"):
                try:
                    model = create_model(name, attention=attention)
                except ValueError:
                    continue  # this attention has no implementation for this model's block family
                stats = profile(model, *model.example_inputs(height, width))
            rows.append({"model": name, "attention": attention, "params": stats.params, "macs": stats.macs})
    return rows


def format_size_table(rows: list[dict], height: int, width: int) -> str:
    lines = [
        f"| model | attention | params (M) | GMACs at {height}x{width} | GFLOPs |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['attention']} | {r['params'] / 1e6:.3f} | {r['macs'] / 1e9:.2f} | {2 * r['macs'] / 1e9:.2f} |"
        )
    return "\n".join(lines)


def _run_complexity(args: argparse.Namespace) -> None:
    models = args.models or list_models()
    attentions = args.attentions or list_attentions()
    for name in models:
        if name not in list_models():
            raise CommandError(f"unknown model {name!r}; available: {list_models()}")
    height, width = args.size
    print(format_size_table(model_size_table(models, attentions, height, width), height, width))


COMMANDS = {
    "complexity": (
        _add_complexity,
        _run_complexity,
        "parameters and MACs of every model and attention",
        "glmha complexity\n  glmha complexity --models restormer --size 128 128",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glmha",
        description="Guided low-rank multi-head attention for image restoration and spectral reconstruction.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, _, help_text, examples) in COMMANDS.items():
        command = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog="examples:\n  " + textwrap.dedent(examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command][1](args)
    except (CommandError, InputError, CheckpointError, FileNotFoundError) as err:
        print(f"glmha {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"glmha {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
