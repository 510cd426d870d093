"""The README's demo table and figures, from a demo report folder.

    python scripts/demo_readme.py glmha-demo   # copy results.json and the figures into docs/, rewrite the table
    python scripts/demo_readme.py              # rewrite the table from docs/demo-results.json
    python scripts/demo_readme.py --check      # exit 1 when the table differs from docs/demo-results.json

The README's figures ``docs/figures/demo_<name>.png`` come from the report's ``figures/``:
``<task>.png`` is ``<task>_comparison.png``, ``<task>_attention_spectrum.png`` is
``<task>_eigen/attention_spectrum.png``, the others keep their name.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from glmha.experiments.report import demo_table, replace_table
from glmha.models.checkpoint import atomic_write

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "demo-results.json"
FIGURES = ROOT / "docs" / "figures"


def report_figure(report_dir: Path, name: str) -> Path:
    """The report's figure behind the README's ``demo_<name>.png``."""
    figures = report_dir / "figures"
    if name.endswith("_attention_spectrum"):
        return figures / f"{name.removesuffix('_attention_spectrum')}_eigen" / "attention_spectrum.png"
    if (figures / f"{name}_comparison.png").exists():
        return figures / f"{name}_comparison.png"
    return figures / f"{name}.png"


def copy_report(report_dir: Path, readme: str) -> None:
    results = report_dir / "results.json"
    if not results.is_file():
        sys.exit(f"demo_readme: error: {results} not found; expected a glmha demo report folder")
    sources = {name: report_figure(report_dir, name) for name in re.findall(r"docs/figures/demo_(\w+)\.png", readme)}
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        sys.exit(f"demo_readme: error: the report has no {missing[0]}; expected every figure the README shows")
    atomic_write(RESULTS, lambda tmp: shutil.copyfile(results, tmp))
    for name, source in sources.items():
        atomic_write(FIGURES / f"demo_{name}.png", lambda tmp, source=source: shutil.copyfile(source, tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", type=Path, help="a glmha demo report folder to take the numbers and figures from")
    parser.add_argument("--check", action="store_true", help="only check that the README's table matches docs/demo-results.json")
    args = parser.parse_args()
    readme = README.read_text(encoding="utf-8")
    if args.report and not args.check:
        copy_report(args.report, readme)
    expected = replace_table(readme, demo_table(json.loads(RESULTS.read_text())))
    if args.check:
        sys.exit(0 if expected == readme else "demo_readme: the README's demo table differs from docs/demo-results.json")
    atomic_write(README, lambda tmp: Path(tmp).write_text(expected, encoding="utf-8"))
    print(f"written: {README.relative_to(ROOT)} (table from {RESULTS.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
