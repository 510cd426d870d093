import pytest
import torch

import glmha
from glmha import CheckpointError
from glmha.checkpoint import atomic_write, save_weights
from tests.conftest import DATA, load_golden


@pytest.fixture(scope="module")
def golden():
    return load_golden(DATA / "golden" / "restormer_tiny.safetensors")


def _check_outputs(model, inputs, expected):
    with torch.no_grad():
        assert (model.eval()(*inputs) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("layout", ["plain", "params", "params_ema", "state_dict", "module_prefix"])
def test_official_checkpoint_layouts(tmp_path, golden, layout):
    kwargs, state, inputs, expected = golden
    wrapped = {
        "plain": state,
        "params": {"params": state},
        "params_ema": {"params_ema": state},
        "state_dict": {"state_dict": state, "epoch": 3},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
    }[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    model = glmha.load_checkpoint(glmha.create_model("restormer", **kwargs), path)
    _check_outputs(model, inputs, expected)


def test_safetensors_round_trip(tmp_path, golden):
    kwargs, state, inputs, expected = golden
    model = glmha.create_model("restormer", **kwargs)
    model.load_state_dict(state)
    path = save_weights(model, tmp_path / "w.safetensors")
    _check_outputs(glmha.load_checkpoint(glmha.create_model("restormer", **kwargs), path), inputs, expected)


def test_mismatch_lists_missing_and_unexpected_keys(tmp_path, golden):
    kwargs, state, _, _ = golden
    broken = dict(state)
    del broken["output.weight"]
    broken["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"params": broken}, path)
    with pytest.raises(CheckpointError) as info:
        glmha.load_checkpoint(glmha.create_model("restormer", **kwargs), path)
    message = str(info.value)
    assert "missing keys (1)" in message and "output.weight" in message
    assert "unexpected keys (1)" in message and "extra.weight" in message


def test_shape_mismatch_reported(golden):
    kwargs, state, _, _ = golden
    model = glmha.create_model("restormer", **{**kwargs, "dim": 16})
    with pytest.raises(CheckpointError, match="(?s)shape mismatches.*patch_embed.proj.weight: checkpoint \\(8, 3, 3, 3\\) vs model \\(16, 3, 3, 3\\)"):
        glmha.load_checkpoint(model, state)


def test_unreadable_and_missing_files(tmp_path):
    model = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        glmha.load_checkpoint(model, tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        glmha.load_checkpoint(model, junk)
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        glmha.load_checkpoint(model, tmp_path / "empty.pth")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def failing_writer(tmp):
        open(tmp, "w").write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, failing_writer)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
