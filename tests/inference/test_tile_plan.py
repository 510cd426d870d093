"""What ``tile="auto"`` chooses and says: the plan line, the CPU's cap on a tile's forward, tile progress."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import glmha
from glmha.inference import memory, tiling
from glmha.inference.memory import ActivationCost, activation_cost, tile_memory_limit
from glmha.inference.tiling import TileProgress, count_tiles, plan_tile

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return glmha.create_model("restormer", **TINY).eval()


def _forward_sizes(model, call):
    seen = []
    # the inputs of real forwards (activation_cost's probe runs on the meta device)
    hook = model.patch_embed.register_forward_hook(lambda m, i, o: None if i[0].is_meta else seen.append(tuple(i[0].shape[-2:])))
    try:
        call()
    finally:
        hook.remove()
    return seen


def test_plan_line_names_size_tiles_overlap_and_budget(tiny, caplog):
    x = torch.rand(1, 3, 200, 150)
    cost = activation_cost(tiny)
    budget = int(tiling._MARGIN + 1.5 * cost.bytes_for(96 * 96) + 7 * 4 * 200 * 150)
    with caplog.at_level(logging.INFO, logger="glmha"):
        seen = _forward_sizes(tiny, lambda: glmha.restore(tiny, x, tile="auto", max_memory=budget, overlap=16, cost=cost))
    assert max(max(s) for s in seen) == 96
    expected = f"tiling 200x150 into {len(seen)} tiles of 96 px (overlap 16) within a {memory.format_bytes(budget)} budget"
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("tiling")] == [expected]


def test_plan_and_progress_go_to_stderr_with_progress(tiny, capsys, monkeypatch):
    monkeypatch.setattr(tiling, "PROGRESS_INTERVAL", 0.0)  # a line after every tile
    glmha.restore(tiny, torch.rand(1, 3, 40, 100), tile=32, overlap=8, progress=True)
    err = capsys.readouterr().err.splitlines()
    count = count_tiles(40, 100, 32, 8)[0]
    assert err[0] == f"glmha: tiling 40x100 into {count} tiles of 32 px (overlap 8)"
    assert [line.split(",")[0] for line in err[1:]] == [f"glmha: tile {i}/{count}" for i in range(1, count + 1)]
    assert err[1].endswith(" left") and ", done in " in err[-1]


def test_whole_images_say_nothing(tiny, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="glmha"):
        glmha.restore(tiny, torch.rand(1, 3, 40, 56), tile="auto", max_memory=2**30, progress=True)
    assert capsys.readouterr().err == "" and not caplog.records


def test_count_tiles_is_the_number_of_forwards(tiny):
    x = torch.rand(1, 3, 61, 70)
    for mode in ("blend", "official"):
        seen = _forward_sizes(tiny, lambda: glmha.restore(tiny, x, tile=24, overlap=8, tile_mode=mode))
        count, tile_h, tile_w = count_tiles(61, 70, 24, 8, mode, multiple=8)
        assert count == len(seen) and (tile_h, tile_w) == (24, 24)
    assert count_tiles(40, 1000, 256, 32) == (5, 40, 256)  # shorter than a tile: tiles as tall as the image


def test_tile_progress_rate_and_estimate(monkeypatch):
    monkeypatch.setattr(tiling, "announce", lambda message, progress: None)
    now = [0.0]
    progress = TileProgress(20, True, interval=10.0, clock=lambda: now[0])
    for _ in range(20):
        now[0] += 3.0  # 3 s per tile: a line every fourth tile (12 s), at most one per 10 s
        progress.step()
    assert progress.said[:2] == ["tile 4/20, ~48 s left", "tile 8/20, ~36 s left"]
    assert progress.said[-1] == "tile 20/20, done in 60 s" and len(progress.said) == 5
    quick = TileProgress(20, True, interval=10.0, clock=lambda: 0.0)  # done before the first interval: silent
    for _ in range(20):
        quick.step()
    assert quick.said == []
    slow = TileProgress(4, True, interval=10.0, clock=lambda: now[0])  # 2 minutes a tile: a line after each
    for _ in range(4):
        now[0] += 120.0
        slow.step()
    assert slow.said == ["tile 1/4, ~6 min left", "tile 2/4, ~4 min left", "tile 3/4, ~2 min left", "tile 4/4, done in 8 min"]


# ----------------------------------------------------------------------------- the CPU default
def test_cpu_caps_one_forward_gpus_do_not():
    assert tile_memory_limit("cpu") == memory.CPU_TILE_MEMORY
    assert tile_memory_limit(torch.device("cuda", 0)) is None


def test_the_cap_makes_tiles_smaller_than_the_budget_alone_and_never_fails():
    # a small Restormer's cost on a 4000x3000 image: half of a 16 GiB machine's RAM gives few huge tiles
    cost = ActivationCost(bytes_per_pixel=1500.0, fixed_bytes=0.0)
    budget, cap = 8 * 2**30, 2**30
    alone = plan_tile(3000, 4000, cost, budget, multiple=8, overlap=32, image_bytes_per_pixel=28)
    capped = plan_tile(3000, 4000, cost, budget, multiple=8, overlap=32, image_bytes_per_pixel=28, tile_memory=cap)
    assert capped < alone
    assert 1.5 * cost.bytes_for(capped**2) <= cap < 1.5 * cost.bytes_for((capped + 8) ** 2)  # the largest under the cap
    assert count_tiles(3000, 4000, capped, 32)[0] > count_tiles(3000, 4000, alone, 32)[0]
    # a cap below the smallest tile's need: the smallest tile, not an error
    assert plan_tile(3000, 4000, cost, budget, multiple=8, overlap=32, tile_memory=1.0) == 40
    # an image whose forward is over the cap is tiled although it fits the budget
    assert plan_tile(1000, 1000, cost, budget, multiple=8) is None
    assert plan_tile(1000, 1000, cost, budget, multiple=8, tile_memory=cap) is not None


def test_restore_on_the_cpu_keeps_each_forward_under_the_cap(tiny, caplog, monkeypatch):
    cost = activation_cost(tiny)
    monkeypatch.setattr(memory, "CPU_TILE_MEMORY", int(1.5 * cost.bytes_for(64 * 64)))
    x = torch.rand(1, 3, 150, 130)
    with caplog.at_level(logging.INFO, logger="glmha"):
        seen = _forward_sizes(tiny, lambda: glmha.restore(tiny, x, tile="auto", max_memory=2**30, overlap=16))
    assert len(seen) > 1 and max(max(s) for s in seen) == 64
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("tiling"))
    assert f"into {len(seen)} tiles of 64 px (overlap 16) within a 1.00 GiB budget, each tile's forward under" in line


def test_the_cli_shows_the_plan_by_default(tmp_path, capsys):
    from glmha.cli import main

    checkpoint = glmha.save_weights(glmha.create_model("restormer", **TINY), tmp_path / "tiny.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 81, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    assert main(["restore", str(tmp_path / "wide.png"), "--checkpoint", str(checkpoint), "--model-kwargs", '{"dim": 8, '
                 '"num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}', "--output", str(tmp_path / "out"),
                 "--tile", "32", "--overlap", "8"]) == 0
    count = count_tiles(37, 81, 32, 8)[0]
    assert f"glmha: tiling 37x81 into {count} tiles of 32 px (overlap 8)" in capsys.readouterr().err
