import pytest
import torch

import glmha
from glmha import CheckpointError
from glmha.models.checkpoint import save_weights
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
    with pytest.raises(CheckpointError, match="junk.pth is not a weights file: expected a .safetensors file or a PyTorch"):
        glmha.load_checkpoint(model, junk)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"\x80\x02 cut short")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        glmha.load_checkpoint(model, broken)
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        glmha.load_checkpoint(model, tmp_path / "empty.pth")


# ----------------------------------------------------------------------------- self-describing files
TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2]}


def _same_outputs(a, b, *inputs):
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(*inputs), b.eval()(*inputs), rtol=0, atol=0)


@pytest.mark.parametrize("name, kwargs, attention, attention_kwargs", [
    ("restormer", TINY, "csa", {}),
    ("restormer", {**TINY, "layer_norm_type": "BiasFree", "bias": True}, "glmha", {"rank_ratio": 0.25, "calibration": False}),
    ("mst_plus_plus", {"stage": 1}, "glmha", {}),
    ("mst_s", {"num_blocks": [1, 1, 1]}, "linformer", {}),
])
def test_save_model_then_load_model_rebuilds_alone(tmp_path, name, kwargs, attention, attention_kwargs):
    model = glmha.create_model(name, attention=attention, attention_kwargs=attention_kwargs, **kwargs)
    path = glmha.save_model(model, tmp_path / "m.safetensors")
    meta = glmha.models.checkpoint.read_metadata(path)
    assert meta["glmha.version"] == glmha.__version__
    loaded = glmha.load_model(path)
    assert loaded.spec == model.spec and not loaded.training
    _same_outputs(model, loaded, *model.example_inputs(16, 24))


def test_swap_attention_and_apply_ranks_update_the_record(tmp_path):
    from glmha.analysis.eigen import apply_ranks

    model = glmha.create_model("restormer", **TINY)
    glmha.swap_attention(model, "glmha", init="svd", rank_ratio=0.5)
    assert (model.spec.attention, model.spec.attention_kwargs) == ("glmha", {"rank_ratio": 0.5})
    glmha.swap_attention(model, "csa")
    apply_ranks(model, {"encoder_level1.0.attn": 4, "latent.0.attn": 8})
    assert model.spec.attention == "csa" and model.spec.layers == {
        "encoder_level1.0.attn": {"attention": "glmha", "attention_kwargs": {"rank": 4}},
        "latent.0.attn": {"attention": "glmha", "attention_kwargs": {"rank": 8}},
    }
    loaded = glmha.load_model(glmha.save_model(model, tmp_path / "ranks.safetensors"))
    assert loaded.encoder_level1[0].attn.rank == 4 and loaded.latent[0].attn.rank == 8
    assert type(loaded.encoder_level2[0].attn).__name__ == "MDTA"
    _same_outputs(model, loaded, torch.rand(1, 3, 16, 16))


def test_training_weights_record_the_model(tmp_path):
    # save_weights (what the trainer calls) records the build of a create_model model too
    model = glmha.create_model("restormer", **TINY)
    save_weights(model, tmp_path / "w.safetensors", metadata={"iteration": "7"})
    meta = glmha.models.checkpoint.read_metadata(tmp_path / "w.safetensors")
    assert meta["iteration"] == "7" and "glmha.model" in meta
    assert glmha.load_model(tmp_path / "w.safetensors").spec == model.spec
    fast = glmha.optimize(glmha.create_model("restormer", **TINY), compile=False)  # a wrapped model saves its own record
    assert glmha.load_model(glmha.save_model(fast, tmp_path / "fast.safetensors")).spec == fast.module.spec


def test_run_folder_means_its_final_weights_else_its_newest_checkpoint(tmp_path):
    model = glmha.create_model("restormer", **TINY)
    for iteration in (2, 10):
        torch.nn.init.constant_(model.output.weight, float(iteration))
        save_weights(model, tmp_path / "checkpoints" / f"iter_{iteration:08d}.safetensors")
    assert glmha.load_model(tmp_path).output.weight.flatten()[0] == 10
    torch.nn.init.constant_(model.output.weight, 99.0)
    save_weights(model, tmp_path / "model.safetensors")
    assert glmha.load_model(tmp_path).output.weight.flatten()[0] == 99
    with pytest.raises(CheckpointError, match="not a run folder"):
        glmha.load_model(tmp_path / "checkpoints")


def test_arguments_that_contradict_the_record_show_both(tmp_path):
    path = glmha.save_model(glmha.create_model("restormer", attention="glmha", attention_kwargs={"rank_ratio": 0.5}, **TINY), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError) as info:
        glmha.load_model(path, attention="csa", dim=16)
    message = str(info.value)
    assert "records restormer, attention glmha" in message and "attention 'glmha' vs 'csa'" in message and "dim 8 vs 16" in message
    # agreeing or adding arguments is fine
    assert glmha.load_model(path, model="restormer", attention="glmha", dim=8).spec.attention == "glmha"
    with pytest.raises(CheckpointError, match="vs preset 'mst_plus_plus'"):
        glmha.load_model(path, preset="mst_plus_plus")


def test_plain_state_dict_needs_a_description(tmp_path):
    model = glmha.create_model("restormer", **TINY)
    torch.save({"params": model.state_dict()}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="does not record its model and its keys and shapes match no preset"):
        glmha.load_model(tmp_path / "plain.pth")
    loaded = glmha.load_model(tmp_path / "plain.pth", model="restormer", **TINY)
    _same_outputs(model, loaded, torch.rand(1, 3, 8, 8))
    with pytest.raises(CheckpointError, match=r"(?s)does not fit Restormer.*model \(from the arguments\): restormer, attention csa"):
        glmha.load_model(tmp_path / "plain.pth", model="restormer", **{**TINY, "dim": 16})


def test_plain_official_state_dict_is_recognised(tmp_path, capsys):
    model = glmha.create_model("mst_s")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "mst_s.pth")  # as the MST releases
    loaded = glmha.load_model(tmp_path / "mst_s.pth")
    assert loaded.spec.preset == "mst_s" and "recognised by its keys and shapes as preset 'mst_s'" in capsys.readouterr().out
    _same_outputs(model, loaded, *model.example_inputs(8, 8))
    # a preset's values can be overridden for files without a record; the preset stays named
    assert glmha.load_model(tmp_path / "mst_s.pth", preset="mst_s", attention="csa").spec.preset == "mst_s"


def test_save_model_needs_a_record(tmp_path):
    from glmha.models import Restormer

    with pytest.raises(CheckpointError, match="has no build record"):
        glmha.save_model(Restormer(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1), tmp_path / "x.safetensors")


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path):
    from glmha.models.checkpoint import read_state_dict

    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"params": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="objects other than tensors") as info:
        read_state_dict(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value) and "weights_only=False" not in str(info.value)
    assert not marker.exists()
