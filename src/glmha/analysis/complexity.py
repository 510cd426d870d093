"""Analytic cost of one attention layer, and the same cost measured by the flop counter.

MACs count what :func:`glmha.profile` counts: matrix products and convolutions, per image
(batch 1). Element-wise work (softmax, L2 norms, the gate, the exponentials of Performer,
the sorting of Reformer) is left out, as in the papers' tables; docs/attention.md lists it.
Notation: C channels (``dim``), h heads, c = C/h tokens per head, N pixels, r the GLMHA /
Linformer rank, m Performer's random features.

:func:`model_size_table` counts whole models, the table of ``glmha complexity``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..attention import build_attention, resolve_rank
from ..models import create_model
from .profile import profile


@dataclass(frozen=True)
class LayerCost:
    params: int
    macs: int


def mask_width(dim: int, dim_head: int, width: int, dispersion_step: float = 2.0) -> int:
    """Width of the shifted mask that MST's mask-guided attention reads at this level."""
    downsample = max(1, dim // dim_head)
    return width + int(dispersion_step / downsample**2 * (dim - 1))


def _mask_guidance(dim: int, mask_pixels: int) -> LayerCost:
    # MST's mask-guided mechanism: two 1x1 convs and a 5x5 depth-wise conv on the shifted mask, with biases.
    return LayerCost(params=2 * dim * dim + 25 * dim + 3 * dim, macs=(2 * dim * dim + 25 * dim) * mask_pixels)


def _lsh_cost(dim: int, num_heads: int, options: dict) -> int:
    """Reformer's hashing and chunked attention, in MACs per pixel."""
    tokens = dim // num_heads
    chunk = min(options.get("bucket_size", 16), tokens)
    n_chunks = math.ceil(tokens / chunk)
    n_buckets = 2 * math.ceil(n_chunks / 2)
    n_hashes = options.get("n_hashes", 2)
    hashing = dim * n_hashes * n_buckets // 2
    attention = n_hashes * num_heads * 4 * chunk * chunk * n_chunks  # q.k and a.v over own + previous chunk
    return hashing + attention


def attention_cost(
    name: str,
    family: str,
    dim: int,
    num_heads: int,
    height: int,
    width: int,
    dim_head: int | None = None,
    mask_guided: bool = False,
    bias: bool = False,
    **options,
) -> LayerCost:
    """Parameters and MACs of one ``name`` attention layer of ``family`` on an ``height x width`` map.

    ``options`` are the attention's own (``rank_ratio``, ``num_features``, ...), with the
    same defaults as the modules.
    """
    C, h, N = dim, num_heads, height * width
    if family == "mdta":
        if name == "csa":
            params, macs = 4 * C * C + 27 * C + h, (4 * C * C + 2 * C * C // h + 27 * C) * N
            params += 7 * C if bias else 0
        elif name == "glmha":
            r = resolve_rank(C, h, options.get("rank"), options.get("rank_ratio"))
            params = 2 * C * C + 2 * r * C + 9 * C + 18 * r + h
            macs = (2 * C * C + 2 * r * C + 2 * C * r // h + 9 * C + 18 * r) * N
            if options.get("calibration", True):
                hidden = max(C // options.get("reduction", 8), 4)
                params, macs = params + 2 * C * hidden, macs + 2 * C * hidden
            params += 3 * C + 4 * r if bias else 0
        elif name == "linformer":
            r = resolve_rank(C, h, options.get("rank"), options.get("rank_ratio"))
            params = 4 * C * C + 27 * C + h + 2 * r * C // h
            macs = (4 * C * C + 27 * C + 4 * C * r // h) * N
            params += 7 * C if bias else 0
        elif name == "performer":
            m = options.get("num_features", 64)
            params, macs = 4 * C * C + 27 * C + h, (4 * C * C + 27 * C + 4 * C * m) * N
            params += 7 * C if bias else 0
        elif name == "reformer":
            params = 3 * C * C + 18 * C + h
            macs = (3 * C * C + 18 * C + _lsh_cost(C, h, options)) * N
            params += 5 * C if bias else 0
        else:
            raise ValueError(f"no cost formula for attention {name!r} ({family})")
        return LayerCost(params, macs)

    if family != "smsa":
        raise ValueError(f"unknown attention family {family!r}")
    dim_head = dim_head or C // h
    inner = h * dim_head
    linear_bias = inner if bias else 0
    if name == "csa":
        params = 3 * C * inner + 3 * linear_bias + h + inner * C + C + 18 * C
        macs = (3 * C * inner + 2 * inner * dim_head + inner * C + 18 * C) * N
    elif name == "glmha":
        r = resolve_rank(C, h, options.get("rank"), options.get("rank_ratio"))
        params = C * C + 2 * r * C + (C + 2 * r if bias else 0) + h + C * C + C + 18 * C
        macs = (2 * C * C + 2 * r * C + 2 * C * r // h + 18 * C) * N
        if options.get("calibration", True):
            hidden = max(C // options.get("reduction", 8), 4)
            params, macs = params + 2 * C * hidden, macs + 2 * C * hidden
    elif name in ("linformer", "performer", "reformer"):  # built with inner == dim
        params = 4 * C * C + 3 * linear_bias + h + C + 18 * C
        macs = (4 * C * C + 18 * C) * N  # q, k, v and proj; the attention products below
        if name == "linformer":
            r = resolve_rank(C, h, options.get("rank"), options.get("rank_ratio"))
            params += 2 * r * dim_head
            macs += 4 * r * dim_head * N
        elif name == "performer":
            macs += 4 * C * options.get("num_features", 64) * N
        else:  # shared QK: no to_k
            params -= C * C + (C if bias else 0)
            macs += (_lsh_cost(C, h, options) - C * C) * N
    else:
        raise ValueError(f"no cost formula for attention {name!r} ({family})")
    if mask_guided:
        guidance = _mask_guidance(C, height * mask_width(C, dim_head, width))
        params, macs = params + guidance.params, macs + guidance.macs
    return LayerCost(params, macs)


def measure_attention(
    name: str,
    family: str,
    dim: int,
    num_heads: int,
    height: int,
    width: int,
    dim_head: int | None = None,
    mask_guided: bool = False,
    bias: bool = False,
    **options,
) -> LayerCost:
    """The same layer built on the meta device and counted by :func:`glmha.profile`."""
    with torch.device("meta"):
        if family == "mdta":
            layer = build_attention(name, family, dim=dim, num_heads=num_heads, bias=bias, **options)
            inputs: tuple = (torch.zeros(1, dim, height, width),)
        else:
            dim_head = dim_head or dim // num_heads
            layer = build_attention(
                name, family, dim=dim, num_heads=num_heads, dim_head=dim_head, mask_guided=mask_guided, bias=bias, **options
            )
            mask = torch.zeros(1, height, mask_width(dim, dim_head, width), dim) if mask_guided else None
            inputs = (torch.zeros(1, height, width, dim), mask)
        stats = profile(layer, *inputs)
    return LayerCost(stats.params, stats.macs)


def attention_sweep(
    attentions: Iterable[str],
    dims: Sequence[int] = (16, 32, 64, 128, 256, 512),
    pixels: Sequence[int] = (32 * 32, 64 * 64, 128 * 128, 256 * 256),
    fixed_pixels: int = 64 * 64,
    fixed_dim: int = 48,
    num_heads: int = 1,
) -> list[dict]:
    """One Restormer-style (``mdta``) attention layer's cost against C (at ``fixed_pixels``) and N (at ``fixed_dim``).

    Measured with the flop counter on the meta device. Rows: ``attention``, ``sweep`` ("C" or
    "N"), ``dim``, ``pixels``, ``params``, ``macs``.
    """
    rows = []
    for attention in attentions:
        for sweep, points in (("C", [(d, fixed_pixels) for d in dims]), ("N", [(fixed_dim, n) for n in pixels])):
            for dim, n in points:
                cost = measure_attention(attention, "mdta", dim, num_heads, 1, n)
                rows.append({"attention": attention, "sweep": sweep, "dim": dim, "pixels": n, "params": cost.params, "macs": cost.macs})
    return rows


def format_sweep(rows: list[dict]) -> str:
    """Markdown tables of the sweep, MACs and params relative to CSA's in brackets when CSA is there."""
    lines = []
    csa = {(r["sweep"], r["dim"], r["pixels"]): r for r in rows if r["attention"] == "csa"}
    for sweep, label in (("C", "C (N fixed)"), ("N", "N (C fixed)")):
        part = [r for r in rows if r["sweep"] == sweep]
        if not part:
            continue
        lines += ["", f"One attention layer against {label}:", "", "| attention | C | N | params | MMACs | MACs / CSA | params / CSA |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in part:
            base = csa.get((sweep, r["dim"], r["pixels"]))
            ratio = f"{r['macs'] / base['macs']:.3f}" if base else "-"
            params_ratio = f"{r['params'] / base['params']:.3f}" if base else "-"
            lines.append(f"| {r['attention']} | {r['dim']} | {r['pixels']} | {r['params']} | {r['macs'] / 1e6:.2f} | {ratio} | {params_ratio} |")
    return "\n".join(lines).lstrip("\n")


def plot_sweep(rows: list[dict], path: str) -> None:
    """Save the sweep as a PNG (atomically): MACs and params relative to CSA against C, MACs against N."""
    from ..io.files import atomic_write

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csa = {(r["sweep"], r["dim"], r["pixels"]): r for r in rows if r["attention"] == "csa"}

    def value(r: dict, key: str, relative: bool) -> float:
        return r[key] / csa[(r["sweep"], r["dim"], r["pixels"])][key] if relative else r[key]

    relative = bool(csa)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = (
        ("C", "dim", "macs", relative, "MACs / CSA's against C" if relative else "MACs against C"),
        ("C", "dim", "params", relative, "params / CSA's against C" if relative else "params against C"),
        ("N", "pixels", "macs", False, "MACs against N"),
    )
    styles = ["o-", "s--", "^-.", "v:", "D-", "x--"]
    for ax, (sweep, x_key, y_key, as_ratio, title) in zip(axes, panels):
        for style, attention in zip(styles * 4, dict.fromkeys(r["attention"] for r in rows)):
            points = [r for r in rows if r["attention"] == attention and r["sweep"] == sweep]
            ax.plot([p[x_key] for p in points], [value(p, y_key, as_ratio) for p in points], style, label=attention)
        ax.set_xscale("log", base=2)
        if not as_ratio:
            ax.set_yscale("log")
        ax.set_xlabel("C (channels = tokens)" if x_key == "dim" else "N (pixels = embedding)")
        ax.set_ylabel(f"{y_key} / CSA" if as_ratio else y_key)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


# Input sizes of the papers' complexity tables; other models are profiled at 256x256.
PAPER_SIZES: dict[str, list[tuple[int, int]]] = {
    "restormer": [(256, 256), (128, 128)],
    "mst_plus_plus": [(256, 256), (482, 512)],
    "mst_l": [(256, 256)],
}


def model_size_table(models: Iterable[str], attentions: Iterable[str], height: int, width: int) -> list[dict]:
    """Params and MACs of each model with each attention at ``height x width``, counted on the meta device (no memory).

    Rows: ``model``, ``attention``, ``params``, ``macs``, ``channels``. A pair whose attention has
    no implementation for the model's block family is left out. Raises :class:`ValueError`,
    naming the model and the size, for a size the architecture cannot take.
    """
    attentions = list(attentions)
    rows = []
    for name in models:
        for attention in attentions:
            with torch.device("meta"):
                try:
                    model = create_model(name, attention=attention)
                except ValueError:
                    continue
                try:
                    stats = profile(model, *model.example_inputs(height, width))
                except ValueError as err:  # e.g. a size the architecture cannot take
                    raise ValueError(f"{name} at {height}x{width}: {err}") from None
            rows.append({
                "model": name, "attention": attention, "params": stats.params, "macs": stats.macs,
                "channels": model.in_channels,
            })
    return rows


def format_size_table(rows: list[dict], height: int, width: int) -> str:
    """A Markdown table of :func:`model_size_table`'s rows, each against its model's CSA row when there is one."""
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


def format_size_tables(models: Sequence[str], attentions: Sequence[str], size: tuple[int, int] | None = None) -> str:
    """The tables of ``glmha complexity``: one per input size, each with the models counted at it.

    ``size`` (H, W) for every model, else each model's :data:`PAPER_SIZES` (256x256 for models
    the papers do not list). Raises :class:`ValueError` as :func:`model_size_table`.
    """
    sizes = {name: [tuple(size)] if size else PAPER_SIZES.get(name, [(256, 256)]) for name in models}
    tables = []
    for height, width in dict.fromkeys(s for name in models for s in sizes[name]):
        at_size = [name for name in models if (height, width) in sizes[name]]
        tables.append(format_size_table(model_size_table(at_size, attentions, height, width), height, width))
    return "\n\n".join(tables)
