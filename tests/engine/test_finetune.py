"""Fine-tuning (train.init_from / --init): official-layout weights, and a CSA run into a GLMHA config by SVD."""
import json

import pytest
import torch

from glmha import load_checkpoint, swap_attention
from glmha.models.checkpoint import CheckpointError
from glmha.engine import build_model, latest_checkpoint, load_config, train
from glmha.engine.finetune import initialise_from
from tests.conftest import DATA, load_golden

from .conftest import CONFIGS, QUIET

CSA = CONFIGS / "restormer" / "deraining_csa.yaml"
GLMHA = CONFIGS / "restormer" / "deraining_glmha.yaml"
TINY = ["model.num_blocks=[1, 1, 1, 2]", "model.heads=[1, 2, 4, 8]"]  # the golden file's official Restormer


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory):
    """An official-layout Restormer release file ({"params": state dict}) of a tiny model."""
    _, state, _, _ = load_golden(DATA / "golden" / "restormer_tiny.safetensors")
    path = tmp_path_factory.mktemp("official") / "deraining.pth"
    torch.save({"params": state}, path)
    return path, state


def test_official_pth_starts_a_new_run(official_pth, tmp_path, capsys):
    path, state = official_pth
    model = build_model(load_config(CSA, TINY, variant="smoke"))
    report = initialise_from(model, path)
    assert (len(report.loaded), report.new, report.dropped) == (len(state), [], [])
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key

    result = train(CSA, QUIET + TINY + [f"train.init_from={path}"], variant="smoke", output_dir=tmp_path, max_steps=1)
    assert result.iteration == 1
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert line == f"initialised from {path}: {len(state)} of {len(state)} tensors loaded; new (initialised): 0; dropped: 0"
    assert json.loads((tmp_path / "init_from.json").read_text())["loaded"] == report.loaded


def test_partly_fitting_weights_report_new_and_dropped(official_pth):
    path, state = official_pth
    model = build_model(load_config(CSA, variant="smoke"))  # one latent block fewer, fewer heads
    report = initialise_from(model, path)
    assert report.new and report.dropped and len(report.loaded) + len(report.new) == len(model.state_dict())
    assert "latent.1.norm1.body.weight" in report.dropped and "encoder_level2.0.attn.temperature" in report.new
    assert set(report.loaded) | set(report.dropped) == set(state)  # every source tensor is used or reported


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointError, match="none of the 1 tensors of .* fit Restormer"):
        initialise_from(build_model(load_config(CSA, variant="smoke")), path)


def test_csa_run_into_a_glmha_config_is_converted_by_svd(tmp_path, capsys):
    from glmha.cli import main

    csa_run = tmp_path / "csa"
    train(CSA, QUIET, variant="smoke", output_dir=csa_run, max_steps=2)
    model = build_model(load_config(GLMHA, variant="smoke"))
    report = initialise_from(model, csa_run)
    assert report.conversion == "CSA -> GLMHA by SVD" and report.dropped == []
    assert report.new and all(".calibration." in key for key in report.new)

    csa = load_checkpoint(build_model(load_config(CSA, variant="smoke")), latest_checkpoint(csa_run)[0])
    expected = swap_attention(csa, "glmha", init="svd", **load_config(GLMHA, variant="smoke")["model"].get("attention_kwargs", {}))
    for key, value in expected.state_dict().items():
        if ".calibration.fc1." not in key:  # the gate's first layer is random; its last is zero, so it does not matter yet
            assert torch.equal(model.state_dict()[key], value), key

    out = tmp_path / "glmha"
    assert main(["train", str(GLMHA), *QUIET, "--smoke", "--init", str(csa_run), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(CSA -> GLMHA by SVD)" in printed and "dropped: 0" in printed
    # the finished run resumed: init_from is not applied again
    train(GLMHA, QUIET + [f"train.init_from={csa_run}", "train.total_iters=8", "train.stages=null", "train.patch_size=32"],
          variant="smoke", output_dir=out, resume="force")
    assert f"train.init_from ({csa_run}) ignored: resuming this run from its own checkpoint" in capsys.readouterr().out
