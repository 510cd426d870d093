"""configs/examples/own_folder.yaml: Restormer deraining on a user's folder of PNG pairs, trained through `glmha train`."""
import numpy as np
import torch
import yaml
from PIL import Image

import glmha
from glmha.cli import main
from glmha.engine import load_config

from .conftest import CONFIGS, QUIET

OWN_FOLDER = CONFIGS / "examples" / "own_folder.yaml"


def _pairs(root, count, size, seed):
    """``root/input`` and ``root/target`` with ``count`` 8-bit RGB PNG pairs of the same names: rain streaks over a scene."""
    rng = np.random.default_rng(seed)
    for folder in ("input", "target"):
        (root / folder).mkdir(parents=True)
    for i in range(count):
        target = rng.integers(0, 200, (*size, 3), dtype=np.uint8)
        rainy = target.copy()
        rainy[:, rng.integers(0, size[1], 5)] = 255
        Image.fromarray(target).save(root / "target" / f"{i:04d}.png")
        Image.fromarray(rainy).save(root / "input" / f"{i:04d}.png")


def test_the_short_schedule_replaces_the_recipes():
    cfg = load_config(OWN_FOLDER)
    recipe = load_config(CONFIGS / "restormer" / "deraining_csa.yaml")
    assert cfg["model"] == recipe["model"] and cfg["optimizer"] == recipe["optimizer"] and cfg["train"]["grad_clip"] == 0.01
    assert cfg["train"]["total_iters"] == sum(s["iters"] for s in cfg["train"]["stages"]) == 4000 < recipe["train"]["total_iters"]
    assert cfg["scheduler"] == {"milestones": [], "phases": [{"name": "CosineAnnealingLR", "T_max": 4000, "eta_min": 1e-6}]}
    assert cfg["data"]["train"] == {"type": "paired_folder", "root": "my_data/train", "augment": True}


def test_own_folder_config_trains_on_a_folder_of_png_pairs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's data paths are relative to the working directory, as in the comments
    _pairs(tmp_path / "my_data" / "train", 4, (40, 56), seed=0)
    _pairs(tmp_path / "my_data" / "val", 2, (32, 48), seed=1)
    run = tmp_path / "runs" / "mine"
    tiny = ["model.dim=8", "model.num_blocks=[1, 1, 1, 1]", "model.num_refinement_blocks=1", "model.heads=[1, 1, 2, 2]",
            "train.total_iters=4", "train.stages=[{iters: 2, patch_size: 32, batch_size: 2}, {iters: 2, patch_size: 40, batch_size: 1}]",
            "scheduler.phases=[{name: CosineAnnealingLR, T_max: 4, eta_min: 1.0e-6}]",
            "train.val_every=2", "train.checkpoint_every=2", "train.log_every=1", "train.num_workers=0", *QUIET]
    assert main(["train", str(OWN_FOLDER), *tiny, "--output-dir", str(run)]) == 0
    assert (run / "model.safetensors").is_file() and (run / "best.safetensors").is_file()
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["data"]["train"]["root"] == "my_data/train" and resolved["train"]["total_iters"] == 4
    log = (run / "train.log").read_text()
    assert "finished: 4 iterations" in log and "iteration 4: psnr" in log  # trained, and validated on my_data/val
    from safetensors.torch import load_file

    halfway, last = load_file(str(run / "checkpoints" / "iter_00000002.safetensors")), load_file(str(run / "model.safetensors"))
    assert any(not torch.equal(halfway[k], last[k]) for k in last)  # the weights moved
    model = glmha.load_model(run)  # the run folder describes its model
    assert model.spec.name == "restormer" and model.spec.attention == "csa"
    trained = dict(model.named_parameters())["patch_embed.proj.weight"]
    fresh = dict(glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                                    heads=[1, 1, 2, 2]).named_parameters())["patch_embed.proj.weight"]
    assert trained.shape == fresh.shape and torch.isfinite(trained).all()
    out = glmha.restore(model, torch.rand(1, 3, 32, 48))
    assert out.shape == (1, 3, 32, 48) and torch.isfinite(out).all()
