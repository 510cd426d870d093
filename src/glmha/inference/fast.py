"""A fast path for any glmha model that leaves its outputs unchanged (beyond float rounding).

``glmha.optimize(model)`` wraps a model with the speed-ups that do not alter what it computes:

- channels-last memory layout of weights and inputs (oneDNN's depth-wise convolutions, a
  large part of Restormer's CPU time, are faster on it; layer norm over channels reads it
  in place);
- ``torch.inference_mode`` in eval mode (no autograd bookkeeping);
- ``torch.compile`` of each block that holds an attention layer (Restormer's transformer
  blocks, MST's attention blocks), each as one graph (``fullgraph=True``: a graph break is an
  error, not a silent slowdown). Blocks of the same shape share one compiled graph, so a
  Restormer of any width compiles 5 graphs per input size instead of one of 40-odd blocks.
  ``scope="model"`` compiles the whole forward as one graph with Inductor's weight freezing
  instead (the same speed, the longest compile);
- optionally bf16/fp16 autocast; the models keep their norms and softmax in float32.

The first call of each input size pays for the compiles: on a two-core CPU about 32 to
34 s (measured), as much for a 0.2 M-parameter Restormer as for the 26 M one (the graphs cost, not
the weights). Inductor keeps the compiled kernels on disk (``TORCHINDUCTOR_CACHE_DIR``, by
default ``/tmp/torchinductor_$USER``), so a later process with the same shapes only traces
again; ``compile=False`` skips compiling. docs/benchmarks.md ("The first call") has the
measurements of a first and a second process.

The float32 paths match the plain model to float rounding (tests/inference/test_fast.py checks 1e-5 on
the official golden outputs); autocast trades that exactness for speed and is off by default.
Measured speed-ups: docs/benchmarks.md.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from ..validation import check_image_batch

SCOPES = ("blocks", "model")
# Graphs one block function may hold under scope="blocks": a Restormer has 5 block shapes per
# input size, so this allows a dozen input sizes or models in one process.
BLOCK_RECOMPILE_LIMIT = 64
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


class FastModel(nn.Module):
    """A model behind the fast path; build it with :func:`optimize`.

    Calls take and return what the wrapped model takes and returns. The wrapped model is
    ``.module``; its parameters are shared (not copied), so ``state_dict()`` keys carry a
    ``module.`` prefix. ``in_channels``, ``out_channels``, ``size_multiple`` and
    ``example_inputs`` are the wrapped model's, so :func:`glmha.restore` accepts a FastModel.
    """

    def __init__(
        self,
        module: nn.Module,
        forward: Callable[..., Any],
        channels_last: bool,
        inference: bool,
        autocast_dtype: torch.dtype | None,
        compiled: bool,
        compiled_regions: list[tuple[nn.Module, Callable[..., Any]]] | None = None,
    ):
        super().__init__()
        self.module = module
        self._forward = forward  # a plain function (the compiled one): not registered as a submodule
        self.channels_last = channels_last
        self.inference = inference
        self.autocast_dtype = autocast_dtype
        self.compiled = compiled
        # (block, its compiled call): switched on only while this wrapper runs, so the model
        # itself stays as it was (plain, eager) when called directly
        self._compiled_regions = list(compiled_regions or [])
        self.training = module.training  # the wrapper starts in the model's mode

    # The attributes the rest of the package reads off a model.
    @property
    def in_channels(self) -> int | None:
        return getattr(self.module, "in_channels", None)

    @property
    def out_channels(self) -> int | None:
        return getattr(self.module, "out_channels", None)

    @property
    def size_multiple(self) -> int:
        return int(getattr(self.module, "size_multiple", 1))

    def example_inputs(self, *args, **kwargs) -> tuple[torch.Tensor, ...]:
        return self.module.example_inputs(*args, **kwargs)

    def extra_repr(self) -> str:
        dtype = None if self.autocast_dtype is None else str(self.autocast_dtype).replace("torch.", "")
        return (
            f"compiled={self.compiled}, channels_last={self.channels_last}, "
            f"inference={self.inference}, autocast={dtype}"
        )

    def _check_inputs(self, inputs: tuple) -> None:
        # A compiled model skips its own data-dependent input checks while tracing
        # (glmha.validation), so the wrapper runs them eagerly here.
        check = getattr(self.module, "check_inputs", None)
        if check is not None:
            check(*inputs)
        elif inputs:
            check_image_batch(inputs[0], self.in_channels)

    def forward(self, *inputs: Any) -> Any:
        if self.compiled:
            self._check_inputs(inputs)
        # A caller who passes a standard (contiguous) image gets a standard one back.
        return_contiguous = self.channels_last and bool(inputs) and _is_plain_image(inputs[0])
        if self.channels_last:
            inputs = tuple(_to_channels_last(x) for x in inputs)
        device_type = _device_type(self.module)
        with contextlib.ExitStack() as stack:
            if self.inference and not self.training:
                stack.enter_context(torch.inference_mode())
            if self.autocast_dtype is not None:
                stack.enter_context(torch.autocast(device_type, dtype=self.autocast_dtype))
            if self._compiled_regions:
                stack.enter_context(_regions_compiled(self._compiled_regions))
            out = self._forward(*inputs)
            if isinstance(out, torch.Tensor):
                if self.autocast_dtype is not None and isinstance(inputs[0], torch.Tensor):
                    out = out.to(inputs[0].dtype)  # back to the caller's precision
                if return_contiguous and out.dim() == 4:
                    out = out.contiguous()
        return out


@contextlib.contextmanager
def _regions_compiled(regions: list[tuple[nn.Module, Callable[..., Any]]]):
    # nn.Module.__call__ runs ``_compiled_call_impl`` when it is set (what nn.Module.compile
    # sets for good); here it is set for the duration of one call. Blocks share their code, so
    # each block shape (and each model in the process) is one cache entry of the same function:
    # more than Dynamo's default limit of 8.
    try:
        for region, compiled in regions:
            region._compiled_call_impl = compiled
        with torch._dynamo.config.patch(recompile_limit=BLOCK_RECOMPILE_LIMIT):
            yield
    finally:
        for region, _ in regions:
            region._compiled_call_impl = None


def _is_plain_image(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_contiguous()


def _to_channels_last(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _device_type(module: nn.Module) -> str:
    param = next(module.parameters(), None)
    return "cpu" if param is None else param.device.type


def optimize(
    model: nn.Module,
    compile: bool = True,
    channels_last: bool = True,
    inference: bool = True,
    autocast: str | torch.dtype | None = None,
    fullgraph: bool = True,
    freeze: bool | None = None,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
    scope: str = "blocks",
) -> FastModel:
    """Return ``model`` behind the fast path (see the module docstring); outputs are unchanged.

    Args:
        model: any glmha model (or module taking image batches).
        compile: ``torch.compile`` the model (see ``scope``). The first call of each input shape
            compiles (with ``scope="blocks"``, about 35 s on a two-core CPU for a
            Restormer of any size, 3 to 8 s with Inductor's cache of an earlier process, longer with ``"model"``; docs/benchmarks.md); later calls
            are fast. Inductor keeps its kernels on disk (``TORCHINDUCTOR_CACHE_DIR``), so a
            later process with the same shapes only traces again.
        channels_last: convert the weights (in place) and the 4-D inputs to channels-last.
        inference: in eval mode, run under ``torch.inference_mode`` (outputs carry no
            autograd history). Training mode is never affected.
        autocast: ``"bfloat16"`` / ``"float16"`` (or the dtype) to run under autocast on the
            model's device; outputs are cast back to the input's dtype. ``None``: float32 as is.
        fullgraph: make a graph break an error (the glmha models compile as one graph).
        freeze: with ``scope="model"``, let Inductor freeze the weights as constants (folds
            and prepacks them; CPU inference only). Default: on when compiling a model in eval
            mode with ``inference`` and no ``compile_mode``. A frozen model does not see later
            changes of its weights: optimize again after loading new ones.
        compile_mode: passed to ``torch.compile`` as ``mode`` (e.g. ``"max-autotune"``).
        compile_backend: ``torch.compile``'s backend; ``"eager"`` only captures the graph
            (quick: it checks for graph breaks without generating code).
        scope: ``"blocks"`` (default): compile each module that holds an attention layer and
            is called as a unit (:func:`compile_regions`), used while the wrapper runs (the
            model called directly stays eager); the rest runs eagerly. ``"model"``: the whole
            forward as one graph, with freezing.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize() takes a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, FastModel):
        raise TypeError("this model is already optimized; pass its .module to optimize it again")
    autocast_dtype = _resolve_autocast(autocast)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    forward: Callable[..., Any] = model
    regions = compile_regions(model) if compile and scope == "blocks" else []
    compiled_regions = []
    if regions:
        if freeze:
            raise ValueError("freeze=True needs scope='model' (blocks of one shape share a graph, with the weights as inputs)")
        for region in regions:  # as nn.Module.compile does, but kept by the wrapper: same-shaped blocks share one graph
            compiled_regions.append((region, torch.compile(
                region._call_impl, fullgraph=fullgraph, dynamic=False, mode=compile_mode, backend=compile_backend)))
    elif compile:
        inductor = compile_backend == "inductor"
        if freeze is None:
            freeze = inference and not model.training and compile_mode is None and inductor
        if freeze and (compile_mode is not None or not inductor):
            raise ValueError("freeze=True needs the inductor backend and no compile_mode (torch.compile takes a mode or options, not both)")
        options = {"freezing": True} if freeze else None
        forward = torch.compile(
            model.forward, fullgraph=fullgraph, mode=compile_mode, options=options, backend=compile_backend
        )
    elif freeze:
        raise ValueError("freeze=True needs compile=True (freezing is an Inductor compile option)")
    return FastModel(model, forward, channels_last, inference, autocast_dtype, compiled=compile, compiled_regions=compiled_regions)


