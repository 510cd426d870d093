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


def test_create_model_records_how_it_was_built():
    from glmha.models.registry import ModelSpec

    model = glmha.create_model("restormer", attention="glmha", attention_kwargs={"rank": 8}, dim=8, num_blocks=(1, 1, 1, 1))
    assert model.spec == ModelSpec("restormer", {"dim": 8, "num_blocks": [1, 1, 1, 1]}, "glmha", {"rank": 8})
    assert ModelSpec.from_json(model.spec.to_json()) == model.spec  # plain JSON data, as saved in a file
    rebuilt = model.spec.build()
    assert rebuilt.spec == model.spec and rebuilt is not model and type(rebuilt.encoder_level1[0].attn) is type(model.encoder_level1[0].attn)
    with pytest.raises(ValueError, match="model record must be a JSON object"):
        ModelSpec.from_json('{"layers": {}}')


def test_arguments_that_are_not_plain_data_leave_no_record():
    @glmha.models.register_model("with_module_test")
    def with_module(attention="csa", attention_kwargs=None, head=None):
        return nn.Sequential(head)

    assert glmha.create_model("with_module_test", head=nn.Identity()).spec is None
