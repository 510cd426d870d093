"""``glmha rank``: eigen-analysis of the attention maps (paper Fig. 1) and suggested GLMHA ranks."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import CommandError, add_model_arguments, grey_conversion, json_argument, model_from_args, model_title

if TYPE_CHECKING:
    from torch import nn

HELP = "eigen-analysis of the attention maps (paper Fig. 1): spectrum plot, rank table, suggested GLMHA ranks"
EXAMPLES = (
    "glmha rank --checkpoint deraining.pth --preset deraining --suggest\n"
    "  glmha rank photos/ --checkpoint runs/restormer_deraining_csa --output rank/\n"
    "  glmha rank --spectrum eigen --share 0.99 --suggest   # an untrained Restormer"
)


# What Ctrl-C or SIGTERM leaves, printed after "interrupted; " (formatted with the arguments).
INTERRUPTED = "the files written so far in {output} are whole; run the same command again to write them all"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .choices import SPECTRA

    parser.add_argument("images", nargs="*", help="images (files, folders or globs) to analyse; default: built-in photographs (CASSI models: built-in scenes)")
    add_model_arguments(parser)
    parser.add_argument("--size", type=int, default=128, help="side of the built-in photographs (default: 128)")
    parser.add_argument("--num-images", type=int, default=4, help="how many built-in photographs (default: 4, at most 6)")
    parser.add_argument("--spectrum", choices=SPECTRA, default="singular", help="singular values (default) or eigenvalue magnitudes")
    parser.add_argument("--output", default="glmha-rank", help="folder for attention_spectrum.png, ranks.md, ranks.json (default: glmha-rank)")
    parser.add_argument("--suggest", action="store_true", help="print per-layer GLMHA ranks keeping --share of each spectrum")
    parser.add_argument("--share", type=float, default=0.95, help="spectrum share the suggested ranks keep (default: 0.95)")


def run(args: argparse.Namespace) -> None:
    from ..analysis.eigen import analyse_attention, format_rank_suggestion
    from ..inference.reconstruction import builtin_cassi_inputs, builtin_real_cassi_inputs
    from ..io.images import builtin_photographs, find_images, read_image
    from ..models.mst_real import RealMST
    from ..validation import InputError

    if not 0 < args.share <= 1:
        raise CommandError(f"--share must be in (0, 1], got {args.share}")
    if args.size < 1 or args.num_images < 1:
        raise CommandError(f"--size and --num-images must be positive, got {args.size} and {args.num_images}")
    model = model_from_args(args)
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
                images.append(read_image(path, channels, grey_conversion(model)))
            except InputError as err:
                skipped.append(str(err))
        if not images:
            raise CommandError(f"none of the {len(skipped)} image(s) could be read: " + "; ".join(skipped))
    else:
        images = builtin_photographs(args.num_images, args.size, channels)
    try:
        report = analyse_attention(model, images, args.output, args.spectrum, suggest_share=args.share, title=model_title(model))
    except ValueError as err:
        raise CommandError(str(err)) from None
    print(report.table)
    print(f"\nwrote {report.plot}, {report.table_path}, {report.ranks_path}")
    if args.suggest:
        spec = getattr(model, "spec", None)
        model_kwargs = spec.model_kwargs if spec else json_argument(args.model_kwargs, "--model-kwargs")
        warm_start = spec is None or (spec.attention == "csa" and not spec.layers)  # init="svd" converts CSA layers only
        suggestion = format_rank_suggestion(report, name, model_kwargs, load=_load_call(args, model), warm_start=warm_start)
        print(f"\n# GLMHA ranks keeping {args.share:.0%} of each layer's spectrum:\n{suggestion}")
    if skipped:
        raise CommandError(f"{len(skipped)} image(s) skipped: " + "; ".join(skipped))


def _load_call(args: argparse.Namespace, model: nn.Module) -> str | None:
    """The ``glmha.load_model(...)`` call that loads the model this command analysed, as it loaded it; None without a checkpoint."""
    from ..models.checkpoint import read_model_spec, resolve_checkpoint

    spec = getattr(model, "spec", None)
    if not args.checkpoint or spec is None:
        return None
    recorded = read_model_spec(resolve_checkpoint(args.checkpoint)) is not None
    call = [repr(str(args.checkpoint))]
    if spec.preset:  # given, recorded, or recognised from the keys (then naming it keeps the load quiet)
        call.append(f"preset={spec.preset!r}")
    if args.model or not (recorded or spec.preset):  # a file without record: the model the command built
        call.append(f"model={spec.name!r}")
    if args.attention:
        call.append(f"attention={args.attention!r}")
    attention_kwargs = json_argument(args.attention_kwargs, "--attention-kwargs")
    if attention_kwargs:
        call.append(f"attention_kwargs={attention_kwargs!r}")
    call += [f"{key}={value!r}" for key, value in json_argument(args.model_kwargs, "--model-kwargs").items()]
    return f"glmha.load_model({', '.join(call)})"
