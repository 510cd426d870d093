"""A tiny run of benchmarks/bench.py: every section runs and reports sane numbers."""
import importlib
import json

import pytest
import torch


@pytest.fixture(scope="module")
def bench():
    # benchmarks/ is on sys.path (tests/benchmarks/conftest.py), as it is for `python benchmarks/bench.py`
    return importlib.import_module("bench")


def test_tiny_run_of_every_section(bench, tmp_path):
    tiny = '{"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}'
    argv = [
        "--channels", "8", "--sides", "8", "--train", "layers",
        "--models", "restormer@3x16x16", "--model-kwargs", f"restormer={tiny}", "--no-compile",
        "--tile-image", "3x24x40", "--tile", "16", "--overlap", "4",
        "--warmup", "0", "--repeats", "1",
        "--output", str(tmp_path / "report.md"), "--json", str(tmp_path / "report.json"),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread avoids waiting on a busy second core
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "report.json").read_text())
    layer = report["layers"][0]["results"]
    model = report["models"][0]["results"]
    for name in report["attentions"]:
        assert layer[name]["forward_s"] > 0 and layer[name]["train_s"] > 0 and layer[name]["macs"] > 0
        assert model[name]["forward_plain_s"] > 0 and model[name]["forward_fast_s"] > 0
        assert model[name]["fast_max_abs_diff"] < 1e-5
    assert report["tiling"]["tiles"] == 2 * 3
    text = (tmp_path / "report.md").read_text()
    assert "### Attention layer" in text and "### Models" in text and "### Tiled restoration" in text


def test_shape_and_spec_errors(bench):
    assert bench.parse_model_spec("mst_l@28x256x256") == ("mst_l", (28, 256, 256))
    with pytest.raises(ValueError, match="NAME@CxHxW"):
        bench.parse_model_spec("restormer")
    with pytest.raises(ValueError, match="CxHxW"):
        bench.parse_shape("256x256")


def test_cpu_peak_memory_sees_a_known_allocation():
    timing = importlib.import_module("timing")
    if not timing.cpu_peak_supported():
        pytest.skip("needs /proc/self/clear_refs (Linux)")
    size = 64 * 2**20  # above glibc's largest mmap threshold: returned to the system when freed
    peak = timing.peak_memory(lambda: torch.ones(size // 4).sum(), torch.device("cpu"))
    assert 0.9 * size <= peak <= 1.5 * size


def test_quick_is_small_and_explicit_options_win(bench):
    quick = bench.resolve_defaults(bench.build_parser().parse_args(["--quick"]))
    assert not quick.compile and quick.train == "layers"  # compiling takes minutes on a CPU; model training steps too
    assert quick.model_kwargs["restormer"]["dim"] == 16 and quick.model_kwargs["mst_plus_plus"] == {"stage": 1}
    assert quick.tile_image == (3, 192, 288) and quick.tile == 128
    assert quick.channels == bench.QUICK_CHANNELS and quick.models == bench.QUICK_MODELS
    mine = bench.resolve_defaults(bench.build_parser().parse_args(
        ["--quick", "--compile", "--train", "all", "--model-kwargs", 'restormer={"dim": 8}', "--tile", "64"]))
    assert mine.compile and mine.train == "all" and mine.model_kwargs["restormer"] == {"dim": 8} and mine.tile == 64
    full = bench.resolve_defaults(bench.build_parser().parse_args([]))
    assert full.compile and full.train == "all" and full.model_kwargs == {} and full.tile_image == (3, 2160, 3840) and full.tile == 256
