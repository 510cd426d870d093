"""``glmha export``: a checkpoint to ONNX or TorchScript, checked against PyTorch."""
from __future__ import annotations

import argparse

from .common import CommandError, add_model_arguments, check_output_file, model_from_args

HELP = "export a checkpoint to ONNX or TorchScript (dynamic height and width), checked against PyTorch"
EXAMPLES = (
    "glmha export --checkpoint runs/restormer_deraining_glmha --output deraining.onnx\n"
    "  glmha export --preset mst_plus_plus --checkpoint mst_plus_plus.pth --format torchscript --output mst_plus_plus.pt"
)


# What Ctrl-C or SIGTERM leaves, printed after "interrupted; " (formatted with the arguments).
INTERRUPTED = "{output} was written whole or not at all (if written, perhaps not yet checked against PyTorch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .choices import EXPORT_FORMATS as FORMATS

    add_model_arguments(parser, checkpoint_required=True)
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default) or torchscript")
    parser.add_argument("--output", required=True, help="the file to write, e.g. model.onnx or model.pt")
    parser.add_argument("--size", nargs=2, type=int, default=(64, 64), metavar=("H", "W"),
                        help="the example input's size (default: 64 64); the file takes any size")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset, 18 or newer (default: the exporter's)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists (never the checkpoint)")


def run(args: argparse.Namespace) -> None:
    from ..inference.export import export_model, export_sizes

    if args.device != "cpu":
        raise CommandError("export runs on the CPU (the file runs anywhere); leave out --device")
    from ..inference.export import check_opset

    check_output_file(args.output, "--output", inputs=[args.checkpoint], overwrite=args.overwrite)
    if args.opset is not None:
        try:
            check_opset(args.opset, args.format)
        except ValueError as err:
            raise CommandError(f"--opset: {err}") from None
    model = model_from_args(args)
    try:
        sizes = export_sizes(model, *args.size)
    except ValueError as err:  # "size must be at least ...": the option is --size
        raise CommandError(f"--{err}") from None
    try:
        result = export_model(model, args.output, args.format, sizes=sizes, opset=args.opset, overwrite=args.overwrite)
    except (RuntimeError, ValueError, NotImplementedError, ImportError) as err:  # the exporters' errors (torch.onnx's are RuntimeErrors)
        raise CommandError(f"export to {args.format} failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    checked = " and ".join(f"{h}x{w}" for h, w in result.checked_sizes)
    if result.max_abs_diff is None:
        print(f"wrote {result.path} ({args.format}); onnxruntime is not installed, so it was not checked (pip install 'glmha[export]')")
    else:
        print(f"wrote {result.path} ({args.format}); checked against PyTorch at {checked}: max abs difference {result.max_abs_diff:.2e}")
    print(result.convention)
