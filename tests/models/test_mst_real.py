"""The real-data MST (MST real/ code): golden output, official sizes, the first estimate by definition."""
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import glmha
from glmha.attention import list_attentions
from glmha.validation import InputError
from tests.conftest import SHARED_REFERENCE, load_golden

GOLDEN = SHARED_REFERENCE / "golden" / "mst_s_real.safetensors"
TINY = {"dim": 8, "stage": 1, "num_blocks": [1, 1]}


def golden_or_skip():
    if not GOLDEN.exists():
        pytest.skip(f"{GOLDEN} not available")
    return load_golden(GOLDEN)


def test_golden_mst_s_real():
    kwargs, state, (y,), expected = golden_or_skip()
    assert kwargs == {"dim": 28, "stage": 2, "num_blocks": [2, 2, 2]}
    model = glmha.create_model("mst_s_real").eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(y)
    assert y.shape == (1, 64, 118) and out.shape == expected.shape == (1, 28, 64, 64)
    assert (out - expected).abs().max().item() < 1e-5


def test_official_state_dict_keys_and_shapes():
    golden_or_skip()
    with safe_open(str(GOLDEN), "pt") as f:
        official = {k[len("param."):]: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("param.")}
    with torch.device("meta"):
        state = glmha.create_model("mst_s_real").state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == official
    # the official module order: embedding, fusion, encoder, bottleneck, decoder, mapping
    tops = list(dict.fromkeys(k.split(".")[0] for k in state))
    assert tops == ["embedding", "fution", "encoder_layers", "bottleneck", "decoder_layers", "mapping"]


@pytest.mark.parametrize("name, count", [("mst_s_real", 707_048), ("mst_m_real", 1_184_184), ("mst_l_real", 1_630_076)])
def test_official_parameter_counts(name, count):
    # S and L: the published counts of the official real-data code; M: its definition (blocks [2, 4, 4]).
    with torch.device("meta"):
        model = glmha.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == count


def test_first_estimate_is_fused_shift_back_slices():
    model = glmha.create_model("mst_s_real", **TINY).eval()
    y = torch.rand(2, 16, 24 + 54)
    # The official initial_x: band i is columns 2i .. 2i + W of the measurement, then the fusion conv.
    slices = torch.stack([y[:, :, 2 * i:2 * i + 24] for i in range(28)], dim=1)
    expected = F.conv2d(slices, model.fution.weight, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(model.initial_estimate(y), expected, rtol=0, atol=1e-6)
        # the network refines that estimate with a global skip; a 1-channel 4-D measurement is the same
        torch.testing.assert_close(model(y), model.refine(expected), rtol=0, atol=1e-6)
        torch.testing.assert_close(model(y[:, None]), model(y), rtol=0, atol=0)


def test_any_size_is_padded_and_cropped():
    model = glmha.create_model("mst_s_real", dim=8, stage=2, num_blocks=[1, 1, 1]).eval()
    y = torch.rand(1, 18, 27 + 54)  # a 18 x 27 scene: not a multiple of 4
    with torch.no_grad():
        out = model(y)
        x = model.initial_estimate(y)
        expected = model.refine(F.pad(x, [0, 1, 0, 2], mode="reflect"))[..., :18, :27]
    assert out.shape == (1, 28, 18, 27)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert model.example_inputs(16, 20)[0].shape == (1, 16, 74)


def test_measurement_errors():
    model = glmha.create_model("mst_s_real", **TINY)
    with pytest.raises(InputError, match="raw measurement B x H x W'"):
        model(torch.rand(1, 28, 16, 16))
    with pytest.raises(InputError, match="got only 50 columns"):
        model(torch.rand(1, 16, 50))
    with pytest.raises(InputError, match="too small to pad"):
        model(torch.rand(1, 1, 55))
    with pytest.raises(InputError, match="non-finite"):
        model(torch.full((1, 8, 62), float("nan")))


@pytest.mark.parametrize("attention", list_attentions("smsa"))
def test_every_smsa_attention_trains(attention):
    model = glmha.create_model("mst_s_real", attention=attention, **TINY)
    (y,) = model.example_inputs(16, 16)
    out = model(torch.rand_like(y))
    out.square().mean().backward()
    assert out.shape == (1, 28, 16, 16)
    assert all(p.grad is not None for p in model.parameters())
