"""The fast path (glmha.optimize) and the fused kernels it relies on keep the numbers exact."""
import pytest
import torch
import torch.nn.functional as F

import glmha
from glmha.attention.csa import channel_attention
from glmha.models.restormer import ChannelLayerNorm, TransformerBlock
from tests.conftest import DATA, load_golden

GOLDEN = ["restormer_tiny", "restormer_tiny_biasfree_dualpixel"]


def golden_model(fixture: str):
    kwargs, state, inputs, expected = load_golden(DATA / "golden" / f"{fixture}.safetensors")
    model = glmha.create_model("restormer", **kwargs).eval()
    model.load_state_dict(state, strict=True)
    return model, inputs, expected


def reference_channel_attention(q, k, v, temperature):
    # The official formulation: normalise q and k, then the product.
    attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * temperature
    return attn.softmax(dim=-1) @ v


@pytest.mark.parametrize("c_kv", [6, 3])  # CSA (c_kv = c_q) and a low-rank key/value length
def test_fused_channel_attention_matches_normalise_then_multiply(c_kv):
    q = torch.randn(2, 2, 6, 40, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, c_kv, 40, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, c_kv, 40, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        k[0, 0, 0] = 0  # an all-zero key: the norm clamp must act as F.normalize's eps does
    temperature = torch.tensor([0.7, 2.0], dtype=torch.float64).reshape(2, 1, 1)
    out = channel_attention(q, k, v, temperature)
    ref = reference_channel_attention(q, k, v, temperature)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_channel_attention_keeps_softmax_in_float32_under_autocast():
    q, k, v = (torch.randn(1, 2, 4, 64) for _ in range(3))
    temperature = torch.ones(2, 1, 1)
    ref = reference_channel_attention(q, k, v, temperature)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = channel_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), temperature)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05  # bf16 products, float32 norms and softmax


