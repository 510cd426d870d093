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
from ._version import __version__
from .attention import list_attentions
from .analysis.eigen import SPECTRA, analyse_attention, format_rank_suggestion
from .checkpoint import CheckpointError
from .images import builtin_photographs, find_images, read_image, restore_files
from .models.mst_real import RealMST
from .reconstruction import (
    CUBE_FORMATS, MEASUREMENT_SUFFIXES, band_wavelengths, builtin_cassi_inputs, builtin_real_cassi_inputs,
    reconstruct_cassi_files, reconstruct_real_cassi_files, reconstruct_rgb_files,
)
from .validation import InputError, error_message


class CommandError(RuntimeError):
    """A failure the user can act on: printed as one line, exit code 1."""


# --------------------------------------------------------------------------- complexity
def _add_complexity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=None, help="models to profile (default: all)")
    parser.add_argument("--attentions", nargs="+", default=None, help="attentions to compare (default: all)")
    parser.add_argument(
        "--size", nargs=2, type=int, default=None, metavar=("H", "W"),
        help="input height and width (default: the sizes of the papers' tables, per model)",
    )
    parser.add_argument("--sweep", action="store_true", help="instead: one attention layer's cost against C and N")
    parser.add_argument("--plot", default=None, help="PNG of the sweep, with --sweep (default: complexity_sweep.png)")
    parser.add_argument("--sweep-pixels", type=int, default=64 * 64, help="N while C varies (default: %(default)s)")
    parser.add_argument("--sweep-dim", type=int, default=48, help="C while N varies (default: %(default)s)")


# Input sizes of the papers' complexity tables; other models are profiled at 256x256.
PAPER_SIZES = {
    "restormer": [(256, 256), (128, 128)],
    "mst_plus_plus": [(256, 256), (482, 512)],
    "mst_l": [(256, 256)],
}


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
                try:
                    stats = profile(model, *model.example_inputs(height, width))
                except ValueError as err:  # e.g. a size the architecture cannot take
                    raise CommandError(f"{name} at {height}x{width}: {err}") from None
            rows.append({
                "model": name, "attention": attention, "params": stats.params, "macs": stats.macs,
                "channels": model.in_channels,
            })
    return rows


