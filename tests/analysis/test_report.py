import json
from pathlib import Path

import pytest

from glmha.analysis.report import TABLE_END, TABLE_START, demo_table, replace_table, results_table

ROOT = Path(__file__).resolve().parents[2]


def _row(task: str, attention: str, metrics: dict) -> dict:
    return {"task": task, "attention": attention, "params": 12_345, "macs": 6_700_000, "size": [32, 48], "metrics": metrics,
            "latency_ms": 2.25, "latency_min_ms": 2.0, "latency_max_ms": 3.5}


def test_results_table_shows_declared_metrics_and_latency_spread():
    rows = [_row("deraining", "csa", {"psnr": 30.0, "ssim": 0.9, "psnr_train_log": 31.0}), _row("rgb_to_hsi", "glmha", {"mrae": 0.25})]
    table = results_table(rows, {"psnr": True, "ssim": True, "mrae": False})
    lines = table.splitlines()
    assert lines[0] == "| task | attention | params (K) | GMACs | input | PSNR ↑ | SSIM ↑ | MRAE ↓ | latency (ms/image, median (min–max)) |"
    assert lines[2] == "| deraining | CSA | 12.3 | 0.007 | 32x48 | 30.0000 | 0.9000 |  | 2.2 (2.0–3.5) |"
    assert lines[3] == "| rgb_to_hsi | GLMHA | 12.3 | 0.007 | 32x48 |  |  | 0.2500 | 2.2 (2.0–3.5) |"
    assert "TRAIN_LOG" not in table


def test_replace_table_needs_the_markers():
    page = f"intro\n{TABLE_START}\nold\n{TABLE_END}\nrest\n"
    assert replace_table(page, "| new |") == f"intro\n{TABLE_START}\n| new |\n{TABLE_END}\nrest\n"
    with pytest.raises(ValueError, match="no demo table"):
        replace_table("no markers here", "| new |")


def test_readme_table_matches_the_committed_demo_results():
    record = json.loads((ROOT / "docs" / "demo-results.json").read_text())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert replace_table(readme, demo_table(record)) == readme, (
        "README's demo table differs from docs/demo-results.json; run: python scripts/demo_readme.py"
    )
    assert record["budget"] == "default" and {r["attention"] for r in record["results"]} == {"csa", "glmha"}
