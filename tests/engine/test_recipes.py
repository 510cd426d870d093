"""The training recipes against the official options, and the batch transforms they need.

The official values below are facts read from the official options files: Restormer's
``*/Options/*.yml`` (8 GPUs; ``mini_batch_sizes``, ``iters``, ``gt_size``/``gt_sizes``,
``mixing_augs``, ``CosineAnnealingRestartCyclicLR``), MST's ``simulation/train_code/option.py``
and ``utils.shuffle_crop``, MST++'s ``train_code/train.py``.
"""
import math

import numpy as np
import pytest
import torch

from glmha.engine import load_config, train
from glmha.engine.batches import batch_generator, mixup, random_window
from glmha.engine.settings import _settings, build_optimizer, build_scheduler

from .conftest import CONFIGS, QUIET

RESTORMER = sorted(p for p in (CONFIGS / "restormer").glob("*.yaml") if not p.name.startswith("_"))
MIXUP_RECIPES = {p.name for p in RESTORMER if p.name.startswith(("gaussian_denoising", "real_denoising"))}


def test_there_are_nine_denoising_recipes_per_attention():
    assert len(MIXUP_RECIPES) == 18 and len(RESTORMER) == 26  # 13 experiments, CSA and GLMHA


@pytest.mark.parametrize("path", RESTORMER, ids=lambda p: p.stem)
def test_restormer_recipe_matches_the_official_options(path):
    cfg = load_config(path)
    settings = _settings(cfg)
    assert settings.total_iters == 300_000 and settings.precision == "fp32" and settings.grad_clip == 0.01
    assert [s["iters"] for s in settings.stages] == [92000, 64000, 48000, 36000, 36000, 24000]
    assert [s["patch_size"] for s in settings.stages] == [128, 160, 192, 256, 320, 384]
    assert [s["batch_size"] for s in settings.stages] == [8, 5, 4, 2, 1, 1]
    assert settings.crop_size == 384  # gt_size: the loader crops 384, the trainer cuts each batch to the stage's size
    assert cfg["optimizer"] == {"name": "AdamW", "lr": 3e-4, "betas": [0.9, 0.999], "weight_decay": 1e-4}
    assert cfg["seed"] == 100 and cfg["train"]["loss"] == "l1"
    if path.name in MIXUP_RECIPES:
        assert settings.mixup == {"beta": 1.2, "use_identity": True}
    else:
        assert settings.mixup is None
    assert cfg["data"]["train"].get("augment") is True


def test_restormer_learning_rate_is_the_official_cyclic_cosine():
    """CosineAnnealingRestartCyclicLR(periods [p1, p2], eta_mins [3e-4, 1e-6]) at scheduler step t:
    eta_i + 0.5 (3e-4 - eta_i)(1 + cos(pi (t - start_i) / p_i)); checked on the recipe scaled down 1000x."""
    cfg = load_config(RESTORMER[0])
    scheduler_spec = cfg["scheduler"]
    assert scheduler_spec["milestones"] == [92000]
    assert [(p["T_max"], p["eta_min"]) for p in scheduler_spec["phases"]] == [(92000, 3e-4), (208000, 1e-6)]
    scaled = {"milestones": [92], "phases": [{"name": "CosineAnnealingLR", "T_max": 92, "eta_min": 3e-4},
                                              {"name": "CosineAnnealingLR", "T_max": 208, "eta_min": 1e-6}]}
    optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg["optimizer"])
    scheduler = build_scheduler(optimizer, scaled)
    for t in range(300):
        period, start, eta = (92, 0, 3e-4) if t <= 92 else (208, 92, 1e-6)
        official = eta + 0.5 * (3e-4 - eta) * (1 + math.cos(math.pi * (t - start) / period))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(official, rel=1e-9, abs=1e-15), t
        optimizer.step()
        scheduler.step()


def test_mst_l_recipe_and_batch_layout(monkeypatch):
    cfg = load_config(CONFIGS / "mst" / "mst_l_cassi_csa.yaml")
    settings = _settings(cfg)
    assert settings.batch_size == 5 and settings.total_iters == 300_000 and settings.loss == "rmse"
    assert cfg["data"]["train"]["batch_layout"] == ["crop", "crop", "mosaic", "mosaic", "mosaic"]  # batch_size // 2 crops
    assert cfg["optimizer"] == {"name": "Adam", "lr": 4e-4, "betas": [0.9, 0.999]}
    assert cfg["scheduler"] == {"name": "MultiStepLR", "milestones": [50000, 100000, 150000, 200000, 250000], "gamma": 0.5}
    assert cfg["evaluate"]["checkpoint"] == "best"


def test_batch_layout_fixes_each_position(tmp_path, monkeypatch):
    from glmha.data.hyperspectral import CASSIPatches, write_mat
    from glmha.engine import build_dataset

    (tmp_path / "cave").mkdir()
    write_mat(tmp_path / "cave" / "scene1.mat", {"img_expand": np.ones((40, 40, 28), np.uint16)}, version="5")
    write_mat(tmp_path / "mask.mat", {"mask": np.ones((32, 32))}, version="5")
    kinds = []
    monkeypatch.setattr(CASSIPatches, "sample", lambda self, as_mosaic: kinds.append(as_mosaic) or torch.zeros(28, 32, 32))
    data = build_dataset({"type": "cave", "root": str(tmp_path / "cave"), "mask": str(tmp_path / "mask.mat"), "crop_size": 32,
                          "batch_layout": ["crop", "crop", "mosaic", "mosaic", "mosaic"]})
    for n in range(10):
        data[(n % 3, n)]
    assert kinds == [False, False, True, True, True] * 2