def format_size_table(rows: list[dict], height: int, width: int) -> str:
    lines = [
        f"| model | attention | params (M) | GMACs at {height}x{width} | GFLOPs | params vs CSA | GMACs vs CSA |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    csa = {r["model"]: r for r in rows if r["attention"] == "csa"}
    for r in rows:
        base = csa.get(r["model"])
        versus = (
            f"{r['params'] - base['params']:+,} | {(r['macs'] - base['macs']) / 1e9:+.2f}" if base else "- | -"
        )
        lines.append(
            f"| {r['model']} | {r['attention']} | {r['params'] / 1e6:.3f} | {r['macs'] / 1e9:.2f} | {2 * r['macs'] / 1e9:.2f} | {versus} |"
        )
    return "\n".join(lines)


def _run_complexity(args: argparse.Namespace) -> None:
    from .analysis.complexity import attention_sweep, format_sweep, plot_sweep

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
        _check_output_file(args.plot, "--plot")
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
    sizes = {name: [tuple(args.size)] if args.size else PAPER_SIZES.get(name, [(256, 256)]) for name in models}
    tables = []
    for height, width in dict.fromkeys(size for name in models for size in sizes[name]):
        at_size = [name for name in models if (height, width) in sizes[name]]
        tables.append(format_size_table(model_size_table(at_size, attentions, height, width), height, width))
    print("\n\n".join(tables))


# --------------------------------------------------------------------------- shared: checks before work starts
def _check_output_file(path: str, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, or in a folder that cannot be written."""
    from pathlib import Path

    from .images import prepare_output_dir

    target = Path(path)
    if target.is_dir():
        raise CommandError(f"{option} {path} is a folder; give a file name")
    prepare_output_dir(target.parent if str(target.parent) else ".")


def _check_device(text: str) -> None:
    """Refuse a device this machine does not have, in one line, before a model is built."""
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


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's to fix (bad input, files, configs), printed as one line."""
    from .data.restoration import DatasetError
    from .engine.config import ConfigError

    return (CommandError, InputError, CheckpointError, ConfigError, DatasetError)


# --------------------------------------------------------------------------- shared: a model from arguments
def _add_model_arguments(parser: argparse.ArgumentParser, default_model: str | None = "restormer", checkpoint_required: bool = False) -> None:
    from .presets import list_presets

    group = parser.add_argument_group("model (this project's checkpoints describe themselves: --checkpoint alone is enough)")
    default_text = default_model or "mst_plus_plus for RGB, mst_l with --mask"
    group.add_argument("--checkpoint", required=checkpoint_required, default=None,
                       help="weights: this project's .safetensors, a run folder of glmha train, or an official .pth")
    group.add_argument("--preset", choices=list_presets(), default=None, metavar="PRESET",
                       help="an official release file's settings (see the README's table): " + ", ".join(list_presets()))
    group.add_argument("--model", default=None, help=f"model name, for weights that do not record it (default: {default_text}); see `glmha complexity`")
    group.add_argument("--attention", default=None, help="attention of the model (default: the checkpoint's, else csa, the official one)")
    group.add_argument("--model-kwargs", default="{}", metavar="JSON", help='constructor arguments, e.g. \'{"dim": 16}\'')
    group.add_argument("--attention-kwargs", default="{}", metavar="JSON", help='attention options, e.g. \'{"rank_ratio": 0.5}\'')
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")


def _add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inference")
    group.add_argument("--tile", type=_tile_argument, default="auto",
                       help="auto (default): whole images when they fit --max-memory, else the largest tiles that do; "
                            "a side in pixels (rounded to the model's multiple); or none: always whole")
    group.add_argument("--overlap", type=int, default=32, help="overlap of neighbouring tiles in pixels (default: 32)")
    group.add_argument("--max-memory", default=None, metavar="SIZE",
                       help="memory budget of --tile auto, e.g. 1GB, 512MiB (default: 80%% of the GPU's free memory, or half the available RAM)")
    group.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="fp32 (default), or bf16 / fp16 autocast (norms and softmax stay in float32); bf16 runs on CPUs too")


def _tile_argument(text: str) -> int | str | None:
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, none or a side in pixels, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a tile side must be positive, got {value}")
    return value


def _inference_options(args: argparse.Namespace) -> dict:
    from .inference import parse_memory

    if args.overlap < 0:
        raise CommandError(f"--overlap must be 0 or more pixels, got {args.overlap}")
    return {"tile": args.tile, "overlap": args.overlap, "precision": args.precision,
            "max_memory": parse_memory(args.max_memory) if args.max_memory else None}


def _json_argument(text: str, option: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CommandError(f"{option} is not valid JSON ({err.msg}): {text}") from None
    if not isinstance(value, dict):
        raise CommandError(f"{option} must be a JSON object like '{{\"dim\": 16}}', got {text}")
    return value


def _model_from_args(args: argparse.Namespace, default_model: str = "restormer") -> torch.nn.Module:
    """The model of ``--checkpoint`` (its record, ``--preset`` or the model flags), on ``--device`` in eval mode.

    Without a checkpoint (``glmha rank`` of an untrained model): built from ``--preset`` or the
    model flags, ``--model`` defaulting to ``default_model``.
    """
    from .checkpoint import load_model, read_model_spec, resolve_checkpoint
    from .models.registry import ModelSpec
    from .presets import get_preset

    model_kwargs = _json_argument(args.model_kwargs, "--model-kwargs")
    attention_kwargs = _json_argument(args.attention_kwargs, "--attention-kwargs")
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


def _model_title(model: torch.nn.Module) -> str:
    spec = getattr(model, "spec", None)
    if spec is None:
        return type(model).__name__
    return f"{spec.preset or spec.name} ({spec.attention}{', per-layer' if spec.layers else ''})"


# --------------------------------------------------------------------------- rank
def _add_rank(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", help="images (files, folders or globs) to analyse; default: built-in photographs (CASSI models: built-in scenes)")
    _add_model_arguments(parser)
    parser.add_argument("--size", type=int, default=128, help="side of the built-in photographs (default: 128)")
    parser.add_argument("--num-images", type=int, default=4, help="how many built-in photographs (default: 4, at most 6)")
    parser.add_argument("--spectrum", choices=SPECTRA, default="singular", help="singular values (default) or eigenvalue magnitudes")
    parser.add_argument("--output", default="glmha-rank", help="folder for attention_spectrum.png, ranks.md, ranks.json (default: glmha-rank)")
    parser.add_argument("--suggest", action="store_true", help="print per-layer GLMHA ranks keeping --share of each spectrum")
    parser.add_argument("--share", type=float, default=0.95, help="spectrum share the suggested ranks keep (default: 0.95)")


def _run_rank(args: argparse.Namespace) -> None:
    if not 0 < args.share <= 1:
        raise CommandError(f"--share must be in (0, 1], got {args.share}")
    if args.size < 1 or args.num_images < 1:
        raise CommandError(f"--size and --num-images must be positive, got {args.size} and {args.num_images}")
    model = _model_from_args(args)
    name = model.spec.name if getattr(model, "spec", None) else type(model).__name__
    channels = int(getattr(model, "in_channels", 3))
    skipped: list[str] = []
    if isinstance(model, RealMST):  # real CASSI: simulated camera measurements of built-in scenes
        if args.images:
            raise CommandError(f"{args.model} reconstructs real CASSI measurements; glmha rank analyses it on built-in scenes, give no images")
        if model.bands != 28:
            raise CommandError(f"the built-in CASSI scenes have 28 bands, {args.model} takes {model.bands}")
        images = builtin_real_cassi_inputs(args.num_images, args.size)
    elif getattr(model, "mask_guided", False):  # CASSI: measurements of built-in scenes
        if args.images:
            raise CommandError(f"{name} reconstructs CASSI snapshots; glmha rank analyses it on built-in scenes, give no images")
        if channels != 28:
            raise CommandError(f"the built-in CASSI scenes have 28 bands, {name} takes {channels}")
        images = builtin_cassi_inputs(args.num_images, args.size)
    elif getattr(model, "dual_pixel_task", False):
        raise CommandError("glmha rank analyses single-image models; the dual-pixel model takes view pairs")
    elif args.images:
        images = []
        for path in find_images(args.images):
            try:
                images.append(read_image(path, channels, _grey_conversion(model)))
            except InputError as err:
                skipped.append(str(err))
        if not images:
            raise CommandError(f"none of the {len(skipped)} image(s) could be read: " + "; ".join(skipped))
    else:
        images = builtin_photographs(args.num_images, args.size, channels)
    try:
        report = analyse_attention(model, images, args.output, args.spectrum, suggest_share=args.share, title=_model_title(model))
    except ValueError as err:
        raise CommandError(str(err)) from None
    print(report.table)
    print(f"\nwrote {report.plot}, {report.table_path}, {report.ranks_path}")
    if args.suggest:
        model_kwargs = model.spec.model_kwargs if getattr(model, "spec", None) else _json_argument(args.model_kwargs, "--model-kwargs")
        suggestion = format_rank_suggestion(report, name, model_kwargs)
        print(f"\n# GLMHA ranks keeping {args.share:.0%} of each layer's spectrum:\n{suggestion}")
    if skipped:
        raise CommandError(f"{len(skipped)} image(s) skipped: " + "; ".join(skipped))


def _grey_conversion(model: torch.nn.Module) -> str | None:
    """How a preset's official test script turns colour files grey (None: this package's luma)."""
    from .presets import get_preset

    spec = getattr(model, "spec", None)
    return get_preset(spec.preset).grey_conversion if spec is not None and spec.preset else None


# --------------------------------------------------------------------------- restore
def _add_restore(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="images to restore: files, folders or glob patterns "
                        "(dual pixel: DPDD folders with inputL/ and inputR/, or the left views with --right)")
    _add_model_arguments(parser, checkpoint_required=True)
    parser.add_argument("--output", required=True, help="folder for the restored PNGs (same names, same sizes)")
    parser.add_argument("--right", nargs="+", default=None, metavar="IMAGES", help="dual pixel: the right views, paired in order with the images (the left views)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=None, help="bits per channel of the PNGs (default: the input's, 8 or 16)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist already (never an input)")
    _add_inference_arguments(parser)


def _run_restore(args: argparse.Namespace) -> None:
    from .images import find_dual_pixel_pairs

    model = _model_from_args(args)
    if getattr(model, "dual_pixel_task", False):
        paths = find_dual_pixel_pairs(args.images, args.right)
    elif args.right:
        raise CommandError(f"--right gives the right views of a dual-pixel model; {_model_title(model)} takes single images")
    else:
        paths = find_images(args.images)
    written, failed = restore_files(model, paths, args.output, bit_depth=args.bit_depth, grey_conversion=_grey_conversion(model),
                                    overwrite=args.overwrite, **_inference_options(args))
    print(f"restored {len(written)} of {len(paths)} image(s) into {args.output}")
    if failed:
        raise CommandError(f"{len(failed)} of {len(paths)} image(s) skipped: " + "; ".join(failed))


# --------------------------------------------------------------------------- train / evaluate
def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment config (YAML), e.g. configs/restormer/deraining_csa.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.total_iters=1000 model.dim=16 (anywhere on the command line)")
    parser.add_argument("--variant", default=None, help="a variant of the config, e.g. smoke (tiny, CPU, built-in data)")
    parser.add_argument("--smoke", action="store_const", const="smoke", dest="variant", help="same as --variant smoke")
    parser.add_argument("--output-dir", default=None, help="run folder (default: the config's output_dir)")
    parser.add_argument("--resume", choices=("auto", "never", "force"), default="auto",
                        help="auto (default): continue from the run folder's newest checkpoint if any, refusing one trained with "
                             "another config; force: continue even then; never: start afresh, refusing a folder with checkpoints")
    parser.add_argument("--init", default=None, metavar="PATH",
                        help="start a new run from these weights (train.init_from): an official .pth, a .safetensors or a run folder; "
                             "CSA weights into a GLMHA config are converted by SVD")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the process's GPU if any)")


def _engine_errors():
    from .data.restoration import DatasetError
    from .engine import ConfigError

    return (ConfigError, DatasetError, ValueError, TypeError, KeyError)


def _run_train(args: argparse.Namespace) -> None:
    import json

    from .engine import train

    try:
        overrides = list(args.overrides) + ([f"train.init_from={json.dumps(args.init)}"] if args.init else [])
        result = train(args.config, overrides, variant=args.variant, output_dir=args.output_dir,
                       resume=args.resume, device=args.device)
    except _engine_errors() as err:
        raise CommandError(error_message(err)) from None
    if result.best:
        print("best validation: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.best.items()))
    print(f"weights: {result.weights}")


def _add_evaluate(parser: argparse.ArgumentParser) -> None:
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


def _run_evaluate(args: argparse.Namespace) -> None:
    from .engine import evaluate

    if args.output_dir:
        from .images import prepare_output_dir

        prepare_output_dir(args.output_dir)  # before the model runs: an unwritable folder fails now, not at the end
    try:
        result = evaluate(args.config, args.checkpoint, args.overrides, variant=args.variant, sets=args.sets,
                          output_dir=args.output_dir, device=args.device, tile=args.tile, precision=args.precision,
                          save_images=args.save_images or None)
    except _engine_errors() as err:
        raise CommandError(error_message(err)) from None
    print(result.markdown)
    print(f"written: {result.csv_path}, {result.markdown_path}")
    for name, folder in result.outputs.items():
        print(f"outputs of {name}: {folder}")


# --------------------------------------------------------------------------- prepare / score
def _add_prepare(parser: argparse.ArgumentParser) -> None:
    from .data.prepare import PREPARE_TASKS

    parser.add_argument("task", choices=sorted(PREPARE_TASKS), help="which official preparation script to run")
    parser.add_argument("--source", required=True, help="the downloaded data (see `glmha prepare --help` and docs/data.md)")
    parser.add_argument("--output", default="Datasets", help="the Datasets root the configs read (default: Datasets)")
    parser.add_argument("--val-source", default=None, help="gopro: the test frames for the validation crops (default: <output>/test/GoPro)")


def _run_prepare(args: argparse.Namespace) -> None:
    from .data.prepare import prepare
    from .data.restoration import DatasetError

    try:
        report = prepare(args.task, args.source, args.output, args.val_source)
    except (DatasetError, ValueError, OSError) as err:
        raise CommandError(str(err)) from None
    print(f"{report.done} source image(s) prepared now, {report.skipped} already done; {report.patches} patch file set(s) written under {args.output}")


def _add_score(parser: argparse.ArgumentParser) -> None:
    from .metrics.protocols import PROTOCOLS

    parser.add_argument("protocol", choices=sorted(p for p in PROTOCOLS if PROTOCOLS[p].metrics), help="the official protocol")
    parser.add_argument("--restored", nargs="+", required=True, help="restored images (files or folders), Idenoised.mat (sidd), Test_result.mat (cassi) or cubes (ntire2022)")
    parser.add_argument("--target", default=None, help="ground truth: a folder of images / cubes, or ValidationGtBlocksSrgb.mat (sidd)")
    parser.add_argument("--grayscale", action="store_true", help="gaussian_denoising: read both as grey images (the grey denoising script)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="dpdd: 16 for the dual-pixel (16-bit) data (default: 8)")
    parser.add_argument("--per-image", action="store_true", help="print every image's row")
    parser.add_argument("--output", default=None, help="also write the rows to this CSV file")


def _run_score(args: argparse.Namespace) -> None:
    from .data.restoration import DatasetError
    from .engine.evaluate import format_markdown, write_csv
    from .engine.score import score_files

    restored = args.restored[0] if len(args.restored) == 1 else args.restored
    if args.output:
        _check_output_file(args.output, "--output")
    try:
        rows, mean = score_files(args.protocol, restored, args.target, args.grayscale, args.bit_depth)
    except (DatasetError, ValueError, KeyError, OSError) as err:
        raise CommandError(error_message(err)) from None
    print(format_markdown((rows if args.per_image else []) + [mean]))
    if args.output:
        print(f"written: {write_csv(args.output, rows + [mean])}")


# --------------------------------------------------------------------------- demo
def _add_demo(parser: argparse.ArgumentParser) -> None:
    from .demo import BUDGETS

    parser.add_argument("--output", default="glmha-demo", help="report folder (default: glmha-demo)")
    parser.add_argument("--budget", choices=list(BUDGETS), default="default", help="training budget (default: 6 to 16 minutes on one CPU thread; tiny: for tests)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed shared by both models (default: 0)")
    parser.add_argument("--tasks", nargs="+", default=None, help="run only these built-in tasks (default: all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch CPU threads (default: PyTorch's); the same seed, budget and thread count give the same numbers")


def _run_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    try:
        result = run_demo(args.output, args.budget, args.device, args.seed, args.tasks, threads=args.threads)
    except ValueError as err:
        raise CommandError(str(err)) from None
    print(f"\n{result.table}\n\nreport: {result.report_md} and {result.report_html} ({result.seconds / 60:.1f} min)")


# --------------------------------------------------------------------------- study
def _add_study(parser: argparse.ArgumentParser) -> None:
    from .demo import BUDGETS
    from .study import DEFAULT_TASKS, DEFAULT_VARIANTS

    parser.add_argument("--output", default="glmha-study", help="study folder (default: glmha-study); an existing one is resumed")
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS),
                        help=f"built-in tasks (default: {' '.join(DEFAULT_TASKS)}; also real_cassi)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        help="attentions and options, e.g. csa glmha glmha:rank_ratio=0.25 glmha:calibration=false glmha:ranks=suggest")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0 .. N-1 (default: 3)")
    parser.add_argument("--budget", choices=list(BUDGETS), default="default", help="the demo's training budgets (default: default)")
    parser.add_argument("--reference", default=None, help="the variant differences are taken against (default: the first)")
    parser.add_argument("--test-images", type=int, default=16, help="held-out images per task (default: 16)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations per model instead of the budget's (the schedule runs to its end)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")


def _run_study(args: argparse.Namespace) -> None:
    from .study import run_study

    if args.seeds < 1:
        raise CommandError(f"--seeds must be at least 1, got {args.seeds}")
    try:
        result = run_study(args.output, args.tasks, args.variants, args.seeds, args.budget, args.device, args.reference,
                           test_images=args.test_images, iterations=args.iterations)
    except ValueError as err:
        raise CommandError(str(err)) from None
    print(f"\n{result.markdown.read_text()}\nwritten: {result.markdown}, {result.json}, {result.figure} ({result.seconds / 60:.1f} min)")


# --------------------------------------------------------------------------- distill
def _add_distill(parser: argparse.ArgumentParser) -> None:
    from .engine.tasks import LOSSES
    from .presets import list_presets

    parser.add_argument("--teacher", required=True, help="the CSA model: this project's checkpoint or run folder, or an official .pth with --preset")
    parser.add_argument("--preset", choices=list_presets(), default=None, metavar="PRESET", help="the teacher's official release settings")
    parser.add_argument("--inputs", required=True, help="'builtin' (the task's built-in data) or a folder of degraded images (no ground truth needed)")
    parser.add_argument("--test", default=None, help="held-out data: 'builtin', a folder with input/ and target/ (task metrics too), or a folder of inputs")
    parser.add_argument("--output", required=True, help="run folder (an existing one is resumed)")
    parser.add_argument("--task", default=None, help="deraining, gaussian_denoising, rgb_to_hsi, ... (default: from the preset or the model)")
    ranks = parser.add_mutually_exclusive_group()
    ranks.add_argument("--macs-saving", type=float, default=None,
                       help="share of the teacher's MACs the student saves, with per-layer ranks and tokens that change the teacher's "
                            "output on the inputs least (default: what rank ratio 0.5 for every layer saves)")
    ranks.add_argument("--rank-ratio", type=float, default=None, help="one GLMHA rank ratio for every layer instead")
    ranks.add_argument("--share", type=float, default=None,
                       help="per-layer ranks keeping this share of each attention spectrum on the inputs instead (as glmha rank --suggest)")
    parser.add_argument("--loss", choices=sorted(LOSSES), default=None,
                        help="distance to the teacher's output (default: l1; relative_l1 for RGB-to-HSI, whose MRAE is relative)")
    parser.add_argument("--iterations", type=int, default=1000, help="training iterations (default: 1000)")
    parser.add_argument("--batch-size", type=int, default=4, help="default: 4")
    parser.add_argument("--patch-size", type=int, default=64, help="training crop side (default: 64)")
    parser.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate, cosine-annealed (default: 2e-4)")
    parser.add_argument("--feature-weight", type=float, default=0.0,
                        help="weight of the L1 distance between student and teacher block features (default: 0, outputs only)")
    parser.add_argument("--builtin-images", type=int, default=24, help="images of the built-in data (default: 24; 8 held out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if available)")


def _run_distill(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .distill import data_spec, default_task, distill

    for name in ("iterations", "batch_size", "patch_size", "builtin_images"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    for name in ("share", "rank_ratio"):
        if getattr(args, name) is not None and not 0 < getattr(args, name) <= 1:
            raise CommandError(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(args, name)}")
    if args.macs_saving is not None and not 0 < args.macs_saving < 1:
        raise CommandError(f"--macs-saving must be in (0, 1), got {args.macs_saving}")
    try:
        teacher = load_model(args.teacher, args.device or "cpu", args.preset, verbose=False)
        task = args.task or default_task(teacher)
        grey = next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 1  # grey denoisers
        spectral = task == "rgb_to_hsi"
        train_data = data_spec(task, args.inputs, grey, args.builtin_images, seed=args.seed,
                               crop_size=args.patch_size if spectral else None)
        if not spectral or train_data["type"] != "synthetic_rgb2hsi":
            train_data.pop("crop_size", None)
        test_data = None if args.test is None else data_spec(task, args.test, grey, max(1, args.builtin_images // 3), seed=args.seed + 1000)
        result = distill(teacher, args.output, train_data, test_data, task=task, rank_ratio=args.rank_ratio, share=args.share,
                         macs_saving=args.macs_saving, loss=args.loss, iterations=args.iterations, batch_size=args.batch_size,
                         patch_size=None if train_data["type"] == "synthetic_rgb2hsi" else args.patch_size,
                         lr=args.lr, feature_weight=args.feature_weight, seed=args.seed, device=args.device)
    except (ValueError, CheckpointError) as err:
        raise CommandError(str(err)) from None
    print(result.report.read_text())
    print(f"student: {result.student}")


# --------------------------------------------------------------------------- reconstruct
def _add_reconstruct(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="RGB images, or with --mask or a real-data model (mst_*_real) CASSI measurements / cubes (.mat, .npy): files, folders or globs")
    _add_model_arguments(parser, default_model=None, checkpoint_required=True)
    parser.add_argument("--mask", default=None, help="CASSI coded aperture (.mat with variable 'mask', or .npy): reconstruct snapshots with MST (optional for mst_*_real)")
    parser.add_argument("--key", default=None, help="variable of the measurement in .mat inputs (default: meas, meas_real, measurement, y; else a cube to measure)")
    parser.add_argument("--output", required=True, help="folder for the cubes")
    parser.add_argument("--format", choices=CUBE_FORMATS, default="mat",
                        help="mat (v7.3, 'cube' H x W x bands and 'bands' in nm; default) or npy (bands x H x W, wavelengths in <name>.json)")
    parser.add_argument("--preview", action="store_true", help="also write <name>_srgb.png (CIE 1931 observer, D65) and <name>_bands.png (every band, own colour scale)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist already (never an input)")
    _add_inference_arguments(parser)  # tiles: RGB inputs only


def _run_reconstruct(args: argparse.Namespace) -> None:
    from .data.cassi import load_mask

    def read_mask():
        try:
            return load_mask(args.mask)
        except (ValueError, KeyError, OSError) as err:
            raise CommandError(f"cannot read the mask {args.mask}: {err}") from None

    cassi = args.mask is not None
    model = _model_from_args(args, "mst_l" if cassi else "mst_plus_plus")
    real = isinstance(model, RealMST)  # the raw measurement alone; a mask only checks sizes (or measures cubes)
    if cassi and not real and not getattr(model, "mask_guided", False):
        raise CommandError(f"--mask reconstructs CASSI snapshots with a mask-guided MST model (mst_s, mst_m, mst_l) "
                           f"or a real-data one (mst_s_real, ...), not {_model_title(model)}")
    if not cassi and getattr(model, "mask_guided", False):
        raise CommandError(f"{_model_title(model)} reconstructs CASSI snapshots: pass the coded aperture with --mask")
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
                                                **_inference_options(args))
    print(f"reconstructed {len(written)} of {len(paths)} input(s) into {args.output}")
    if failed:
        raise CommandError(f"{len(failed)} of {len(paths)} input(s) skipped: " + "; ".join(failed))


# --------------------------------------------------------------------------- export
def _add_export(parser: argparse.ArgumentParser) -> None:
    from .export import FORMATS

    _add_model_arguments(parser, checkpoint_required=True)
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default) or torchscript")
    parser.add_argument("--output", required=True, help="the file to write, e.g. model.onnx or model.pt")
    parser.add_argument("--size", nargs=2, type=int, default=(64, 64), metavar=("H", "W"),
                        help="the example input's size (default: 64 64); the file takes any size")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")


def _run_export(args: argparse.Namespace) -> None:
    from .export import export_model

    if args.device != "cpu":
        raise CommandError("export runs on the CPU (the file runs anywhere); leave out --device")
    _check_output_file(args.output, "--output")
    model = _model_from_args(args)
    height, width = args.size
    multiple = int(getattr(model, "size_multiple", 1))
    if min(height, width) < multiple or (getattr(model, "mask_guided", False) and (height % multiple or width % multiple)):
        raise CommandError(f"--size must be at least {multiple} (and a multiple of {multiple} for CASSI models), got {height} {width}")
    second = (height + multiple * 3, width + multiple * 5) if getattr(model, "mask_guided", False) else (height + 13, width + 29)
    try:
        result = export_model(model, args.output, args.format, sizes=((height, width), second), opset=args.opset)
    except (RuntimeError, ValueError, NotImplementedError, ImportError) as err:  # the exporters' errors (torch.onnx's are RuntimeErrors)
        raise CommandError(f"export to {args.format} failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    sizes = " and ".join(f"{h}x{w}" for h, w in result.checked_sizes)
    if result.max_abs_diff is None:
        print(f"wrote {result.path} ({args.format}); onnxruntime is not installed, so it was not checked (pip install 'glmha[export]')")
    else:
        print(f"wrote {result.path} ({args.format}); checked against PyTorch at {sizes}: max abs difference {result.max_abs_diff:.2e}")


COMMANDS = {
    "prepare": (
        _add_prepare,
        _run_prepare,
        "cut downloaded training data into the official patches (GoPro, SIDD, DFWB, DPDD); resumable",
        "glmha prepare gopro --source Datasets/Downloads/GoPro --output Datasets\n"
        "  glmha prepare sidd --source Datasets/Downloads/SIDD --output Datasets\n"
        "  glmha prepare dfwb --source Datasets/Downloads --output Datasets\n"
        "  glmha prepare dpdd --source Datasets/Downloads/DPDD --output Datasets",
    ),
    "score": (
        _add_score,
        _run_score,
        "score restored files with an official evaluation protocol (no model needed)",
        "glmha score deraining --restored results/Rain100H --target Datasets/test/Rain100H/target\n"
        "  glmha score gopro_hide --restored results/GoPro --target Datasets/test/GoPro/target --per-image\n"
        "  glmha score sidd --restored results/Real_Denoising/SIDD/mat/Idenoised.mat --target Datasets/test/SIDD/ValidationGtBlocksSrgb.mat\n"
        "  glmha score cassi --restored results/Test_result.mat",
    ),
    "reconstruct": (
        _add_reconstruct,
        _run_reconstruct,
        "spectral reconstruction: RGB images to cubes (MST++), or CASSI measurements and mask to cubes (MST)",
"glmha reconstruct photos/ --preset mst_plus_plus --checkpoint mst_plus_plus.pth --output cubes/ --preview\n"
        "  glmha reconstruct 'ARAD_1K_*.jpg' --checkpoint runs/mst_plus_plus_glmha --output cubes/ --format npy\n"
        "  glmha reconstruct measurements/ --mask mask.mat --preset mst_l --checkpoint mst_l.pth --output cubes/\n"
        "  glmha reconstruct Truth/scene01.mat --mask mask.mat --preset mst_s --checkpoint mst_s.pth --output out/  # a cube: measured first\n"
        "  glmha reconstruct TSA_real_data/Measurements/ --mask TSA_real_data/mask.mat --model mst_l_real --checkpoint mst_l_real.pth --output real/",
    ),
    "demo": (
        _add_demo,
        _run_demo,
        "train the CSA and the GLMHA version of small models side by side on built-in data; write a report",
        "glmha demo\n  glmha demo --budget tiny --output /tmp/demo\n  glmha demo --budget long --device cuda --tasks deraining",
    ),
    "study": (
        _add_study,
        _run_study,
        "train attention variants side by side over seeds on built-in tasks; means, spreads and paired differences",
        "glmha study\n  glmha study --tasks deraining --variants csa glmha glmha:rank_ratio=0.25 --seeds 5\n"
        "  glmha study --budget tiny --output /tmp/study  # seconds, for a try",
    ),
    "distill": (
        _add_distill,
        _run_distill,
        "a trained CSA model (an official release file too) into GLMHA, from input images alone",
        "glmha distill --teacher runs/restormer_deraining_csa --inputs builtin --test builtin --output distilled/\n"
        "  glmha distill --teacher deraining.pth --preset deraining --inputs rainy/ --test Test100/ --output distilled/ --iterations 20000",
    ),
    "complexity": (
        _add_complexity,
        _run_complexity,
        "parameters and MACs of every model and attention",
        "glmha complexity\n  glmha complexity --models restormer --size 128 128\n"
        "  glmha complexity --sweep --attentions csa glmha linformer performer reformer --plot sweep.png",
    ),
    "rank": (
        _add_rank,
        _run_rank,
        "eigen-analysis of the attention maps (paper Fig. 1): spectrum plot, rank table, suggested GLMHA ranks",
        "glmha rank --checkpoint deraining.pth --preset deraining --suggest\n"
        "  glmha rank photos/ --checkpoint runs/restormer_deraining_csa --output rank/\n"
        "  glmha rank --spectrum eigen --share 0.99 --suggest   # an untrained Restormer",
    ),
    "restore": (
        _add_restore,
        _run_restore,
        "restore image files (a file, a folder or a glob) with a checkpoint; PNG outputs of the same size",
        "glmha restore rainy/ --preset deraining --checkpoint deraining.pth --output derained/\n"
        "  glmha restore 'photos/*.jpg' --checkpoint runs/restormer_motion_deblurring_glmha --output sharp/ --max-memory 2GB\n"
        "  glmha restore DPDD/test/ --preset dual_pixel_defocus_deblurring --checkpoint dual_pixel_defocus_deblurring.pth --output out/\n"
        "  glmha restore noisy.png --preset gaussian_color_denoising_blind --checkpoint gaussian_color_denoising_blind.pth "
        "--output out/ --device cuda --precision bf16 --tile 720",
    ),
    "export": (
        _add_export,
        _run_export,
        "export a checkpoint to ONNX or TorchScript (dynamic height and width), checked against PyTorch",
        "glmha export --checkpoint runs/restormer_deraining_glmha --output deraining.onnx\n"
        "  glmha export --preset mst_plus_plus --checkpoint mst_plus_plus.pth --format torchscript --output mst_plus_plus.pt",
    ),
    "train": (
        _add_train,
        _run_train,
        "train an experiment config (resumes from the run folder's last checkpoint)",
        "glmha train configs/restormer/deraining_csa.yaml --smoke\n"
        "  glmha train configs/restormer/deraining_glmha.yaml train.stages=null train.total_iters=1000 train.patch_size=128 data.train.root=/data/Rain13K\n"
        "  torchrun --nproc_per_node 8 --no-python glmha train configs/restormer/deraining_csa.yaml",
    ),
    "evaluate": (
        _add_evaluate,
        _run_evaluate,
        "evaluate a checkpoint with the paper's protocol on the config's test sets (CSV + Markdown)",
        "glmha evaluate configs/restormer/deraining_csa.yaml --checkpoint deraining.pth\n"
        "  glmha evaluate configs/mst/mst_l_cassi_csa.yaml --checkpoint best --save-images\n"
        "  glmha evaluate configs/restormer/deraining_csa.yaml --smoke --checkpoint runs/smoke/restormer_deraining_csa",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glmha",
        description="Guided low-rank multi-head attention for image restoration and spectral reconstruction.",
    )
    parser.add_argument("--version", action="version", version=f"glmha {__version__}")
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


# Commands whose KEY=VALUE overrides may stand anywhere, between and after the options too.
OVERRIDE_COMMANDS = ("train", "evaluate")


def main(argv: list[str] | None = None) -> int:
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
    try:
        if isinstance(getattr(args, "device", None), str):
            _check_device(args.device)
        COMMANDS[args.command][1](args)
    except _user_errors() as err:
        return _print_error(args.command, error_message(err))
    except OSError as err:  # files: permissions, full disks, a folder where a file was expected ...
        where = f": {err.filename}" if err.filename else ""
        return _print_error(args.command, f"{err.strerror or err}{where}")
    except KeyboardInterrupt as err:  # glmha train stops on SIGINT / SIGTERM with a checkpoint, and says so
        print(f"glmha {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    finally:
        package_log.removeHandler(handler)
    return 0


def _print_error(command: str, message: str) -> int:
    """One line on stderr, exit code 1."""
    print(f"glmha {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
