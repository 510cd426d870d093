"""What a study reports: the statistics over seeds (means, spreads, paired differences with
Student-t intervals), its Markdown tables, its figure, and the table of ``glmha study --status``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from .study_jobs import RunState


@dataclass
class RunScores:
    """One trained variant of one task and seed."""

    task: str
    variant: str
    seed: int
    metrics: dict[str, float]
    per_image: list[dict[str, float]]
    params: int
    macs: int
    train_seconds: float
    ranks: dict[str, int] | None = None


# ----------------------------------------------------------------------------- statistics
def t_interval(values: Sequence[float], confidence: float = 0.95) -> float:
    """Half-width of the Student-t confidence interval of the mean of ``values`` (nan for one value)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def summarise(runs: Sequence[RunScores], reference: str, higher_is_better: dict[str, bool]) -> list[dict[str, Any]]:
    """Per task and variant: mean and standard deviation of each metric, and the paired difference to ``reference``."""
    rows = []
    by_key = {(r.task, r.variant, r.seed): r for r in runs}
    for task in dict.fromkeys(r.task for r in runs):
        variants = list(dict.fromkeys(r.variant for r in runs if r.task == task))
        for variant in variants:
            mine = sorted((r for r in runs if r.task == task and r.variant == variant), key=lambda r: r.seed)
            row: dict[str, Any] = {"task": task, "variant": variant, "seeds": [r.seed for r in mine],
                                   "params": mine[0].params, "macs": mine[0].macs, "metrics": {}}
            for metric in mine[0].metrics:
                values = [r.metrics[metric] for r in mine]
                entry = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                         "values": values, "higher_is_better": higher_is_better.get(metric, True)}
                paired = [r.metrics[metric] - by_key[(task, reference, r.seed)].metrics[metric]
                          for r in mine if (task, reference, r.seed) in by_key]
                if variant != reference and paired:
                    entry["difference"] = {"mean": float(np.mean(paired)), "ci95": t_interval(paired), "values": paired}
                    base = [by_key[(task, reference, r.seed)].metrics[metric] for r in mine if (task, reference, r.seed) in by_key]
                    entry["difference"]["relative"] = float(np.mean(paired) / np.mean(base)) if np.mean(base) else math.nan
                row["metrics"][metric] = entry
            rows.append(row)
    return rows


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_summary(rows: Sequence[dict[str, Any]], reference: str) -> str:
    """Markdown tables, one per task."""
    parts = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        metrics = list(mine[0]["metrics"])
        header = ["variant", "params (K)", "GMACs"] + [f"{m} (mean ± sd)" for m in metrics] + [f"{m} - {reference} (95 % CI)" for m in metrics]
        lines = [f"### {task}", "", "| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
        for row in mine:
            digits = {m: 3 if "psnr" in m else 4 for m in metrics}
            cells = [row["variant"], f"{row['params'] / 1e3:.1f}", f"{row['macs'] / 1e9:.3f}"]
            cells += [f"{_fmt(row['metrics'][m]['mean'], digits[m])} ± {_fmt(row['metrics'][m]['std'], digits[m])}" for m in metrics]
            for m in metrics:
                diff = row["metrics"][m].get("difference")
                cells.append("-" if diff is None else f"{diff['mean']:+.{digits[m]}f} ± {_fmt(diff['ci95'], digits[m])}")
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot_quality_vs_macs(rows: Sequence[dict[str, Any]], path: Path, primary: dict[str, str]) -> Path:
    """One panel per task: the primary metric's mean over the seeds against MACs.

    Error bars are the half-width of the 95 % Student-t confidence interval of that mean
    (:func:`t_interval`; none with one seed). Each axis says whether higher or lower is
    better from the metric's own direction (``higher_is_better`` of its summary entry, from the
    task's metric directions). One legend for all panels, one colour per variant, below them.
    """
    from .report import _pyplot, save_figure

    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), dpi=100, squeeze=False, layout="constrained")
    for ax, task in zip(axes[0], tasks):
        metric = primary[task]
        mine = [r for r in rows if r["task"] == task]
        seeds = max(len(r["metrics"][metric]["values"]) for r in mine)
        higher = mine[0]["metrics"][metric].get("higher_is_better", True)
        for row in mine:
            entry = row["metrics"][metric]
            ci = t_interval(entry["values"])
            ax.errorbar(row["macs"] / 1e9, entry["mean"], yerr=None if math.isnan(ci) else ci, fmt="o", capsize=3,
                        color=f"C{variants.index(row['variant']) % 10}", label=row["variant"])
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("GMACs per image", fontsize=9)
        ax.set_ylabel(f"{metric.upper()}, mean over {seeds} seed{'s' if seeds != 1 else ''}\n"
                      f"({'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(alpha=0.3)
    handles = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=min(len(handles), 4), fontsize=8,
               title="error bars: the 95 % Student-t interval of the mean over the seeds (mean ± its half-width)", title_fontsize=8)
    return save_figure(fig, path)


def format_status(states: Sequence["RunState"], output_dir: str | Path) -> str:
    """A table of the runs (task, variant, seed, state, why, log) and the count of each state."""
    base = Path(output_dir)

    def short(path: str | None) -> str:
        if not path:
            return ""
        try:
            return str(Path(path).relative_to(base))
        except ValueError:
            return path

    header = ("task", "variant", "seed", "state", "detail", "log")
    table = [header] + [(s.spec.task, s.spec.variant, str(s.spec.seed), s.state, s.detail, short(s.log)) for s in states]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in table]
    counts = {name: sum(s.state == name for s in states) for name in ("done", "queued", "running", "failed", "missing")}
    lines.append(", ".join(f"{count} {name}" for name, count in counts.items()) + f" (logs relative to {base})")
    return "\n".join(line.rstrip() for line in lines)
