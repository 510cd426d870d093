"""glmha study's figure: each metric's direction, the interval the error bars show, and panels that do not overlap."""
import pytest

from glmha.experiments import report
from glmha.experiments.study import RunScores
from glmha.experiments.study_report import plot_quality_vs_macs, summarise, t_interval


@pytest.fixture
def drawn(tmp_path, monkeypatch):
    """The figure of a two-task study (PSNR first, then MRAE, as a study lists them), kept open for inspection."""
    kept = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: kept.append(fig) or path)
    runs = []
    for seed, (psnr, mrae) in enumerate([(30.0, 0.30), (30.4, 0.28), (29.9, 0.33)]):
        for variant, shift in (("csa", 0.0), ("glmha:calibration=false,gate_weights=false", 0.1)):
            runs.append(RunScores("deraining", variant, seed, {"psnr": psnr + shift, "ssim": 0.9}, [], 1000, 7 * 10**8, 1.0))
            runs.append(RunScores("rgb_to_hsi", variant, seed, {"mrae": mrae - shift / 10, "psnr": 27.0}, [], 500, 10**9, 1.0))
    rows = summarise(runs, "csa", {"psnr": True, "ssim": True, "mrae": False})
    plot_quality_vs_macs(rows, tmp_path / "figure.png", {"deraining": "psnr", "rgb_to_hsi": "mrae"})
    (fig,) = kept
    yield fig, rows
    report._pyplot().close(fig)


def test_each_panel_says_its_metrics_direction(drawn):
    fig, _ = drawn
    deraining, rgb_to_hsi = fig.axes[:2]
    assert "PSNR" in deraining.get_ylabel() and "higher is better" in deraining.get_ylabel()
    assert "MRAE" in rgb_to_hsi.get_ylabel() and "lower is better" in rgb_to_hsi.get_ylabel()  # was "higher"
    assert "mean over 3 seeds" in rgb_to_hsi.get_ylabel()


def test_error_bars_are_the_95_t_interval_of_the_mean(drawn):
    fig, rows = drawn
    legend = fig.legends[0]
    assert "95 % Student-t interval of the mean" in legend.get_title().get_text()
    ax = fig.axes[1]
    row = next(r for r in rows if r["task"] == "rgb_to_hsi" and r["variant"] == "csa")
    entry = row["metrics"]["mrae"]
    bar = ax.containers[0]
    (low, high), = [segment[:, 1] for segment in bar.lines[2][0].get_segments()]
    assert (high - low) / 2 == pytest.approx(t_interval(entry["values"])) and (high + low) / 2 == pytest.approx(entry["mean"])


def test_panels_and_legend_do_not_overlap(drawn):
    fig, _ = drawn
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes] + [fig.legends[0].get_window_extent(renderer)]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)  # one legend, outside the panels
