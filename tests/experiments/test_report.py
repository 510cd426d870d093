import json
from pathlib import Path

import pytest

from glmha.experiments.report import TABLE_END, TABLE_START, demo_table, replace_table, results_table

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


# The built-in spectral data behind the README's table (budget "default", seed 0: training scenes
# 0-23 and held-out scenes 1000-1002 at 96 x 96), the same on every x86 CPU for the data
# packages' versions the table records. A new release of one of them may move the scenes.
DEMO_SPECTRAL_DATA_SHA256 = {
    ("rgb2hsi", 0): "fab653d8cb9d54317ecb2c97123e1a34751091e46a8f0d2bd2c45dce0a5e96e4",
    ("rgb2hsi", 1000): "1df935103767e85ed76ea14577537a073f800443869d86e4cf0b491d9ec6ddbe",
    ("cassi", 0): "d58a26a3715c578d735cac055e39433c9274c9ec1079e18e6b6d8588c46b2573",
    ("cassi", 1000): "fc8635c71cfd62efec4b1f86e888b304939393df8beeee3d77031db66687fcb9",
}


@pytest.mark.slow
def test_readme_table_was_measured_on_the_data_this_code_makes():
    import hashlib

    from glmha.data.synthetic_hsi import SyntheticHSI
    from glmha.experiments.demo import BUDGETS, DATA_PACKAGES, package_versions

    record = json.loads((ROOT / "docs" / "demo-results.json").read_text())
    installed = package_versions()
    differ = {name: (record["versions"][name], installed[name]) for name in DATA_PACKAGES if record["versions"][name] != installed[name]}
    if differ:
        pytest.skip(f"the README's table was measured with other data packages (recorded, installed): {differ}")
    budget = BUDGETS[record["budget"]]
    assert record["seed"] == 0
    for (task, seed), expected in DEMO_SPECTRAL_DATA_SHA256.items():
        count = budget.train_images if seed == 0 else budget.test_images
        data, digest = SyntheticHSI(count, budget.image_size, task, seed), hashlib.sha256()
        for i in range(count):
            for tensor in data[i] if task == "rgb2hsi" else (data[i],):
                digest.update(tensor.numpy().tobytes())
        assert digest.hexdigest() == expected, f"the built-in {task} scenes from seed {seed} changed"


# ----------------------------------------------------------------------------- figure captions
def _fake_results(task, batches, offsets):
    """Two "models" whose predictions are the targets shifted by a constant; metrics computed here, per image."""
    import torch

    from glmha.experiments.tasks import ModelResult

    engine_task = task.engine_task()
    results = {}
    for name, offset in offsets.items():
        predictions = [(b["target"] + offset).clamp(0, 1) for b in batches]
        per_image = [{m: float(v.float().mean()) for m, v in engine_task.metrics(p, b).items()} for p, b in zip(predictions, batches)]
        metrics = {m: sum(s[m] for s in per_image) / len(per_image) for m in per_image[0]}
        results[name] = ModelResult(task.name, name.lower(), 1, 1, metrics, 1.0, 1.0, 1, "", (8, 8), model=None,
                                    predictions=[p.cpu() for p in predictions], per_image=per_image)
    return results


@pytest.mark.parametrize("task_name", ["deraining", "cassi"])
def test_captions_name_their_image_and_tell_its_score_from_the_table_mean(task_name, tmp_path):
    from glmha.experiments.demo import BUDGETS, _test_batches, available_tasks
    from glmha.experiments.report import task_figures

    budget = BUDGETS["tiny"]
    task = next(t for t in available_tasks(budget, 0) if t.name == task_name)
    batches = _test_batches(task)
    results = _fake_results(task, batches, {"CSA": 0.05, "GLMHA": 0.1})
    figures = task_figures(task, results, batches, tmp_path)
    total = len(batches)
    assert total == budget.test_images == 2
    primary = next(iter(task.metrics))
    table_means = ", ".join(f"{name} {r.metrics[primary]:.4f}" for name, r in results.items())
    if task_name == "deraining":
        (caption,) = [f.caption for f in figures]
        assert f"test images 1 and 2 of {total} (`{batches[0]['name']}`, `{batches[1]['name']}`)" in caption
        assert f"the table's PSNR is the mean over all {total} test images: {table_means}" in caption
        return
    bands = next(f.caption for f in figures if f.path.name == "cassi_bands.png")
    assert f"held-out test image 1 of {total} (`{batches[0]['name']}`)" in bands
    # the image's own PSNR, computed here for image 1, next to the table's mean over all images
    own = ", ".join(f"{name} PSNR {r.per_image[0]['psnr']:.4f}" for name, r in results.items())
    assert f"On this image {own}; the table's PSNR is the mean over all {total} test images: {table_means}." in bands
    assert results["CSA"].per_image[0]["psnr"] != pytest.approx(results["CSA"].metrics["psnr"], abs=1e-4)  # two different numbers
    for figure in figures:
        assert f"test image 1 of {total} (`{batches[0]['name']}`)" in figure.caption


def test_readme_figure_captions_name_the_image_and_its_numbers():
    """The README's CASSI caption gives image 1's own PSNRs and the table's means, both from docs/demo-results.json."""
    record = json.loads((ROOT / "docs" / "demo-results.json").read_text())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    by = {(r["task"], r["attention"]): r for r in record["results"]}
    total = len(by[("cassi", "csa")]["per_image"])
    caption = next(line for line in readme.split("\n\n") if line.startswith("*CASSI snapshot reconstruction"))
    assert f"test image 1 of {total}" in caption
    for attention in ("csa", "glmha"):
        assert f"{by[('cassi', attention)]['per_image'][0]['psnr']:.2f} dB" in caption
        assert f"{by[('cassi', attention)]['metrics']['psnr']:.2f}" in caption
    assert f"test images 1 and 2 of {len(by[('deraining', 'csa')]['per_image'])}" in readme
