"""Report rendering for ``glmha demo``: side-by-side figures, spectral plots, Markdown and HTML pages.

Figures are PNGs drawn with matplotlib's Agg backend and written atomically. A report is a
title, an introduction, a results table and sections; each section has Markdown text, tables
(Markdown pipe tables) and figures. ``report.md`` and ``report.html`` hold the same content:
``report.md`` refers to the figures by relative path, so the folder can be moved or published as
it is; ``report.html`` embeds them, so the page alone can be sent.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..io.files import atomic_write
from .tasks import DemoTask, ModelResult

# Colours of the two attentions in every plot, and of the ground truth.
COLOURS = {"CSA": "#1f77b4", "GLMHA": "#d62728", "ground truth": "#222222"}


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[Figure] = field(default_factory=list)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    plt = _pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)


def _as_rgb(image: torch.Tensor) -> np.ndarray:
    """``[1 x] C x H x W`` tensor in [0, 1] to an ``H x W x 3`` float array for imshow."""
    image = image.detach().float().cpu()
    if image.dim() == 4:
        image = image[0]
    if image.shape[0] == 1:
        image = image.repeat(3, 1, 1)
    return image[:3].clamp(0, 1).permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------- image tasks
def comparison_figure(
    rows: Sequence[Sequence[tuple[str, torch.Tensor]]], path: str | Path, suptitle: str | None = None, panel: float = 2.6
) -> Path:
    """A grid of images: one row per example, one ``(title, image)`` per column; ``panel`` inches per image."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel * n_cols, panel * n_rows + (0.3 if suptitle else 0)), dpi=100, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                title, image = row[c]
                ax.imshow(_as_rgb(image), interpolation="nearest")
                ax.set_title(title, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- spectral tasks
def spectral_bands_figure(
    cubes: Mapping[str, torch.Tensor],
    wavelengths: Sequence[float],
    path: str | Path,
    bands: Sequence[int] | None = None,
    suptitle: str | None = None,
    reference: str = "ground truth",
) -> Path:
    """Selected bands of each ``[1 x] bands x H x W`` cube (one row per cube, one column per band),
    then the absolute error of every other cube against ``reference`` (one row each).

    Each band has one grey scale shared by all cubes and one error scale shared by all error
    maps, so a column compares the models directly; the column title gives both ranges.
    """
    plt = _pyplot()
    cubes = {name: (cube[0] if cube.dim() == 4 else cube).detach().float().cpu() for name, cube in cubes.items()}
    truth = cubes[reference]
    errors = {f"|{name} − {reference}|": (cube - truth).abs() for name, cube in cubes.items() if name != reference}
    n_bands = len(wavelengths)
    bands = list(bands) if bands is not None else sorted({round(i * (n_bands - 1) / 4) for i in range(5)})
    rows = [*cubes.items(), *errors.items()]
    fig, axes = plt.subplots(len(rows), len(bands), figsize=(1.9 * len(bands), 2.0 * len(rows) + 0.5), dpi=100, squeeze=False)
    for c, band in enumerate(bands):
        vmax = max(float(cube[band].max()) for cube in cubes.values()) or 1.0
        emax = max((float(error[band].max()) for error in errors.values()), default=0.0) or 1.0
        axes[0][c].set_title(f"{wavelengths[band]:.0f} nm\n0–{vmax:.2f}, error 0–{emax:.2f}", fontsize=8)
        for r, (name, image) in enumerate(rows):
            ax = axes[r][c]
            is_error = name in errors
            ax.imshow(image[band].numpy(), cmap="magma" if is_error else "gray", vmin=0, vmax=emax if is_error else vmax,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def spectral_curves_figure(
    cubes: Mapping[str, torch.Tensor],
    wavelengths: Sequence[float],
    pixels: Sequence[tuple[int, int]],
    path: str | Path,
    suptitle: str | None = None,
) -> Path:
    """The spectrum of a few pixels (row, column) in each cube, one panel per pixel."""
    plt = _pyplot()
    cubes = {name: (cube[0] if cube.dim() == 4 else cube).detach().float().cpu() for name, cube in cubes.items()}
    fig, axes = plt.subplots(1, len(pixels), figsize=(3.2 * len(pixels), 2.8), dpi=100, squeeze=False)
    for ax, (row, col) in zip(axes[0], pixels):
        for name, cube in cubes.items():
            style = {"linestyle": "--", "linewidth": 1.8} if name == "ground truth" else {"linewidth": 1.3}
            ax.plot(wavelengths, cube[:, row, col].numpy(), color=COLOURS.get(name), label=name, **style)
        ax.set_title(f"pixel ({row}, {col})", fontsize=9)
        ax.set_xlabel("wavelength (nm)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
    axes[0][0].set_ylabel("reflectance / intensity", fontsize=8)
    axes[0][-1].legend(fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def pick_pixels(cube: torch.Tensor, count: int = 3, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` pixels with different spectra: the brightest, the darkest and a seeded random one, away from borders."""
    cube = cube[0] if cube.dim() == 4 else cube
    _, h, w = cube.shape
    margin = max(1, min(h, w) // 8)
    energy = cube[:, margin : h - margin, margin : w - margin].sum(0)
    inner_w = energy.shape[1]
    picks = [int(energy.argmax()), int(energy.argmin())]
    rng = np.random.default_rng(seed)
    while len(picks) < count:
        picks.append(int(rng.integers(energy.numel())))
    return [(margin + p // inner_w, margin + p % inner_w) for p in picks[:count]]


# ----------------------------------------------------------------------------- the demo's figures
def which_images(batches: Sequence[dict], indices: Sequence[int], total: int, names: str = "`{}`") -> str:
    """``test images 1 and 2 of 3 (`a`, `b`)``: the 1-based numbers of the shown test images and their
    names, each formatted by ``names`` (``""``: no names)."""
    indices = list(indices)
    numbers = [str(i + 1) for i in indices]
    listed = numbers[0] if len(numbers) == 1 else ", ".join(numbers[:-1]) + " and " + numbers[-1]
    named = ", ".join(names.format(batches[i]["name"]) for i in indices if names and batches[i].get("name"))
    return f"test image{'s' if len(indices) > 1 else ''} {listed} of {total}" + (f" ({named})" if named else "")


def _table_means(results: Mapping[str, ModelResult], metric: str, total: int) -> str:
    """What the table holds for ``metric``: its mean over the ``total`` test images, per model, as the table prints it."""
    values = ", ".join(f"{name} {r.metrics[metric]:.4f}" for name, r in results.items() if metric in r.metrics)
    return f"the table's {metric.upper()} is the mean over all {total} test images: {values}"


@torch.no_grad()
def task_figures(
    task: DemoTask,
    results: Mapping[str, ModelResult],
    test_batches: Sequence[dict],
    figures_dir: Path,
    examples: int = 2,
) -> list[Figure]:
    """The figures of one demo task from the models' test predictions: images side by side;
    for cubes, the input, five bands and the spectra of three pixels.

    Every caption (and figure title) names the test images it shows, gives those images' own
    scores and, beside them, the table's means over all test images, so the two never read as
    the same number."""
    engine_task = task.engine_task()
    total = len(test_batches)
    shown = []
    for i, batch in enumerate(test_batches[:examples]):
        predictions = {name: r.predictions[i] for name, r in results.items()}
        scores = {name: r.per_image[i] for name, r in results.items()}
        shown.append((batch, predictions, scores))

    primary = next(iter(task.metrics))
    figures = []
    if task.kind == "image":
        rows = []
        for i, (batch, predictions, scores) in enumerate(shown):
            inp = task.shown_input(batch)
            input_score = float(engine_task.metrics(batch["input"], batch)[primary].mean())
            row = [(f"image {i + 1}: input {primary.upper()} {input_score:.2f}", inp)]
            row += [(f"{name} {primary.upper()} {scores[name][primary]:.2f}", pred) for name, pred in predictions.items()]
            row.append(("ground truth", batch["target"]))
            rows.append(row)
        which = which_images(test_batches, range(len(shown)), total)
        path = comparison_figure(rows, figures_dir / f"{task.name}_comparison.png",
                                 suptitle=f"{which_images(test_batches, range(len(shown)), total, '')}, one per row; "
                                          f"{primary.upper()} of each image")
        figures.append(Figure(path, f"{task.title}: input, CSA, GLMHA and ground truth on held-out {which}, one per row; "
                                    f"each panel's {primary.upper()} is that image's own ({_table_means(results, primary, total)})."))
        return figures

    wavelengths = list(task.wavelengths) or list(range(shown[0][0]["target"].shape[1]))
    batch, predictions, scores = shown[0]
    which = which_images(test_batches, [0], total)
    title = which_images(test_batches, [0], total, "{}")  # the figure's own title: no Markdown
    what = "RGB image" if "input" in batch else "CASSI measurement (coded, dispersed and summed bands)"
    comparison = comparison_figure([[(what, task.shown_input(batch))]], figures_dir / f"{task.name}_input.png", panel=4.0,
                                   suptitle=title)
    figures.append(Figure(comparison, f"{task.title}: the {what} of held-out {which}, which the networks reconstruct the cube below from."))
    cubes = {"ground truth": batch["target"], **predictions}
    cubes = {name: cubes[name] for name in ("ground truth", *predictions)}
    scores_text = ", ".join(f"{name} {primary.upper()} {s[primary]:.4f}" for name, s in scores.items())
    bands = spectral_bands_figure(cubes, wavelengths, figures_dir / f"{task.name}_bands.png",
                                  suptitle=f"{title}: {scores_text} on this image")
    figures.append(Figure(bands, f"{task.title}, held-out {which}: five bands of the ground truth and of both reconstructions, "
                                  f"one grey scale per band, and each reconstruction's absolute error, one error scale per band. "
                                  f"On this image {scores_text}; {_table_means(results, primary, total)}."))
    curves = spectral_curves_figure(cubes, wavelengths, pick_pixels(batch["target"]), figures_dir / f"{task.name}_spectra.png",
                                    suptitle=title)
    figures.append(Figure(curves, f"{task.title}, held-out {which}: spectra of three pixels (brightest, darkest, random)."))
    return figures


# ----------------------------------------------------------------------------- tables and pages
def _metric_label(name: str, higher_is_better: bool | None) -> str:
    arrow = "" if higher_is_better is None else (" ↑" if higher_is_better else " ↓")
    return name.upper() + arrow


def results_table(results: Sequence[Mapping], higher_is_better: Mapping[str, bool]) -> str:
    """Markdown table: one row per task and attention, with params, MACs, metrics and latency.

    ``results`` are the rows of ``results.json`` (a model's numbers as a mapping); only the metrics
    named in ``higher_is_better`` get a column, in that order.
    """
    metric_names = [m for m in higher_is_better if any(m in r["metrics"] for r in results)]
    header = ["task", "attention", "params (K)", "GMACs", "input"] + [_metric_label(m, higher_is_better[m]) for m in metric_names]
    header.append("latency (ms/image, median (min–max))")
    lines = ["| " + " | ".join(header) + " |", "| --- | --- | " + " | ".join("---:" for _ in header[2:]) + " |"]
    for r in results:
        height, width = r["size"]
        cells = [r["task"], r["attention"].upper(), f"{r['params'] / 1e3:.1f}", f"{r['macs'] / 1e9:.3f}", f"{height}x{width}"]
        cells += [f"{r['metrics'][m]:.4f}" if m in r["metrics"] else "" for m in metric_names]
        cells.append(f"{r['latency_ms']:.1f} ({r['latency_min_ms']:.1f}–{r['latency_max_ms']:.1f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def demo_table(record: Mapping) -> str:
    """The results table of a demo's ``results.json`` (as read with ``json.load``)."""
    higher_is_better: dict[str, bool] = {}
    for task in record["tasks"].values():
        for metric, higher in task["higher_is_better"].items():
            higher_is_better.setdefault(metric, higher)
    return results_table(record["results"], higher_is_better)


def _inline_html(text: str) -> str:
    text = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _markdown_to_html(markdown: str) -> str:
    """The small subset of Markdown the reports use: paragraphs, pipe tables, inline code."""
    out, table = [], []

    def flush_table() -> None:
        if not table:
            return
        rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table if not re.fullmatch(r"\|[\s\-:|]+\|", line.strip())]
        head, body = rows[0], rows[1:]
        out.append(
            "<table><thead><tr>" + "".join(f"<th>{_inline_html(c)}</th>" for c in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in body)
            + "</tbody></table>"
        )
        table.clear()

    for block in re.split(r"\n\s*\n", markdown.strip()):
        for line in block.splitlines():
            if line.strip().startswith("|"):
                table.append(line)
            else:
                flush_table()
                if line.strip():
                    out.append(f"<p>{_inline_html(line.strip())}</p>")
        flush_table()
    return "\n".join(out)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _data_uri(path: Path) -> str:
    """A PNG as a ``data:`` URI, so the HTML page carries its figures and can be sent as one file."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def write_report(output_dir: str | Path, title: str, intro: str, table: str, sections: Sequence[Section]) -> tuple[Path, Path]:
    """Write ``report.md`` (figures referenced relatively) and ``report.html`` (figures embedded) into ``output_dir``."""
    output_dir = Path(output_dir)

    def rel(path: Path) -> str:
        return Path(path).resolve().relative_to(output_dir.resolve()).as_posix()

    md = [f"# {title}", "", intro, "", table, ""]
    body = [f"<h1>{html.escape(title)}</h1>", _markdown_to_html(intro), _markdown_to_html(table)]
    for section in sections:
        md += [f"## {section.title}", "", section.text, ""]
        body += [f"<h2>{html.escape(section.title)}</h2>", _markdown_to_html(section.text)]
        for figure in section.figures:
            md += [f"![{figure.caption}]({rel(figure.path)})", "", f"*{figure.caption}*", ""]
            body.append(
                f'<figure><img src="{_data_uri(figure.path)}" alt="{html.escape(figure.caption)}">'
                f"<figcaption>{_inline_html(figure.caption)}</figcaption></figure>"
            )
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    report_md = atomic_write(output_dir / "report.md", lambda tmp: Path(tmp).write_text("\n".join(md), encoding="utf-8"))
    report_html = atomic_write(output_dir / "report.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return report_md, report_html


# ----------------------------------------------------------------------------- the README's demo table
TABLE_START = "<!-- demo table: python scripts/demo_readme.py -->"
TABLE_END = "<!-- end of demo table -->"


def replace_table(page: str, table: str) -> str:
    """``page`` (a Markdown page) with the text between the demo-table markers replaced by ``table``."""
    start, end = page.find(TABLE_START), page.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"the page has no demo table between {TABLE_START!r} and {TABLE_END!r}")
    return page[: start + len(TABLE_START)] + "\n" + table + "\n" + page[end:]
