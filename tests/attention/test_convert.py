import copy

import pytest
import torch

import glmha
from glmha.attention import GLMHA, MDTA, SpectralGLMHA, SpectralMSA, build_attention
from glmha.attention.baselines import PerformerCSA
from glmha.attention.convert import select_tokens

TINY_RESTORMER = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 4, 8])


def _attention_modules(model, cls):
    return [m for m in model.modules() if isinstance(m, cls)]


def test_swap_replaces_every_csa_module_and_keeps_the_rest():
    model = glmha.create_model("restormer", **TINY_RESTORMER)
    before = {k: v.clone() for k, v in model.state_dict().items() if ".attn." not in k}
    n_csa = len(_attention_modules(model, MDTA))
    out = glmha.swap_attention(model, "glmha", rank_ratio=0.25)
    assert out is model and model.attention == "glmha"
    assert not _attention_modules(model, MDTA)
    swapped = _attention_modules(model, GLMHA)
    assert len(swapped) == n_csa
    assert {(m.dim, m.num_heads, m.rank) for m in swapped} == {(8, 1, 2), (16, 2, 4), (32, 4, 8), (64, 8, 16), (16, 1, 4)}
    after = model.state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)
    # same layout as building the GLMHA model directly, so its checkpoints interchange
    direct = glmha.create_model("restormer", attention="glmha", attention_kwargs={"rank_ratio": 0.25}, **TINY_RESTORMER)
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in direct.state_dict().items()}