def compile_regions(model: nn.Module) -> list[nn.Module]:
    """The modules ``scope="blocks"`` compiles: for each attention layer of this package, the
    nearest module above it that is called as a unit (not a ``Sequential``/``ModuleList``/``ModuleDict``).

    Restormer: its transformer blocks; MST and MST++: their attention blocks (``MSAB``). Empty
    for a model without such attention layers (it is then compiled whole).
    """
    from ..attention.registry import FAMILIES, get_attention_class, list_attentions

    classes = tuple({get_attention_class(name, family) for family in FAMILIES for name in list_attentions(family)})
    modules = dict(model.named_modules())
    regions: dict[int, nn.Module] = {}
    for name, module in modules.items():
        if not isinstance(module, classes):
            continue
        while name:
            name = name.rpartition(".")[0]
            if not isinstance(modules[name], (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
                break
        regions.setdefault(id(modules[name]), modules[name])
    return list(regions.values())


def _resolve_autocast(autocast: str | torch.dtype | None) -> torch.dtype | None:
    if autocast is None or isinstance(autocast, torch.dtype) and autocast in AUTOCAST_DTYPES.values():
        return autocast
    if isinstance(autocast, str) and autocast.lower() in AUTOCAST_DTYPES:
        return AUTOCAST_DTYPES[autocast.lower()]
    raise ValueError(f"autocast must be None, 'bfloat16' or 'float16' (or the torch dtype), got {autocast!r}")
