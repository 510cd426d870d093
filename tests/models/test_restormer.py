import pytest
import torch

import glmha
from glmha.models.restormer import ChannelLayerNorm
from tests.conftest import DATA, load_golden, official_layouts, parse_constructor

OFFICIAL_ENTRIES = ["restormer", "restormer_gray_denoise", "restormer_dual_pixel"]


@pytest.mark.parametrize("entry", OFFICIAL_ENTRIES)
def test_official_state_dict_layout(entry):
    ref = official_layouts()[entry]
    _, kwargs = parse_constructor(ref["constructor"])
    with torch.device("meta"):  # layout only: no memory, no init time
        model = glmha.create_model("restormer", **kwargs)
    state = model.state_dict()
    assert list(state) == [k for k, _ in ref["state_dict"]]
    assert {k: list(v.shape) for k, v in state.items()} == {k: s for k, s in ref["state_dict"]}
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]


def test_default_parameter_count():
    with torch.device("meta"):
        model = glmha.create_model("restormer")
    assert sum(p.numel() for p in model.parameters()) == 26_126_644


@pytest.mark.parametrize("fixture", ["restormer_tiny", "restormer_tiny_biasfree_dualpixel"])
def test_golden_output(fixture):
    kwargs, state, inputs, expected = load_golden(DATA / "golden" / f"{fixture}.safetensors")
    model = glmha.create_model("restormer", **kwargs).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(*inputs)
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() < 1e-5


def test_official_layer_norm_spelling_accepted():
    model = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, LayerNorm_type="BiasFree")
    assert model.encoder_level1[0].norm1.body.bias is None


@pytest.mark.parametrize("norm_type", ["WithBias", "BiasFree"])
def test_channel_layer_norm_matches_layer_norm_over_channels(norm_type):
    norm = ChannelLayerNorm(6, norm_type)
    torch.nn.init.normal_(norm.body.weight)
    if norm.body.bias is not None:
        torch.nn.init.normal_(norm.body.bias)
    x = torch.randn(2, 6, 5, 7)
    channels_last = x.permute(0, 2, 3, 1)
    if norm_type == "WithBias":
        ref = torch.nn.functional.layer_norm(channels_last, (6,), norm.body.weight, norm.body.bias, eps=1e-5)
    else:
        var = channels_last.var(-1, keepdim=True, unbiased=False)
        ref = channels_last / torch.sqrt(var + 1e-5) * norm.body.weight
    torch.testing.assert_close(norm(x), ref.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


def test_plain_feed_forward_option_trains():
    model = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, feed_forward="plain")
    x = torch.rand(1, 3, 16, 16)
    model(x).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="feed_forward must be one of"):
        glmha.create_model("restormer", feed_forward="mlp")


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="4 entries"):
        glmha.create_model("restormer", num_blocks=[1, 1])
    with pytest.raises(ValueError, match="inp_channels must be 6"):
        glmha.create_model("restormer", dual_pixel_task=True)
    with pytest.raises(ValueError, match="layer_norm_type must be one of"):
        glmha.create_model("restormer", layer_norm_type="Group")
    with pytest.raises(ValueError, match="unknown attention 'nope'"):
        glmha.create_model("restormer", attention="nope")
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        glmha.create_model("resnet")


def test_size_must_be_multiple_of_eight_in_direct_call():
    model = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    with pytest.raises(ValueError, match="divisible by 8.*glmha\\.restore"):
        model(torch.rand(1, 3, 20, 16))


@pytest.mark.parametrize("norm_type", ["WithBias", "BiasFree"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_norm_of_a_half_precision_model(norm_type, dtype):
    # model.to(bfloat16) / .half(): weights and input in half precision; the statistics are taken in float32
    norm = ChannelLayerNorm(12, norm_type)
    torch.nn.init.normal_(norm.body.weight)
    x = torch.randn(2, 12, 5, 7) * 3 + 1
    reference = norm(x)
    out = norm.to(dtype)(x.to(dtype))
    assert out.dtype == dtype and (out.float() - reference).abs().max() < 0.1
