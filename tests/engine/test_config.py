"""Configs: base/variant/override resolution, errors, and the official recipes' schedules."""
import math

import pytest
import torch

from glmha.engine import ConfigError, load_config
from glmha.engine.settings import TrainSettings, _settings, build_optimizer, build_scheduler

from .conftest import CONFIGS

ALL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("_"))


def test_overrides_variants_and_base():
    cfg = load_config(CONFIGS / "restormer" / "deraining_glmha.yaml", ["train.stages=null", "train.total_iters=7", "model.dim=16"])
    assert cfg["model"]["attention"] == "glmha" and cfg["model"]["dim"] == 16
    assert cfg["train"]["total_iters"] == 7 and cfg["optimizer"]["name"] == "AdamW"
    smoke = load_config(CONFIGS / "restormer" / "deraining_glmha.yaml", {"train.val_every": 2}, variant="smoke")
    assert smoke["data"]["train"]["type"] == "synthetic" and "root" not in smoke["data"]["train"]  # data replaced whole
    assert smoke["model"]["dim"] == 8 and smoke["model"]["attention"] == "glmha"
    assert smoke["train"]["val_every"] == 2 and "variants" not in smoke


def test_config_errors_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="config not found"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="no variant 'fast'"):
        load_config(CONFIGS / "restormer" / "deraining_csa.yaml", variant="fast")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(CONFIGS / "restormer" / "deraining_csa.yaml", ["train.total_iters"])
    with pytest.raises(ConfigError, match=r"unknown config sections \['trian'\]"):
        load_config(CONFIGS / "restormer" / "deraining_csa.yaml", ["trian.x=1"])
    with pytest.raises(ConfigError, match=r"train.learning_rate: unknown key"):
        load_config(CONFIGS / "restormer" / "deraining_csa.yaml", ["train.learning_rate=1"])
    with pytest.raises(ConfigError, match="stages last"):
        load_config(CONFIGS / "restormer" / "deraining_csa.yaml", ["train.total_iters=10"])
    cfg = load_config(CONFIGS / "restormer" / "deraining_csa.yaml")
    cfg["train"]["learning_rate"] = 1  # a dict edited after loading is still checked by the trainer
    with pytest.raises(ConfigError, match=r"unknown train settings \['learning_rate'\]"):
        _settings(cfg)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.stem)
def test_every_config_and_its_smoke_variant_resolve(path):
    for variant in (None, "smoke"):
        cfg = load_config(path, variant=variant)
        _settings(cfg)
        assert cfg["data"]["train"]["type"] and cfg["data"]["test"]
        if variant == "smoke":
            assert all(spec["type"].startswith("synthetic") for spec in [cfg["data"]["train"], cfg["data"]["val"], *cfg["data"]["test"].values()])
    assert load_config(path)["model"]["attention"] == ("glmha" if path.stem.endswith("glmha") else "csa")


def _lrs(cfg, iterations):
    model = torch.nn.Linear(1, 1)
    optimizer = build_optimizer(model, cfg["optimizer"])
    scheduler = build_scheduler(optimizer, cfg["scheduler"])
    out = {}
    for i in range(max(iterations) + 1):
        if i in iterations:
            out[i] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    return out


def test_restormer_recipe_schedule_and_stages():
    cfg = load_config(CONFIGS / "restormer" / "deraining_csa.yaml")
    assert cfg["scheduler"]["milestones"] == [92000]
    assert [(p["T_max"], p["eta_min"]) for p in cfg["scheduler"]["phases"]] == [(92000, 3e-4), (208000, 1e-6)]
    # The same schedule with every length divided by 1000 (stepping 300k times is slow).
    small = {**cfg, "scheduler": {"milestones": [92], "phases": [
        dict(p, T_max=p["T_max"] // 1000) for p in cfg["scheduler"]["phases"]]}}
    lrs = _lrs(small, [0, 50, 91, 92, 196, 299])
    assert lrs[0] == lrs[50] == lrs[91] == lrs[92] == pytest.approx(3e-4)  # flat first period
    assert lrs[196] == pytest.approx(1e-6 + (3e-4 - 1e-6) * 0.5, rel=1e-6)  # cosine half way
    assert lrs[299] == pytest.approx(1e-6 + (3e-4 - 1e-6) * (1 + math.cos(math.pi * 207 / 208)) / 2, rel=1e-6)
    settings = _settings(cfg)
    assert [settings.stage_at(i)[1:] for i in (0, 91999, 92000, 156000, 204000, 240000, 276000, 299999)] == [
        (128, 8), (128, 8), (160, 5), (192, 4), (256, 2), (320, 1), (384, 1), (384, 1)]
    assert cfg["train"]["grad_clip"] == 0.01 and cfg["optimizer"]["weight_decay"] == 1e-4


@pytest.mark.parametrize("size", ["s", "m", "l"])
def test_real_mst_recipe_is_the_official_one(size):
    import bisect

    cfg = load_config(CONFIGS / "mst" / f"mst_{size}_real_glmha.yaml")
    assert cfg["model"] == {"name": f"mst_{size}_real", "attention": "glmha"}
    assert cfg["task"] == "real_cassi" and cfg["data"]["train"]["crop_size"] == 384
    assert cfg["optimizer"] == {"name": "Adam", "lr": 4e-4, "betas": [0.9, 0.999]}
    settings = _settings(cfg)
    assert (settings.loss, settings.batch_size) == ("l1", 1)
    # Official: epochs 1..299 of 20000 // (384 // 96)**2 samples at batch 1; at the start of
    # epoch e, MultiStepLR.step(e) sets lr = 4e-4 * 0.5 ** #(milestones <= e).
    per_epoch = 20000 // (384 // 96) ** 2
    assert cfg["data"]["train"]["length"] == per_epoch == 1250
    assert settings.total_iters == 299 * per_epoch
    official = [50, 100, 150, 200, 250]
    ours = cfg["scheduler"]["milestones"]
    assert cfg["scheduler"]["name"] == "MultiStepLR" and cfg["scheduler"]["gamma"] == 0.5
    for epoch in range(1, 300):
        for iteration in ((epoch - 1) * per_epoch, epoch * per_epoch - 1):  # first and last of the epoch
            assert bisect.bisect_right(ours, iteration) == bisect.bisect_right(official, epoch), (epoch, iteration)


def test_keep_checkpoints_below_one_is_refused():
    with pytest.raises(ConfigError, match="train.keep_checkpoints = 0: must be an integer > 0"):
        _settings(load_config(CONFIGS / "restormer" / "deraining_csa.yaml", ["train.keep_checkpoints=0"]))
