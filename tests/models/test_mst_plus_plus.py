import pytest
import torch

import glmha
from glmha.attention import list_attentions
from glmha.validation import InputError
from tests.conftest import official_layouts
from tests.models.test_mst import read_golden


def test_official_state_dict_layout():
    ref = official_layouts()["mst_plus_plus"]
    with torch.device("meta"):
        model = glmha.create_model("mst_plus_plus", in_channels=3, out_channels=31, n_feat=31, stage=3)
    state = model.state_dict()
    assert list(state) == [k for k, _ in ref["state_dict"]]
    assert {k: list(v.shape) for k, v in state.items()} == {k: s for k, s in ref["state_dict"]}
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"] == 1_619_625


def test_golden_output_with_reflect_padding():
    state, (x,), expected = read_golden("mst_plus_plus")
    assert x.shape[-2:] == (36, 44)  # not a multiple of 8
    model = glmha.create_model("mst_plus_plus").eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(x)
    assert out.shape == expected.shape == (1, 31, 36, 44)
    assert (out - expected).abs().max().item() < 1e-5


def test_any_size_and_example_inputs():
    model = glmha.create_model("mst_plus_plus", stage=1).eval()
    (x,) = model.example_inputs(13, 21, batch=2)
    assert x.shape == (2, 3, 13, 21)
    assert model.in_channels == 3 and model.size_multiple == 8
    with torch.no_grad():
        out = model(torch.rand_like(x))
    assert out.shape == (2, 31, 13, 21)


def test_input_errors():
    model = glmha.create_model("mst_plus_plus", stage=1)
    with pytest.raises(InputError, match="at least 5x5"):
        model(torch.rand(1, 3, 4, 16))
    with pytest.raises(InputError, match="input has 31 channels but the model expects 3"):
        model(torch.rand(1, 31, 16, 16))
    with pytest.raises(ValueError, match="n_feat must be 31"):
        glmha.create_model("mst_plus_plus", n_feat=32)


@pytest.mark.parametrize("attention", list_attentions("smsa"))
def test_every_smsa_attention_trains(attention):
    model = glmha.create_model("mst_plus_plus", attention=attention, stage=1)
    out = model(torch.rand(1, 3, 16, 16))
    out.square().mean().backward()
    assert out.shape == (1, 31, 16, 16)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.skipif("glmha" not in list_attentions("smsa"), reason="GLMHA for S-MSA not registered")
def test_glmha_is_smaller_than_csa():
    with torch.device("meta"):
        csa = sum(p.numel() for p in glmha.create_model("mst_plus_plus").parameters())
        low_rank = sum(p.numel() for p in glmha.create_model("mst_plus_plus", attention="glmha").parameters())
    assert low_rank < csa
