"""A tiny run of benchmarks/tile_sweep.py: every kind of case runs in its own process and is reported."""
import importlib
import json


def test_tiny_sweep_reports_every_case(tmp_path):
    sweep = importlib.import_module("tile_sweep")  # benchmarks/ is on sys.path (tests/benchmarks/conftest.py)
    cases = ["tile=64", "whole", "cap=256KiB", "cap=none", "default"]
    argv = ["--models", "small", "--image", "small=3x72x136", "--cases", *cases, "--overlap", "8", "--threads", "1",
            "--output", str(tmp_path / "sweep.md"), "--json", str(tmp_path / "sweep.json")]
    assert sweep.main(argv) == 0
    runs = {run["case"]: run for run in json.loads((tmp_path / "sweep.json").read_text())["runs"]}
    assert set(runs) == set(cases) and not any("error" in run for run in runs.values())
    assert runs["tile=64"]["forwards"] == 3 * 2 and runs["tile=64"]["tile"] == "64x64"
    assert runs["whole"]["forwards"] == 1 and runs["cap=none"]["forwards"] == 1 and runs["default"]["forwards"] == 1
    capped = runs["cap=256KiB"]  # below the smallest tile's need: the smallest tiles (overlap 8: 16 px)
    assert capped["forwards"] > 6 and capped["tile"] == "16x16" and capped["plan"].startswith("tiling 72x136 into")
    for run in runs.values():
        assert run["seconds"] > 0 and run["user"] > 0 and run["peak_rss"] > 0
    table = (tmp_path / "sweep.md").read_text()
    assert "| small | 3x72x136 | cap=256KiB |" in table and "python benchmarks/tile_sweep.py --models small" in table
