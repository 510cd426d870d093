import json
import math
import re

import pytest

from glmha.cli import main


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--budget", "tiny", "--output", str(out)]) == 0
    return out


def test_tiny_demo_writes_the_report_with_every_figure(demo_report):
    md = (demo_report / "report.md").read_text()
    html = (demo_report / "report.html").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert figures, "the report embeds no figure"
    for figure in figures:
        assert (demo_report / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = " ".join(figures)
    assert "deraining_comparison.png" in names and "attention_spectrum.png" in names
    results = json.loads((demo_report / "results.json").read_text())["results"]
    tasks = {r["task"] for r in results}
    if "rgb_to_hsi" in tasks:  # the spectral task shows bands and pixel spectra
        assert "rgb_to_hsi_bands.png" in names and "rgb_to_hsi_spectra.png" in names


def test_html_report_embeds_every_figure(demo_report):
    """report.html is one file: every image is a data URI, none refers to a file."""
    import base64
    from html.parser import HTMLParser

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.sources = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs)["src"])

    parser = Images()
    parser.feed((demo_report / "report.html").read_text())
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (demo_report / "report.md").read_text())
    assert len(parser.sources) == len(figures) > 0
    for source, figure in zip(parser.sources, figures):
        assert source.startswith("data:image/png;base64,"), source[:80]
        assert base64.b64decode(source.split(",", 1)[1]) == (demo_report / figure).read_bytes()


def test_tiny_demo_table_has_finite_numbers_for_both_models(demo_report):
    results = json.loads((demo_report / "results.json").read_text())["results"]
    by_task = {}
    for r in results:
        by_task.setdefault(r["task"], {})[r["attention"]] = r
    assert "deraining" in by_task
    for task, models in by_task.items():
        assert set(models) == {"csa", "glmha"}, task
        for r in models.values():
            numbers = [r["params"], r["macs"], r["latency_ms"], *r["metrics"].values()]
            assert r["metrics"] and all(math.isfinite(x) and x > 0 for x in numbers), r
        assert models["glmha"]["params"] < models["csa"]["params"]
        assert models["glmha"]["macs"] < models["csa"]["macs"]
    md = (demo_report / "report.md").read_text()
    rows = [line for line in md.splitlines() if re.match(r"\| \w+ \| (CSA|GLMHA) \|", line)]
    assert len(rows) == len(results)
    for row in rows:
        assert "nan" not in row.lower() and "inf" not in row.lower()


def test_demo_rejects_unknown_task(tmp_path, capsys):
    assert main(["demo", "--budget", "tiny", "--tasks", "colourisation", "--output", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("glmha demo: error: unknown demo task 'colourisation'") and "\n" not in err


@pytest.mark.parametrize("command", ["demo", "rank"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and "examples:" in capsys.readouterr().out


def test_same_seed_budget_and_threads_give_identical_metrics(demo_report, tmp_path):
    """A second run into another folder gives bit-identical metrics (the first is the module's report)."""
    first = json.loads((demo_report / "results.json").read_text())
    assert main(["demo", "--budget", "tiny", "--output", str(tmp_path), "--threads", str(first["threads"])]) == 0
    second = json.loads((tmp_path / "results.json").read_text())
    assert [(r["task"], r["attention"], r["metrics"]) for r in second["results"]] == [
        (r["task"], r["attention"], r["metrics"]) for r in first["results"]
    ]


def test_results_record_versions_device_and_command(demo_report):
    import platform

    import torch

    import glmha

    record = json.loads((demo_report / "results.json").read_text())
    from importlib.metadata import version

    assert record["versions"] == {"glmha": glmha.__version__, "torch": torch.__version__, "python": platform.python_version(),
                                  "numpy": version("numpy"), "scipy": version("scipy"), "scikit-image": version("scikit-image"),
                                  "colour-science": version("colour-science")}
    assert record["device"] == "cpu" and record["device_name"] and record["threads"] >= 1
    assert record["command"].startswith(f"glmha demo --output {demo_report} --budget tiny --seed 0 --device cpu --threads ")
    for r in record["results"]:
        assert r["latency_min_ms"] <= r["latency_ms"] <= r["latency_max_ms"]


def test_demo_rejects_zero_threads_and_leaves_threads_alone(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    assert main(["demo", "--budget", "tiny", "--threads", "0", "--output", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "glmha demo: error: threads must be at least 1, got 0"
    assert torch.get_num_threads() == before


def test_report_says_what_its_numbers_rest_on(demo_report):
    """The seed, the number of test images, that one seed decides nothing; captions name their image and its own score."""
    md = (demo_report / "report.md").read_text()
    record = json.loads((demo_report / "results.json").read_text())
    n = record["test_images"]
    assert record["seed"] == 0 and n == 2
    assert "trained with seed 0 (one seed" in md and f"mean over the task's {n} held-out test images" in md
    assert f"One seed on {n} test images decides nothing about which attention is better" in md and "`glmha study`" in md
    captions = re.findall(r"^\*(.+)\*$", md, flags=re.M)
    by = {(r["task"], r["attention"]): r for r in record["results"]}
    deraining = next(c for c in captions if c.startswith("Deraining"))
    assert f"test images 1 and 2 of {n} (`synthetic_deraining_000`, `synthetic_deraining_001`)" in deraining
    assert f"mean over all {n} test images: CSA {by[('deraining', 'csa')]['metrics']['psnr']:.4f}" in deraining
    for task in {r["task"] for r in record["results"]} - {"deraining"}:
        bands = next(c for c in captions if "five bands" in c and c.startswith(record["tasks"][task]["title"]))
        metric = next(iter(record["tasks"][task]["higher_is_better"]))
        own = f"CSA {metric.upper()} {by[(task, 'csa')]['per_image'][0][metric]:.4f}"
        assert f"test image 1 of {n} (`synthetic_scene_000`)" in bands and f"On this image {own}" in bands
        assert f"the table's {metric.upper()} is the mean over all {n} test images: CSA {by[(task, 'csa')]['metrics'][metric]:.4f}" in bands