def test_mismatched_batch_layout_is_refused(tmp_path, monkeypatch):
    from glmha.engine import ConfigError, trainer

    class FiveKinds(torch.utils.data.Dataset):
        batch_layout = ["crop", "crop", "mosaic", "mosaic", "mosaic"]

        def __len__(self):
            return 4

    original = trainer.build_dataset
    monkeypatch.setattr(trainer, "build_dataset", lambda spec: FiveKinds() if spec.get("type") == "synthetic_cassi" and spec.get("augment") else original(spec))
    with pytest.raises(ConfigError, match=r"batch_layout has 5 entries but the batch size is \[2\]"):
        train(CONFIGS / "mst" / "mst_l_cassi_csa.yaml", QUIET, variant="smoke", output_dir=tmp_path)


def test_mixup_is_the_official_mixing_augmentation():
    """Mixup or identity with probability 1/2 each; lambda ~ Beta(1.2, 1.2); one permutation for input and target."""
    x = torch.arange(8, dtype=torch.float64).view(8, 1, 1, 1).expand(8, 1, 2, 2).clone()
    batch = {"input": x, "target": 10 * x, "name": ["a"] * 8}
    identity = 0
    for step in range(4000):
        out = mixup(batch, 1.2, True, batch_generator(0, step, 1))
        if out is batch:
            identity += 1
            continue
        values, targets = out["input"][:, 0, 0, 0], out["target"][:, 0, 0, 0]
        torch.testing.assert_close(targets, 10 * values)  # the same lambda and permutation for both
        assert values.sum().item() == pytest.approx(28.0)  # lam x + (1 - lam) x[perm] keeps the batch sum
    assert identity / 4000 == pytest.approx(0.5, abs=0.03)
    draws = np.array([batch_generator(0, s, 1).beta(1.2, 1.2) for s in range(4000)])
    assert draws.mean() == pytest.approx(0.5, abs=0.02) and draws.var() == pytest.approx(1.44 / (5.76 * 3.4), rel=0.1)
    always = sum(mixup(batch, 1.2, False, batch_generator(0, s, 1)) is batch for s in range(200))
    assert always == 0  # without use_identity every batch is mixed
    with pytest.raises(Exception, match="no 'input'"):
        mixup({"target": x}, 1.2, False, batch_generator(0, 0, 1))


def test_mixup_blend_weights_follow_the_beta_draw():
    rng_a, rng_b = batch_generator(3, 7, 1), batch_generator(3, 7, 1)
    x = torch.randn(4, 3, 5, 5)
    out = mixup({"input": x, "target": x.clone()}, 1.2, False, rng_a)
    lam = rng_b.beta(1.2, 1.2)
    order = torch.from_numpy(rng_b.permutation(4))
    torch.testing.assert_close(out["input"], lam * x + (1 - lam) * x[order])


def test_random_window_cuts_the_whole_batch_at_one_position():
    x = torch.arange(2 * 1 * 10 * 12, dtype=torch.float32).view(2, 1, 10, 12)
    out = random_window({"input": x, "target": x + 1, "name": ["a", "b"]}, 4, batch_generator(0, 5, 0))
    assert out["input"].shape == (2, 1, 4, 4)
    torch.testing.assert_close(out["target"], out["input"] + 1)
    top = int((out["input"][0, 0, 0, 0].item()) // 12)
    left = int(out["input"][0, 0, 0, 0].item()) % 12
    torch.testing.assert_close(out["input"], x[..., top:top + 4, left:left + 4])
    positions = {(int(v // 12), int(v % 12)) for v in (random_window({"input": x, "target": x}, 4, batch_generator(0, s, 0))["input"][0, 0, 0, 0]
                                                       for s in range(400))}
    assert {p[0] for p in positions} == set(range(6)) and {p[1] for p in positions} == set(range(8))  # [0, S - p)


def test_progressive_training_crops_the_largest_patch_then_the_stage(tmp_path, monkeypatch):
    from glmha.engine import trainer

    shapes = []
    original = trainer.random_window
    monkeypatch.setattr(trainer, "random_window", lambda batch, size, rng: shapes.append((tuple(batch["target"].shape), size))
                        or original(batch, size, rng))
    train(CONFIGS / "restormer" / "gaussian_denoising_color_sigma15_csa.yaml", QUIET, variant="smoke", output_dir=tmp_path, max_steps=5)
    # smoke stages: (2 iters, 32 px, batch 2), (2, 40, 2), (2, 48, 1): crops of 48, cut to 32 then 40; none at 48
    assert shapes == [((2, 3, 48, 48), 32)] * 2 + [((2, 3, 48, 48), 40)] * 2


def test_precision_choices(tmp_path):
    from glmha.engine import ConfigError

    result = train(CONFIGS / "restormer" / "deraining_csa.yaml", QUIET + ["train.precision=bf16"], variant="smoke",
                   output_dir=tmp_path / "bf16", max_steps=2)
    assert result.iteration == 2
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        train(CONFIGS / "restormer" / "deraining_csa.yaml", QUIET + ["train.precision=fp16"], variant="smoke",
              output_dir=tmp_path / "fp16", device="cpu")
    with pytest.raises(ConfigError, match="train.mixup.beta = 0: must be a number > 0"):
        train(CONFIGS / "restormer" / "deraining_csa.yaml", QUIET + ["train.mixup={beta: 0}"], variant="smoke", output_dir=tmp_path / "x")
