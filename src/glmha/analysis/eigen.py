"""Eigen-analysis of channel attention maps (the paper's Figure 1) and ranks chosen from data.

Every channel attention of this package ends in one softmax over the key tokens: its output,
``B x heads x c_q x c_kv``, is the attention map (``c_q = c_kv = C / heads`` for CSA, ``c_kv =
rank / heads`` for GLMHA). :func:`record_attention_maps` captures those maps without touching
the modules: forward hooks mark which attention module is running, and a
:class:`~torch.overrides.TorchFunctionMode`, active only inside the ``with`` block, keeps the
result of every last-dimension softmax called while one runs. Outside the block nothing is
hooked, so the models pay nothing.

The spectrum of a map. Softmax maps are row-stochastic and not symmetric: their eigenvalues
are complex, the largest is always exactly 1, and their magnitudes do not bound how well a
rank-k matrix approximates the map. The default spectrum is therefore the *singular values*
(``spectrum="singular"``): real, non-negative, defined for GLMHA's rectangular maps too, and,
by Eckart-Young, the error of the best rank-k approximation is the mass of the singular values
left out. ``spectrum="eigen"`` uses the eigenvalue magnitudes of square maps instead, for
comparison with plots that use eigenvalues. Either way the values of one map are sorted in
decreasing order and turned into a cumulative share ``cumsum(values) / sum(values)``; a layer's
curve is the mean of that share over every head of every input; the rank that keeps a share p
of the spectrum is the smallest k whose mean cumulative share reaches p.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..attention.convert import swap_layer_attentions
from ..attention.registry import FAMILIES, get_attention_class, list_attentions
from ..io.files import atomic_write
from ..io.folders import claim_folder
from ..inference.tiling import pad_to_multiple

SPECTRA = ("singular", "eigen")
DEFAULT_SHARES = (0.90, 0.95, 0.99)

_SOFTMAX_FUNCTIONS = {torch.softmax, torch.Tensor.softmax, F.softmax, torch.special.softmax}


def attention_classes() -> tuple[type[nn.Module], ...]:
    """Every attention class registered in the package (any family)."""
    classes = {get_attention_class(name, family) for family in FAMILIES for name in list_attentions(family)}
    return tuple(classes)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The attention modules of ``model`` by qualified name (e.g. ``"encoder_level1.0.attn"``)."""
    classes = attention_classes()
    return {name: module for name, module in model.named_modules() if isinstance(module, classes)}


class _SoftmaxRecorder(TorchFunctionMode):
    """Hands the output of each last-dimension softmax to ``on_map`` while a layer is marked."""

    def __init__(self, on_map: Callable[[str, torch.Tensor], None]):
        super().__init__()
        self.on_map = on_map
        self.running: list[str] = []  # stack of attention modules currently in their forward

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _SOFTMAX_FUNCTIONS and self.running and isinstance(out, torch.Tensor) and out.dim() >= 3:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim is not None and dim in (-1, out.dim() - 1):
                self.on_map(self.running[-1], out.detach())
        return out