def test_swap_to_a_baseline_and_for_mst_keeps_the_mask_guidance():
    model = glmha.swap_attention(glmha.create_model("restormer", **TINY_RESTORMER), "performer", num_features=16)
    assert all(m.core.num_features == 16 for m in _attention_modules(model, PerformerCSA))
    mst = glmha.create_model("mst_s", num_blocks=[1, 1, 1])
    masks = [m.mm.state_dict() for m in _attention_modules(mst, SpectralMSA)]
    glmha.swap_attention(mst, "glmha")
    swapped = _attention_modules(mst, SpectralGLMHA)
    assert len(swapped) == len(masks) and all(m.mask_guided for m in swapped)
    for module, state in zip(swapped, masks):
        for key, value in state.items():
            torch.testing.assert_close(module.mm.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("name, kwargs", [("mst_plus_plus", {"stage": 1}), ("mst_s", {"num_blocks": [1, 1, 1]})])
def test_swapped_attentions_start_as_the_model_initialises_its_layers(name, kwargs):
    # MST and MST++ initialise every linear layer with a truncated normal of std 0.02 and zero
    # bias (the official _init_weights); attentions swapped in must start the same way, or a
    # swapped model trains differently from one built with that attention
    from glmha.analysis.eigen import apply_ranks

    def linears(model):
        return [m for a in _attention_modules(model, SpectralGLMHA) for m in a.modules() if isinstance(m, torch.nn.Linear)]

    torch.manual_seed(0)
    swapped = glmha.swap_attention(glmha.create_model(name, **kwargs), "glmha")
    direct = glmha.create_model(name, attention="glmha", **kwargs)
    layer = next(n for n, m in swapped.named_modules() if isinstance(m, SpectralGLMHA))
    per_layer = apply_ranks(glmha.create_model(name, **kwargs), {layer: 4}, init="random")
    for model in (swapped, direct, per_layer):
        layers = linears(model)
        assert layers and all(0.015 < float(m.weight.std()) < 0.025 for m in layers)
        assert all(m.bias is None or not m.bias.any() for m in layers)
    # the warm start sets the projections; what it leaves (the calibration's first layer) starts as the model's own
    converted = glmha.swap_attention(glmha.create_model(name, **kwargs), "glmha", init="svd")
    assert all(0.015 < float(a.calibration.fc1.weight.std()) < 0.025 for a in _attention_modules(converted, SpectralGLMHA))


def test_swapped_restormer_attentions_keep_pytorchs_initialisation():
    # the official Restormer leaves PyTorch's defaults (uniform within 1/sqrt(fan_in)) in place
    model = glmha.swap_attention(glmha.create_model("restormer", **TINY_RESTORMER), "glmha")
    for attention in _attention_modules(model, GLMHA):
        weight = attention.kv.weight
        bound = 1 / weight[0].numel() ** 0.5
        assert float(weight.abs().max()) <= bound and float(weight.std()) > bound / 3


def test_swap_errors_are_clear():
    model = glmha.create_model("restormer", **TINY_RESTORMER)
    with pytest.raises(ValueError, match="unknown attention 'flash'"):
        glmha.swap_attention(model, "flash")
    with pytest.raises(ValueError, match="init must be one of"):
        glmha.swap_attention(model, "glmha", init="zeros")
    with pytest.raises(ValueError, match="converts CSA to GLMHA"):
        glmha.swap_attention(model, "linformer", init="svd")
    with pytest.raises(ValueError, match="no attention module"):
        glmha.swap_attention(torch.nn.Conv2d(3, 3, 1), "glmha")


def _randomise_(module):
    """Random weights, biases and temperatures, so that no copy can pass by chance."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
    return module


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_svd_init_at_full_rank_reproduces_the_mdta_layer(bias, heads):
    torch.manual_seed(0)
    csa = _randomise_(MDTA(16, heads, bias=bias))
    model = torch.nn.Sequential(copy.deepcopy(csa))
    glmha.swap_attention(model, "glmha", init="svd", rank_ratio=1.0)  # calibration on
    new = model[0]
    assert isinstance(new, GLMHA) and new.rank == 16 and new.calibration is not None
    assert (new.calibration.fc2.weight == 0).all()  # neutral gate g = 1/2 ...
    torch.testing.assert_close(new.kv.weight.flatten(1), 2 * csa.qkv.weight[16:].flatten(1))  # ... weights doubled
    if bias:
        torch.testing.assert_close(new.kv.bias, csa.qkv.bias[16:])  # the gate does not scale biases
    x = torch.randn(2, 16, 6, 10)
    with torch.no_grad():
        torch.testing.assert_close(new(x), csa(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_svd_init_at_full_rank_reproduces_the_smsa_attention(bias):
    torch.manual_seed(0)
    csa = _randomise_(SpectralMSA(12, 2, 6, bias=bias))
    with torch.no_grad():  # the positional branches read different projections by design
        csa.pos_emb[0].weight.zero_()
    model = torch.nn.Sequential(copy.deepcopy(csa))
    glmha.swap_attention(model, "glmha", init="svd", rank=12)
    new = model[0]
    torch.testing.assert_close(new.to_q.weight, csa.to_k.weight)  # official K Q^T order
    x = torch.randn(2, 5, 7, 12)
    with torch.no_grad():
        torch.testing.assert_close(new(x), csa(x), rtol=0, atol=1e-5)


def _leverage_by_eigh(rows, kept):
    """Independent check: leverage scores are the diagonal of the projector onto the top eigenvectors of A A^T."""
    _, vectors = torch.linalg.eigh(rows.double() @ rows.double().T)  # ascending eigenvalues
    top = vectors[:, -kept:]
    return (top @ top.T).diagonal()


def test_svd_init_below_full_rank_keeps_the_top_leverage_tokens():
    torch.manual_seed(0)
    # Hand-built: per head 8 tokens, 4 of them non-zero; keeping 4 per head keeps exactly those.
    w_k, w_v = torch.zeros(16, 16), torch.zeros(16, 16)
    for token in (1, 3, 6, 7, 8, 10, 13, 15):
        w_k[token], w_v[token] = torch.randn(16), torch.randn(16)
    assert select_tokens(w_k, w_v, 2, 8).tolist() == [1, 3, 6, 7, 8, 10, 13, 15]
    # Duplicated tokens tie: the lower index wins.
    w_k, w_v = torch.zeros(4, 6), torch.zeros(4, 6)
    w_k[1] = w_k[2] = torch.tensor([3.0, 1, 0, 0, 0, 0])
    w_k[3] = torch.tensor([0.0, 0, 1, 0, 0, 0])
    assert select_tokens(w_k, w_v, 1, 1).tolist() == [1]

    # Random layer: the converted module holds exactly the rows, kernels and biases of the
    # tokens with the top leverage scores, computed independently.
    csa = _randomise_(MDTA(16, 2, bias=True))
    with torch.no_grad():
        csa.qkv.weight[16:24] *= torch.linspace(0.1, 3, 8)[:, None, None, None]  # uneven token sizes
    model = torch.nn.Sequential(copy.deepcopy(csa))
    glmha.swap_attention(model, "glmha", init="svd", rank=6, calibration=False)
    new = model[0]
    w_k, w_v = csa.qkv.weight[16:32].flatten(1), csa.qkv.weight[32:].flatten(1)
    expected = []
    for head in range(2):
        scores = _leverage_by_eigh(torch.cat([w_k, w_v], dim=1)[head * 8 : (head + 1) * 8], 3)
        expected += sorted((head * 8 + scores.topk(3).indices).tolist())
    assert select_tokens(w_k, w_v, 2, 6).tolist() == expected
    kept = torch.tensor(expected)
    torch.testing.assert_close(new.kv.weight, torch.cat([csa.qkv.weight[16 + kept], csa.qkv.weight[32 + kept]]))
    torch.testing.assert_close(
        new.kv_dwconv.weight, torch.cat([csa.qkv_dwconv.weight[16 + kept], csa.qkv_dwconv.weight[32 + kept]])
    )
    torch.testing.assert_close(new.kv.bias, torch.cat([csa.qkv.bias[16 + kept], csa.qkv.bias[32 + kept]]))
    torch.testing.assert_close(
        new.kv_dwconv.bias, torch.cat([csa.qkv_dwconv.bias[16 + kept], csa.qkv_dwconv.bias[32 + kept]])
    )
    torch.testing.assert_close(new.q.weight, csa.qkv.weight[:16])
    torch.testing.assert_close(new.q_dwconv.bias, csa.qkv_dwconv.bias[:16])


def test_svd_init_at_full_rank_reproduces_a_whole_restormer():
    torch.manual_seed(0)
    base = glmha.create_model("restormer", **TINY_RESTORMER).eval()
    for module in _attention_modules(base, MDTA):
        _randomise_(module)
    model = glmha.swap_attention(copy.deepcopy(base), "glmha", init="svd", rank_ratio=1.0)
    assert all(m.rank == m.dim and m.calibration is not None for m in _attention_modules(model, GLMHA))
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        reference = base(x)
        torch.testing.assert_close(model(x), reference, rtol=0, atol=1e-5)
        # below full rank the output moves: the test above can fail
        half = glmha.swap_attention(copy.deepcopy(base), "glmha", init="svd", rank_ratio=0.5)
        assert (half(x) - reference).abs().max() > 1e-3


def test_converted_model_trains_and_round_trips(tmp_path):
    model = glmha.swap_attention(glmha.create_model("restormer", **TINY_RESTORMER), "glmha", init="svd")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, target = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = torch.nn.functional.l1_loss(model(x), target)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if "calibration" in k)

    path = glmha.save_weights(model, tmp_path / "converted.safetensors")
    fresh = glmha.create_model("restormer", attention="glmha", **TINY_RESTORMER)
    glmha.load_checkpoint(fresh, path)
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_svd_init_refuses_a_baseline_that_derives_from_csa():
    # The S-MSA baselines reuse SpectralMSA's projections; they are not CSA weights to convert.
    model = torch.nn.Sequential(build_attention("linformer", "smsa", dim=12, num_heads=2, dim_head=6))
    with pytest.raises(ValueError, match="init='svd' converts CSA to GLMHA"):
        glmha.swap_attention(model, "glmha", init="svd")