@pytest.mark.parametrize("norm_type", ["WithBias", "BiasFree"])
def test_channel_layer_norm_same_numbers_in_both_layouts(norm_type):
    norm = ChannelLayerNorm(12, norm_type)
    torch.nn.init.normal_(norm.body.weight)
    x = torch.randn(2, 12, 5, 7) * 3 + 1
    out = norm(x)
    out_cl = norm(x.contiguous(memory_format=torch.channels_last))
    assert out_cl.is_contiguous(memory_format=torch.channels_last)  # read and written in place
    torch.testing.assert_close(out_cl, out, rtol=0, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = norm(x.bfloat16())
    assert half.dtype == torch.bfloat16
    assert (half.float() - out).abs().max() < 0.1


@pytest.mark.parametrize("fixture", GOLDEN)
def test_fast_path_matches_golden_outputs_eager(fixture):
    model, inputs, expected = golden_model(fixture)
    with torch.no_grad():
        plain = model(*inputs)
    fast = glmha.optimize(model, compile=False)
    out = fast(*inputs)
    assert out.is_contiguous() and out.shape == expected.shape
    assert (out - expected).abs().max().item() < 1e-5
    assert (out - plain).abs().max().item() < 1e-5
    assert out.is_inference()  # eval mode runs under torch.inference_mode


@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_fast_path_captures_one_graph_and_matches_golden_outputs(scope):
    # fullgraph=True (the default) makes any graph break an error. The "eager" backend checks
    # the capture (of each block, or of the whole model) without Inductor's code generation.
    model, inputs, expected = golden_model("restormer_tiny")
    fast = glmha.optimize(model, compile_backend="eager", scope=scope)
    assert fast.compiled
    out = fast(*inputs)
    assert (out - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("name, kwargs, region, count", [
    ("restormer", {"dim": 8, "num_blocks": [1, 2, 1, 1], "num_refinement_blocks": 1}, "TransformerBlock", 1 + 2 + 1 + 1 + 1 + 2 + 1 + 1),
    ("mst_plus_plus", {"stage": 2}, "MSAB", 2 * 5),  # per stage: 2 encoder levels, the bottleneck, 2 decoder levels
    ("mst_s", {}, "MSAB", 5),
])
def test_compile_regions_are_the_blocks_that_hold_attention(name, kwargs, region, count):
    from glmha.inference.fast import compile_regions

    with torch.device("meta"):
        model = glmha.create_model(name, attention="glmha", **kwargs)
    regions = compile_regions(model)
    assert len(regions) == count and {type(r).__name__ for r in regions} == {region}


@pytest.mark.parametrize("name, kwargs", [("mst_plus_plus", {"stage": 1}), ("mst_s", {"num_blocks": [1, 1, 1]})])
def test_block_compile_of_the_spectral_models_matches_plain(name, kwargs):
    model = glmha.create_model(name, **kwargs).eval()
    inputs = tuple(torch.rand_like(t) for t in model.example_inputs(16, 16))
    with torch.no_grad():
        plain = model(*inputs)
    out = glmha.optimize(model, compile_backend="eager")(*inputs)
    assert (out - plain).abs().max().item() < 1e-5


@pytest.mark.slow
def test_inductor_block_compile_matches_plain_and_shares_graphs():
    # Inductor on every block: blocks of one shape share one compiled graph, with their own weights.
    import torch._dynamo.utils

    model = glmha.create_model("restormer", dim=8, num_blocks=[2, 2, 1, 1], num_refinement_blocks=2, heads=[1, 1, 2, 2]).eval()
    for p in model.parameters():  # distinct weights per block, so a shared graph that ignored them would show
        torch.nn.init.normal_(p, std=0.1)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    out = glmha.optimize(model)(x)
    assert (out - plain).abs().max().item() < 1e-5
    # 5 shapes of blocks (8 channels at 32x32, 16 at 16x16, 16 at 8x8, 16 at 4x4, 16 at 32x32)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 5


@pytest.mark.slow
def test_inductor_fast_path_matches_plain_on_a_block():
    # Inductor with weight freezing (the default in eval mode), on one transformer block to keep
    # the compile short; the whole model's capture is checked above.
    block = TransformerBlock(16, 2, 2.66, bias=False, layer_norm_type="WithBias").eval()
    x = torch.randn(1, 16, 24, 24)
    with torch.no_grad():
        plain = block(x)
    fast = glmha.optimize(block)
    out = fast(x)
    assert (out - plain).abs().max().item() < 1e-5
    assert torch.equal(fast(x), out)  # the compiled graph again: same numbers


def test_fast_model_validates_input_before_compiled_code():
    model, inputs, _ = golden_model("restormer_tiny")
    fast = glmha.optimize(model)  # compile=True: the check must not depend on tracing
    with pytest.raises(glmha.InputError, match="expects 3"):
        fast(torch.rand(1, 4, 32, 32))
    with pytest.raises(glmha.InputError, match="non-finite"):
        fast(torch.full((1, 3, 32, 32), float("nan")))


def test_fast_model_works_with_tiled_restore():
    model, _, _ = golden_model("restormer_tiny")
    x = torch.rand(1, 3, 40, 56)
    plain = glmha.restore(model, x, tile=32, overlap=8)
    fast = glmha.optimize(model, compile=False)
    assert fast.size_multiple == 8 and fast.in_channels == 3
    out = glmha.restore(fast, x, tile=32, overlap=8)
    assert (out - plain).abs().max().item() < 1e-5


def test_fast_model_trains_in_train_mode():
    model = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    fast = glmha.optimize(model, compile=False).train()
    fast(torch.rand(1, 3, 16, 16)).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_autocast_option_returns_input_precision():
    model, inputs, expected = golden_model("restormer_tiny")
    fast = glmha.optimize(model, compile=False, autocast="bfloat16")
    out = fast(*inputs)
    assert out.dtype == torch.float32
    assert (out - expected).abs().max().item() < 0.1  # bf16: close, not exact


def test_optimize_errors():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        glmha.optimize(lambda x: x)
    model = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    with pytest.raises(ValueError, match="autocast must be"):
        glmha.optimize(model, autocast="int8")
    with pytest.raises(ValueError, match="needs compile=True"):
        glmha.optimize(model, compile=False, freeze=True)
    with pytest.raises(ValueError, match="needs the inductor backend"):
        glmha.optimize(model, freeze=True, compile_backend="eager", scope="model")
    with pytest.raises(TypeError, match="already optimized"):
        glmha.optimize(glmha.optimize(model, compile=False))
    with pytest.raises(ValueError, match="scope must be one of"):
        glmha.optimize(model, scope="layers")
    with pytest.raises(ValueError, match="freeze=True needs scope='model'"):
        glmha.optimize(model, freeze=True)
