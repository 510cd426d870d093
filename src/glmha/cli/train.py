"""``glmha train``: train an experiment config."""
from __future__ import annotations

import argparse

from .common import CommandError, engine_errors

HELP = "train an experiment config (resumes from the run folder's last checkpoint)"
EXAMPLES = (
    "glmha train configs/restormer/deraining_csa.yaml --smoke\n"
    "  glmha train configs/restormer/deraining_glmha.yaml train.stages=null train.total_iters=1000 train.patch_size=128 data.train.root=/data/Rain13K\n"
    "  torchrun --nproc_per_node 8 --no-python glmha train configs/restormer/deraining_csa.yaml"
)

# What Ctrl-C or SIGTERM leaves, printed after "interrupted; " (formatted with the arguments).
INTERRUPTED = (
    "checkpoints written so far in the run folder are whole; "
    "run the same command again to resume from the newest"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> None:
    import json

    from ..engine import train
    from ..validation import error_message

    try:
        overrides = list(args.overrides) + ([f"train.init_from={json.dumps(args.init)}"] if args.init else [])
        result = train(args.config, overrides, variant=args.variant, output_dir=args.output_dir,
                       resume=args.resume, device=args.device)
    except engine_errors() as err:
        raise CommandError(error_message(err)) from None
    if result.best:
        print("best validation: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.best.items()))
    print(f"weights: {result.weights}")