@contextlib.contextmanager
def record_attention_maps(model: nn.Module, on_map: Callable[[str, torch.Tensor], None]) -> Iterator[list[str]]:
    """Call ``on_map(layer_name, attention_map)`` for every attention map computed inside the block.

    ``attention_map`` is ``B x heads x c_q x c_kv`` (detached). Yields the names of the
    attention layers found; raises ``ValueError`` when the model has none.
    """
    layers = attention_modules(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no attention module of this package to analyse")
    recorder = _SoftmaxRecorder(on_map)

    def enter(name: str) -> Callable[..., None]:
        return lambda _module, _args: recorder.running.append(name)

    def leave(_module, _args, _output) -> None:  # returns None: the output is left as it is
        recorder.running.pop()

    handles = []
    for name, module in layers.items():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        with recorder:
            yield list(layers)
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def capture_attention_maps(model: nn.Module, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model(*inputs)`` once and return each attention layer's map, ``B x heads x c_q x c_kv``."""
    maps: dict[str, list[torch.Tensor]] = {}
    with record_attention_maps(model, lambda name, attn: maps.setdefault(name, []).append(attn)):
        model(*inputs)
    return {name: torch.cat(found) if len(found) > 1 else found[0] for name, found in maps.items()}


def spectrum(maps: torch.Tensor, kind: str = "singular") -> torch.Tensor:
    """Sorted (decreasing) spectrum of each ``... x c_q x c_kv`` map, computed in float64.

    ``"singular"``: singular values; ``"eigen"``: eigenvalue magnitudes (square maps only).
    """
    maps = maps.detach().to("cpu", torch.float64)
    if kind == "singular":
        return torch.linalg.svdvals(maps)  # already decreasing
    if kind == "eigen":
        if maps.shape[-1] != maps.shape[-2]:
            raise ValueError(f"eigenvalues need square maps, got {tuple(maps.shape[-2:])}; use spectrum='singular'")
        return torch.linalg.eigvals(maps).abs().sort(dim=-1, descending=True).values
    raise ValueError(f"spectrum must be one of {SPECTRA}, got {kind!r}")


def cumulative_share(values: torch.Tensor) -> torch.Tensor:
    """``cumsum(values) / sum(values)`` along the last dimension (1 at the end)."""
    return values.cumsum(-1) / values.sum(-1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)


def rank_for_share(cumulative: Sequence[float] | np.ndarray, share: float) -> int:
    """Smallest k such that the first k values keep at least ``share`` of the spectrum."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    cumulative = np.asarray(cumulative, dtype=np.float64)
    return int(min(np.searchsorted(cumulative, share - 1e-9) + 1, len(cumulative)))


def level_of(layer_name: str) -> str:
    """The stage a layer belongs to: its name up to the index of its block in that stage.

    ``"encoder_level1.3.attn"`` -> ``"encoder_level1"`` (Restormer). In MST / MST++ the last
    ``<container>.<index>`` pair is the block, and a ``blocks`` list inside a level's module
    list names that level: ``"body.0.encoder_layers.1.0.blocks.0.0"`` -> ``"body.0.encoder_layers.1"``.
    """
    parts = layer_name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i].isdigit() and not parts[i - 1].isdigit():
            level = parts[:i]
            break
    else:
        level = parts[:-1] or parts
    if len(level) > 1 and level[-1] == "blocks":
        level = level[:-1]
        if len(level) > 1 and level[-1].isdigit():
            level = level[:-1]
    return ".".join(level)


@dataclass
class LayerSpectrum:
    """Mean cumulative spectrum of one attention layer over all heads and inputs seen."""

    name: str
    heads: int
    map_shape: tuple[int, int]  # c_q x c_kv of one head
    cumulative: np.ndarray  # mean cumulative share, length min(c_q, c_kv)
    n_maps: int  # heads x images averaged

    @property
    def level(self) -> str:
        return level_of(self.name)

    def rank(self, share: float) -> int:
        """Per-head rank that keeps ``share`` of the spectrum."""
        return rank_for_share(self.cumulative, share)

    def glmha_rank(self, share: float) -> int:
        """The rank in GLMHA's units (key/value tokens over all heads): per-head rank x heads."""
        return self.rank(share) * self.heads


class _SpectrumAccumulator:
    def __init__(self, kind: str):
        self.kind = kind
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, int, int]] = {}

    def __call__(self, name: str, attn: torch.Tensor) -> None:
        if attn.dim() == 3:  # a single-head layout without the heads dimension
            attn = attn.unsqueeze(1)
        heads, c_q, c_kv = attn.shape[-3:]
        flat = attn.reshape(-1, c_q, c_kv)
        shares = cumulative_share(spectrum(flat, self.kind))
        if name in self.sums and self.sums[name].shape[-1] != shares.shape[-1]:
            raise ValueError(f"layer {name} produced maps of different sizes; cannot average them")
        self.sums[name] = self.sums.get(name, 0) + shares.sum(0)
        self.counts[name] = self.counts.get(name, 0) + flat.shape[0]
        self.shapes[name] = (heads, c_q, c_kv)

    def result(self, order: Sequence[str]) -> list[LayerSpectrum]:
        return [
            LayerSpectrum(
                name=name,
                heads=self.shapes[name][0],
                map_shape=self.shapes[name][1:],
                cumulative=(self.sums[name] / self.counts[name]).numpy(),
                n_maps=self.counts[name],
            )
            for name in order
            if name in self.sums
        ]


