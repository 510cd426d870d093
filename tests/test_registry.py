import pytest
import torch
from torch import nn

import glmha
from glmha.attention import build_attention, list_attentions, register_attention


def test_list_models_and_attentions():
    assert "restormer" in glmha.list_models()
    assert "csa" in list_attentions("mdta")


def test_unknown_model_argument_is_reported():
    with pytest.raises(TypeError, match="unexpected keyword argument 'depth'"):
        glmha.create_model("restormer", depth=3)


def test_block_holds_whatever_the_registry_returns():
    @register_attention("identity_test", "mdta")
    class IdentityAttention(nn.Module):
        def __init__(self, dim, num_heads, bias=False, scale=1.0):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return x * self.scale

    model = glmha.create_model(
        "restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
        attention="identity_test", attention_kwargs={"scale": 0.5},
    )
    assert isinstance(model.latent[0].attn, IdentityAttention) and model.latent[0].attn.scale == 0.5
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_attention_errors():
    with pytest.raises(ValueError, match="unknown attention family"):
        register_attention("x", "swin")
    with pytest.raises(TypeError, match="does not accept these arguments"):
        build_attention("csa", "mdta", dim=8, num_heads=2, rank=3)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        build_attention("csa", "mdta", dim=9, num_heads=2)
