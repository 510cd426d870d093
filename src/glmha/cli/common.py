"""What the commands share: the one-line user error, checks before work starts, the model and inference options.

Library modules are imported inside the functions: ``glmha --help`` builds every command's
parser and should not wait for what only running a command needs.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from torch import nn


class CommandError(RuntimeError):
    """A failure the user can act on: printed as one line, exit code 1."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM; ``exit_code`` is 128 + the signal number (130, 143), as a shell reports a killed program.

    A KeyboardInterrupt (not an Exception) so that ``except Exception`` blocks let it through
    and the ``finally`` blocks and atomic writes clean up as for Ctrl-C.
    """

    def __init__(self, message: str = "", exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Interrupted` (exit code 143) while the block runs, as Ctrl-C raises KeyboardInterrupt.

    Python's default for SIGTERM is to die at once, skipping the clean-ups that remove temporary
    files and output claims. ``glmha train`` replaces this handler with its own while it trains
    (a checkpoint first), and restores it afterwards.
    """
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set in the main thread
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Interrupted("", 128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_message(err: KeyboardInterrupt, kept: str) -> str:
    """What to print after Ctrl-C / SIGTERM: the exception's own account (glmha train, glmha distill), else ``kept``."""
    return str(err) or f"interrupted; {kept}"


def print_error(command: str, message: str) -> int:
    """One line on stderr, exit code 1."""
    print(f"glmha {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's to fix (bad input, files, configs), printed as one line."""
    from ..data.restoration import DatasetError
    from ..engine.config import ConfigError
    from ..models.checkpoint import CheckpointError
    from ..validation import InputError

    return (CommandError, InputError, CheckpointError, ConfigError, DatasetError)


def engine_errors() -> tuple[type[BaseException], ...]:
    """What ``glmha train`` and ``glmha evaluate`` turn into one line: bad configs and data."""
    from ..data.restoration import DatasetError
    from ..engine import ConfigError

    return (ConfigError, DatasetError, ValueError, TypeError, KeyError)


# --------------------------------------------------------------------------- checks before work starts
def check_output_file(path: str, option: str, inputs: Sequence[str] = (), overwrite: bool = False) -> None:
    """Refuse, before any work, an output file that cannot or may not be written.

    Refused: a folder; a file in a folder that cannot be written; one of the command's
    ``inputs`` (or a file inside an input folder), even with ``overwrite``; an existing file
    unless ``overwrite``.
    """
    from pathlib import Path

    from ..io.folders import check_not_input
    from ..io.images import prepare_output_dir

    target = Path(path)
    if target.is_dir():
        raise CommandError(f"{option} {path} is a folder; give a file name")
    check_not_input(target, inputs, option)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise CommandError(f"{option} {path} exists already; pass --overwrite to replace it")
    prepare_output_dir(target.parent if str(target.parent) else ".")


def check_device(text: str) -> None:
    """Refuse a device this machine does not have, in one line, before a model is built."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise CommandError(f"--device {text!r} is not a device; use cpu, cuda, cuda:1, ...") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"--device {text}: no CUDA device is available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CommandError(f"--device {text}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise CommandError(f"--device {text}: only cpu, cuda and mps devices are supported")


def json_argument(text: str, option: str) -> dict:
    """``text`` of ``option`` as a JSON object."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CommandError(f"{option} is not valid JSON ({err.msg}): {text}") from None
    if not isinstance(value, dict):
        raise CommandError(f"{option} must be a JSON object like '{{\"dim\": 16}}', got {text}")
    return value


# --------------------------------------------------------------------------- a model from arguments
def add_model_arguments(parser: argparse.ArgumentParser, default_model: str | None = "restormer", checkpoint_required: bool = False) -> None:
    """The options :func:`model_from_args` reads."""
    from .choices import PRESETS

    group = parser.add_argument_group("model (this project's checkpoints describe themselves: --checkpoint alone is enough)")
    default_text = default_model or "mst_plus_plus for RGB, mst_l with --mask"
    group.add_argument("--checkpoint", required=checkpoint_required, default=None,
                       help="weights: this project's .safetensors, a run folder of glmha train, or an official .pth")
    group.add_argument("--preset", choices=PRESETS, default=None, metavar="PRESET",
                       help="an official release file's settings (see the README's table): " + ", ".join(PRESETS))
    group.add_argument("--model", default=None, help=f"model name, for weights that do not record it (default: {default_text}); see `glmha complexity`")
    group.add_argument("--attention", default=None, help="attention of the model (default: the checkpoint's, else csa, the official one)")
    group.add_argument("--model-kwargs", default="{}", metavar="JSON", help='constructor arguments, e.g. \'{"dim": 16}\'')
    group.add_argument("--attention-kwargs", default="{}", metavar="JSON", help='attention options, e.g. \'{"rank_ratio": 0.5}\'')
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")


def model_from_args(args: argparse.Namespace, default_model: str = "restormer") -> nn.Module:
    """The model of ``--checkpoint`` (its record, ``--preset`` or the model flags), on ``--device`` in eval mode.

    Without a checkpoint (``glmha rank`` of an untrained model): built from ``--preset`` or the
    model flags, ``--model`` defaulting to ``default_model``.
    """
    import torch

    from ..models import list_models
    from ..models.checkpoint import CheckpointError, load_model, read_model_spec, resolve_checkpoint
    from ..models.presets import get_preset
    from ..models.registry import ModelSpec

    model_kwargs = json_argument(args.model_kwargs, "--model-kwargs")
    attention_kwargs = json_argument(args.attention_kwargs, "--attention-kwargs")
    if args.model is not None and args.model not in list_models():
        raise CommandError(f"unknown model {args.model!r}; available: {list_models()}")
    if args.checkpoint:
        name = args.model
        flags_given = bool(model_kwargs or attention_kwargs or args.attention)
        if name is None and flags_given and args.preset is None and read_model_spec(resolve_checkpoint(args.checkpoint)) is None:
            name = default_model  # weights without a record, described by flags: the command's model
        try:
            return load_model(args.checkpoint, args.device, args.preset, model=name, attention=args.attention,
                              attention_kwargs=attention_kwargs, **model_kwargs)
        except CheckpointError as err:
            lines = str(err).splitlines()
            if len(lines) == 1:
                raise
            # one line: the verdict and the first listed keys, then what to check
            detail = " ".join(line.strip() for line in lines[1:3])
            built = next((line.strip() for line in lines if line.strip().startswith("model (from")), "")
            raise CommandError(f"{lines[0].rstrip(':')}: {detail} ...; {built + '; ' if built else ''}"
                               "check --preset, --model, --model-kwargs and --attention") from None
    if args.preset:
        preset = get_preset(args.preset)
        spec = ModelSpec(preset.model, {**preset.model_kwargs, **model_kwargs}, args.attention or "csa", attention_kwargs, preset=preset.name)
    else:
        spec = ModelSpec(args.model or default_model, model_kwargs, args.attention or "csa", attention_kwargs)
    try:
        model = spec.build()
    except (TypeError, ValueError) as err:
        raise CommandError(f"cannot build {spec.name!r} with attention {spec.attention!r}: {err}") from None
    try:
        model = model.to(torch.device(args.device))
    except (RuntimeError, AssertionError) as err:
        raise CommandError(f"cannot use device {args.device!r}: {err}") from None
    return model.eval()


def model_title(model: nn.Module) -> str:
    """The model's name in messages: its preset or model name and its attention."""
    spec = getattr(model, "spec", None)
    if spec is None:
        return type(model).__name__
    return f"{spec.preset or spec.name} ({spec.attention}{', per-layer' if spec.layers else ''})"


def check_model_job(model: nn.Module, command: str, *jobs: str) -> None:
    """Refuse, before any input is read, a model whose job (:mod:`glmha.models.jobs`) is none of ``jobs``,
    naming the command that runs it."""
    from ..models.jobs import COMMANDS, DESCRIPTIONS, model_job

    job = model_job(model)
    if job not in jobs:
        raise CommandError(f"{model_title(model)} {DESCRIPTIONS[job]}; use {COMMANDS[job]}, not glmha {command}")


def grey_conversion(model: nn.Module) -> str | None:
    """How a preset's official test script turns colour files grey (None: this package's luma)."""
    from ..models.presets import get_preset

    spec = getattr(model, "spec", None)
    return get_preset(spec.preset).grey_conversion if spec is not None and spec.preset else None


# --------------------------------------------------------------------------- inference options
def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The options :func:`inference_options` reads."""
    group = parser.add_argument_group("inference")
    group.add_argument("--tile", type=tile_argument, default="auto",
                       help="auto (default): whole images when they fit --max-memory, else the largest tiles that do; "
                            "a side in pixels (rounded to the model's multiple); or none: always whole")
    group.add_argument("--overlap", type=int, default=32, help="overlap of neighbouring tiles in pixels (default: 32)")
    group.add_argument("--max-memory", default=None, metavar="SIZE",
                       help="memory budget of --tile auto, e.g. 1GB, 512MiB (default: 80%% of the GPU's free memory, or half the available RAM; "
                            "on the CPU each tile's forward is also kept under a measured cap, as larger tiles run slower there)")
    group.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="fp32 (default), or bf16 / fp16 autocast (norms and softmax stay in float32); bf16 runs on CPUs too")
    group.add_argument("--tile-mode", choices=("blend", "official"), default="blend",
                       help="blend (default): each tile padded, overlaps blended with a ramp; official: the official Restormer "
                            "demo.py tiling (padded image, square tiles, overlaps averaged)")
    add_ensemble_argument(group)
    group.add_argument("--read-depth", choices=("native", "8"), default=None,
                       help="native: keep the files' precision (8 or 16 bits, float); 8: read as the official test scripts "
                            "(cv2.imread, 8-bit colour). Default: native, or the preset's official read")


def add_ensemble_argument(parser) -> None:
    """``--ensemble``, shared by restore, reconstruct and evaluate."""
    parser.add_argument("--ensemble", choices=("none", "mean", "median"), default=None,
                        help="x8 self-ensemble: run the 8 flips/rotations, invert each, combine by mean or median "
                             "(8 forwards: 8x the time); none (default). Not for CASSI")


def tile_argument(text: str) -> int | str | None:
    """``--tile``: auto, none (None) or a positive side in pixels."""
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, none or a side in pixels, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a tile side must be positive, got {value}")
    return value


def inference_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of the library's file functions (tile, overlap, precision, max_memory)."""
    from ..inference.memory import parse_memory

    if args.overlap < 0:
        raise CommandError(f"--overlap must be 0 or more pixels, got {args.overlap}")
    return {"tile": args.tile, "overlap": args.overlap, "precision": args.precision, "tile_mode": args.tile_mode,
            "ensemble": args.ensemble or "none", "max_memory": parse_memory(args.max_memory) if args.max_memory else None}


def read_depth(args: argparse.Namespace, model: nn.Module) -> str:
    """``--read-depth``, else the official read of the model's preset, else native."""
    from ..models.presets import get_preset

    if args.read_depth:
        return args.read_depth
    spec = getattr(model, "spec", None)
    return get_preset(spec.preset).read_depth if spec is not None and spec.preset else "native"