@torch.no_grad()
def attention_spectra(
    model: nn.Module,
    batches: Iterable[torch.Tensor | Sequence[torch.Tensor]],
    spectrum_kind: str = "singular",
    forward: Callable[..., object] | None = None,
) -> list[LayerSpectrum]:
    """Mean cumulative spectrum of every attention layer of ``model`` over ``batches``.

    Each batch is a tensor or a tuple of the model's forward inputs, already on the model's
    device; ``forward`` (default ``model``) is what runs them, e.g.
    :func:`glmha.restore` to pad images to the network's size multiple. The model is put in
    eval mode for the run and restored afterwards.
    """
    if spectrum_kind not in SPECTRA:
        raise ValueError(f"spectrum must be one of {SPECTRA}, got {spectrum_kind!r}")
    forward = forward or model
    accumulate = _SpectrumAccumulator(spectrum_kind)
    was_training = model.training
    model.eval()
    try:
        with record_attention_maps(model, accumulate) as layers:
            n_batches = 0
            for batch in batches:
                forward(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
                n_batches += 1
    finally:
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("no inputs to analyse")
    found = accumulate.result(layers)
    if not found:
        raise ValueError(
            f"none of the {len(layers)} attention layers of {type(model).__name__} computed a softmax attention map "
            "(attentions without a softmax map, such as Performer, cannot be analysed)"
        )
    return found


def rank_table(spectra: Sequence[LayerSpectrum], shares: Sequence[float] = DEFAULT_SHARES) -> list[dict]:
    """One row per layer: name, level, heads, per-head map size and the per-head rank per share."""
    rows = []
    for layer in spectra:
        row = {
            "layer": layer.name,
            "level": layer.level,
            "heads": layer.heads,
            "map": f"{layer.map_shape[0]}x{layer.map_shape[1]}",
            "maps": layer.n_maps,
        }
        for share in shares:
            row[f"rank@{share:g}"] = layer.rank(share)
        rows.append(row)
    return rows


def format_rank_table(spectra: Sequence[LayerSpectrum], shares: Sequence[float] = DEFAULT_SHARES) -> str:
    """Markdown table of :func:`rank_table`: the rank each layer needs per head, and its share of the map size."""
    header = "| layer | heads | map per head | " + " | ".join(f"rank for {share:.0%}" for share in shares) + " |"
    lines = [header, "| --- | ---: | ---: | " + " | ".join("---:" for _ in shares) + " |"]
    for layer in spectra:
        full = min(layer.map_shape)
        cells = [f"{layer.rank(share)} ({layer.rank(share) / full:.0%})" for share in shares]
        lines.append(f"| {layer.name} | {layer.heads} | {layer.map_shape[0]}x{layer.map_shape[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def suggest_ranks(spectra: Sequence[LayerSpectrum], share: float = 0.95) -> dict[str, int]:
    """GLMHA rank per attention layer (``{layer_name: rank}``) keeping ``share`` of each layer's spectrum.

    The rank is counted as GLMHA counts it, over all heads (per-head rank x heads), so it is a
    multiple of the head count and at least the head count.
    """
    return {layer.name: layer.glmha_rank(share) for layer in spectra}


def level_curves(spectra: Sequence[LayerSpectrum]) -> dict[str, np.ndarray]:
    """Mean cumulative curve per level (layers of a level averaged, weighted by maps seen)."""
    grouped: dict[str, list[LayerSpectrum]] = {}
    for layer in spectra:
        key = layer.level
        if key in grouped and len(grouped[key][0].cumulative) != len(layer.cumulative):
            key = f"{key} ({layer.map_shape[0]}x{layer.map_shape[1]})"
        grouped.setdefault(key, []).append(layer)
    return {
        level: sum(layer.cumulative * layer.n_maps for layer in layers) / sum(layer.n_maps for layer in layers)
        for level, layers in grouped.items()
    }


def plot_spectra(
    spectra: Sequence[LayerSpectrum],
    path: str | Path,
    title: str | None = None,
    spectrum_kind: str = "singular",
    shares: Sequence[float] = DEFAULT_SHARES,
) -> Path:
    """Plot the mean cumulative spectrum per level to a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = level_curves(spectra)
    longest = max(len(curve) for curve in curves.values())
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(len(curves), 1)))
    for (level, curve), color in zip(curves.items(), colors):
        ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", markersize=2.5, linewidth=1.4, color=color, label=level)
    # always a log-2 axis with ticks at powers of two, so that plots of different models read alike
    ax.set_xscale("log", base=2)
    ticks = [2**k for k in range(int(np.log2(longest)) + 1)]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(0.9, longest * 1.1)
    for share in shares:
        ax.axhline(share, color="grey", linewidth=0.7, linestyle=":")
        ax.annotate(f"{share * 100:g} %", (1.0, share), xycoords=("axes fraction", "data"), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=7, color="dimgrey")
    values = "singular values" if spectrum_kind == "singular" else "eigenvalue magnitudes"
    ax.set_xlabel(f"number of {values} kept per head, largest first (log scale)")
    ax.set_ylabel("cumulative share of the spectrum")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "Attention map spectrum per level", fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="lower right", ncol=2 if len(curves) > 6 else 1)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)


@dataclass
class RankReport:
    """What :func:`analyse_attention` found and wrote."""

    spectra: list[LayerSpectrum]
    table: str  # Markdown rank table
    plot: Path
    table_path: Path
    ranks_path: Path  # JSON: {"share": ..., "ranks": {layer: GLMHA rank}}


def analyse_attention(
    model: nn.Module,
    inputs: Iterable[torch.Tensor | tuple[torch.Tensor, ...]],
    output_dir: str | Path,
    spectrum_kind: str = "singular",
    shares: Sequence[float] = DEFAULT_SHARES,
    suggest_share: float = 0.95,
    title: str | None = None,
) -> RankReport:
    """Eigen-analysis of ``model`` over ``inputs``; writes ``attention_spectrum.png``, ``ranks.md``, ``ranks.json``.

    Each input is an image (``1 x C x H x W`` of any size, padded to the model's size
    multiple as :func:`glmha.restore` does), or a tuple of forward inputs used as they are
    (e.g. a CASSI measurement and mask).
    """
    output_dir = claim_folder(output_dir, "rank", legacy=("ranks.json",))  # before the work: a user's folder is refused as it is
    device = next(model.parameters()).device
    multiple = int(getattr(model, "size_multiple", 1))

    def batches():
        for item in inputs:
            if isinstance(item, torch.Tensor):
                yield (pad_to_multiple(item.to(device), multiple),)
            else:
                yield tuple(t.to(device) for t in item)

    spectra = attention_spectra(model, batches(), spectrum_kind)
    output_dir = Path(output_dir)
    table = format_rank_table(spectra, shares)
    plot = plot_spectra(spectra, output_dir / "attention_spectrum.png", title=title, spectrum_kind=spectrum_kind, shares=shares)
    table_path = atomic_write(output_dir / "ranks.md", lambda tmp: Path(tmp).write_text(table + "\n"))
    ranks = {"spectrum": spectrum_kind, "share": suggest_share, "ranks": suggest_ranks(spectra, suggest_share)}
    ranks_path = atomic_write(output_dir / "ranks.json", lambda tmp: Path(tmp).write_text(json.dumps(ranks, indent=2) + "\n"))
    return RankReport(spectra=spectra, table=table, plot=plot, table_path=table_path, ranks_path=ranks_path)


def uniform_rank_ratio(spectra: Sequence[LayerSpectrum], share: float = 0.95) -> float:
    """The smallest single ``rank_ratio`` (rounded up to 0.01) that gives every layer at least its rank for ``share``."""
    needed = max(layer.rank(share) / layer.map_shape[0] for layer in spectra)
    return min(1.0, math.ceil(needed * 100 - 1e-9) / 100)


def format_rank_suggestion(
    report: RankReport | Sequence[LayerSpectrum],
    model_name: str,
    model_kwargs: dict | None = None,
    share: float | None = None,
    load: str | None = None,
    warm_start: bool = True,
) -> str:
    """Python, runnable as printed, that builds the GLMHA model the analysis suggests: per-layer ranks, or one uniform ratio.

    ``load`` is the expression that gives the analysed model, e.g.
    ``glmha.load_model("deraining.pth", preset="deraining")``; without it the code builds an
    untrained ``model_name`` with ``model_kwargs``. ``warm_start``: the analysed model is CSA in
    every layer, so the GLMHA layers start from an SVD of its weights; otherwise (a GLMHA model
    analysed) they start afresh, as ``init="svd"`` converts CSA only.
    """
    spectra = report.spectra if isinstance(report, RankReport) else list(report)
    if share is None:
        share = json.loads(report.ranks_path.read_text())["share"] if isinstance(report, RankReport) else 0.95
    ranks = suggest_ranks(spectra, share)
    ratio = uniform_rank_ratio(spectra, share)
    ranks_text = "".join(f"    {name!r}: {rank},\n" for name, rank in ranks.items())
    args = "".join(f", {key}={value!r}" for key, value in (model_kwargs or {}).items())
    # apply_ranks warm-starts by SVD by default; only a model that is not CSA needs init="random"
    apply = "apply_ranks(model, ranks)" if warm_start else 'apply_ranks(model, ranks, init="random")'
    lines = [
        "import glmha",
        "from glmha.analysis.eigen import apply_ranks",
        "",
        f"ranks = {{\n{ranks_text}}}  # GLMHA rank per layer (key/value tokens over all heads)",
    ]
    if load is None:
        lines += [
            f'model = glmha.create_model("{model_name}"{args})  # untrained, as analysed',
            f"model = {apply}  # per-layer GLMHA",
            "# or one ratio for every layer, enough for each of them:",
            f'uniform = glmha.create_model("{model_name}"{args}, attention="glmha", attention_kwargs={{"rank_ratio": {ratio}}})',
        ]
    else:
        start = "warm-started by SVD of the CSA weights" if warm_start else "started afresh (the analysed model is not CSA)"
        lines += [
            f"model = {load}  # the analysed model",
            f"model = {apply}  # per-layer GLMHA, {start}",
            "# or one ratio for every layer, enough for each of them:",
            f'uniform = glmha.swap_attention({load}, "glmha", init="{"svd" if warm_start else "random"}", rank_ratio={ratio})',
        ]
    return "\n".join(lines)


def apply_ranks(model: nn.Module, ranks: dict[str, int], attention: str = "glmha", init: str = "svd", **attention_kwargs) -> nn.Module:
    """Give each attention layer named in ``ranks`` its own GLMHA rank, in place (e.g. from :func:`suggest_ranks`).

    Uses :func:`glmha.swap_attention` on the block that holds each layer, so the other
    layers and weights are kept; ``init="svd"`` warm-starts each new layer from the trained
    CSA one. Layers not named keep their attention. The model's build record
    (``model.spec``) keeps the per-layer choice, so :func:`glmha.save_model` files rebuild it.
    """
    layers = {name: {"attention": attention, "attention_kwargs": {"rank": rank, **attention_kwargs}} for name, rank in ranks.items()}
    return swap_layer_attentions(model, layers, init=init)
