import copy

import pytest
import torch

import glmha
from glmha.analysis.allocation import allocate_ranks, convert, kept_tokens, relative_squared_error, token_orders
from glmha.attention.convert import svd_init_
from glmha.attention.csa import MDTA, SpectralMSA
from glmha.attention.glmha import GLMHA, SpectralGLMHA


def _converted(layer, tokens):
    if isinstance(layer, MDTA):
        new = GLMHA(layer.dim, layer.num_heads, rank=len(tokens))
    else:
        new = SpectralGLMHA(layer.dim, layer.num_heads, layer.dim_head, rank=len(tokens))
    new = new.to(next(layer.parameters()).dtype)
    svd_init_(new, layer, tokens=torch.tensor(tokens))
    return new


def _greedy_with_real_layers(layer, inputs):
    """The definition, with whole converted layers: drop the token whose removal changes the output least."""
    with torch.no_grad():
        references = [layer(x) for x in inputs]
        kept, dropped = list(range(layer.dim)), []
        while len(kept) > 1:
            def change(subset):
                new = _converted(layer, subset)
                return sum(float((new(x) - ref).double().square().sum()) for x, ref in zip(inputs, references))
            best = min(kept, key=lambda t: (change([s for s in kept if s != t]), t))
            kept.remove(best)
            dropped.append(best)
    return kept + dropped[::-1]


def test_token_order_is_greedy_elimination_on_the_converted_layers_output():
    torch.manual_seed(0)
    layer = MDTA(6, 1, bias=False).double()
    with torch.no_grad():
        layer.temperature.fill_(3.0)  # a peaked softmax, so tokens differ in importance
    inputs = [torch.randn(2, 6, 9, 7, dtype=torch.float64) for _ in range(2)]
    order = token_orders(layer, [(x,) for x in inputs])
    assert order == [_greedy_with_real_layers(layer, inputs)]
    # the order is data-driven: it is not simply the weight-only (SVD leverage) choice
    assert sorted(order[0]) == list(range(6))


def test_token_order_for_smsa_reads_the_key_tokens_of_the_official_order():
    torch.manual_seed(1)
    layer = SpectralMSA(5, 1, 5).double()
    with torch.no_grad():
        layer.rescale.fill_(4.0)
        for conv in layer.pos_emb:  # GLMHA's positional branch reads another tensor: compare the attention part
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.zero_()
    inputs = [torch.randn(1, 6, 8, 5, dtype=torch.float64) for _ in range(2)]
    assert token_orders(layer, [(x,) for x in inputs]) == [_greedy_with_real_layers(layer, inputs)]


def test_kept_tokens_take_the_head_of_every_order():
    assert kept_tokens([[2, 0, 1], [1, 2, 0]], 4).tolist() == [0, 2, 4, 5]
    layer = MDTA(6, 2)
    with pytest.raises(ValueError, match="2 in each of the 2 heads"):
        svd_init_(GLMHA(6, 2, rank=4), layer, tokens=torch.tensor([0, 1, 2, 3]))


@pytest.fixture(scope="module")
def restormer():
    torch.manual_seed(0)
    model = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4]).eval()
    return model, [torch.rand(1, 3, 32, 32) for _ in range(2)]


def test_allocation_saves_what_is_asked_at_the_least_summed_change(restormer):
    model, inputs = restormer
    found = allocate_ranks(model, inputs, 0.1)
    again = allocate_ranks(model, inputs, 0.1)
    assert found.ranks == again.ranks and found.macs_saving == again.macs_saving
    student = convert(model, found)
    macs = [glmha.profile(m, inputs[0]).macs for m in (model, student)]
    assert 1 - macs[1] / macs[0] == pytest.approx(found.macs_saving) and found.macs_saving >= 0.1
    layers = {n: m for n, m in student.named_modules() if isinstance(m, GLMHA)}
    assert {n: m.rank for n, m in layers.items()} == found.ranks
    assert all(m.rank % m.num_heads == 0 for m in layers.values())
    # a bigger saving never keeps more tokens anywhere it matters: the summed change grows
    assert allocate_ranks(model, inputs, 0.15).error > found.error
    with pytest.raises(ValueError, match=r"lowest ranks save .* less than the 90.0% asked for"):
        allocate_ranks(model, inputs, 0.9)
    with pytest.raises(ValueError, match=r"macs_saving must be in \(0, 1\)"):
        allocate_ranks(model, inputs, 0.0)


def test_converted_layers_keep_the_allocated_tokens(restormer):
    model, inputs = restormer
    found = allocate_ranks(model, inputs, 0.1)
    student = convert(copy.deepcopy(model), found)
    name = next(iter(found.tokens))
    teacher_layer, student_layer = model.get_submodule(name), student.get_submodule(name)
    dim = teacher_layer.dim
    w_k = teacher_layer.qkv.weight[dim:2 * dim]
    kept = found.tokens[name]
    # the calibration starts at g = 1/2, compensated by doubling the kept key weights
    assert torch.allclose(student_layer.kv.weight[: len(kept)], 2 * w_k[kept])


def test_relative_squared_error_weighs_by_the_reference_with_a_floor():
    output, reference = torch.tensor([0.3, 0.0, -0.1]), torch.tensor([0.2, 0.0001, -0.2])
    expected = ((0.1 / 0.2) ** 2 + (0.0001 / 0.001) ** 2 + (0.1 / 0.2) ** 2) / 3
    assert float(relative_squared_error(output, reference)) == pytest.approx(expected)
