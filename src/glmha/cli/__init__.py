"""The ``glmha`` command line: one sub-command per job.

Each sub-command is a module of this package with ``HELP``, ``EXAMPLES``, ``INTERRUPTED`` (what
Ctrl-C or SIGTERM leaves, formatted with the arguments), ``add_arguments(parser)`` declaring its
arguments and ``run(args)`` calling the library, listed in ``COMMANDS``. Building the parser
imports no library module (the choices are in :mod:`.choices`): ``glmha --help`` does not wait
for PyTorch. What the commands share (the model options, the one-line :class:`CommandError`,
the interrupt handling) is in :mod:`.common`.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from types import ModuleType

from .._version import __version__
from . import complexity, demo, distill, evaluate, export, prepare, rank, reconstruct, restore, score, study, train
from .common import CommandError, check_device, interrupted_message, print_error, sigterm_as_interrupt, user_errors

__all__ = ["COMMANDS", "CommandError", "build_parser", "main"]

# In the order of ``glmha --help``.
COMMANDS: dict[str, ModuleType] = {
    "prepare": prepare,
    "score": score,
    "reconstruct": reconstruct,
    "demo": demo,
    "study": study,
    "distill": distill,
    "complexity": complexity,
    "rank": rank,
    "restore": restore,
    "export": export,
    "train": train,
    "evaluate": evaluate,
}

# Commands whose KEY=VALUE overrides may stand anywhere, between and after the options too.
OVERRIDE_COMMANDS = ("train", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``glmha`` and every command in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="glmha",
        description="Guided low-rank multi-head attention for image restoration and spectral reconstruction.",
    )
    parser.add_argument("--version", action="version", version=f"glmha {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        subparser = sub.add_parser(
            name,
            help=command.HELP,
            description=command.HELP,
            epilog="examples:\n  " + textwrap.dedent(command.EXAMPLES),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``glmha`` with ``argv`` (default: the command line); the exit code."""
    import logging

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command in OVERRIDE_COMMANDS and all("=" in item and not item.startswith("-") for item in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.parse_args(argv)  # argparse's own message for what is not an option of the command
    # the package's warnings (clipped values, converted counts, rounded tiles) as one line each
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"glmha {args.command}: warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    package_log = logging.getLogger("glmha")
    package_log.addHandler(handler)
    command = COMMANDS[args.command]
    try:
        with sigterm_as_interrupt():
            if isinstance(getattr(args, "device", None), str):
                check_device(args.device)
            command.run(args)
    # before user_errors(), whose imports would run again after an interrupt that stopped them
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM; glmha train and distill say themselves what they kept
        print(f"glmha {args.command}: {interrupted_message(err, command.INTERRUPTED.format(**vars(args)))}", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    except user_errors() as err:
        from ..validation import error_message

        return print_error(args.command, error_message(err))
    except OSError as err:  # files: permissions, full disks, a folder where a file was expected ...
        where = f": {err.filename}" if err.filename else ""
        return print_error(args.command, f"{err.strerror or err}{where}")
    finally:
        package_log.removeHandler(handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
