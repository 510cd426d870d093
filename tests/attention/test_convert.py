import copy

import pytest
import torch

import glmha
from glmha.attention import GLMHA, MDTA, SpectralGLMHA, SpectralMSA
from glmha.attention.baselines import PerformerCSA

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


@pytest.mark.parametrize("bias", [False, True])
def test_svd_init_is_the_truncated_svd_of_the_key_value_projection(bias):
    csa = MDTA(16, 2, bias=bias)
    model = torch.nn.Sequential(csa)
    reference = copy.deepcopy(csa)
    glmha.swap_attention(model, "glmha", init="svd", rank_ratio=0.5)
    new = model[0]
    dim, tokens, kept = 16, 8, 4
    w_q, w_k, w_v = reference.qkv.weight.flatten(1).split(dim)
    torch.testing.assert_close(new.q.weight.flatten(1), w_q)
    torch.testing.assert_close(new.project_out.weight, reference.project_out.weight)
    torch.testing.assert_close(new.temperature, reference.temperature)
    assert (new.calibration.fc2.weight == 0).all()  # neutral gate g = 1/2 ...
    new_k, new_v = (new.kv.weight.flatten(1) / 2).split(new.rank)  # ... compensated by doubled weights
    for head in range(2):
        old_rows = torch.cat([w_k, w_v], dim=1)[head * tokens : (head + 1) * tokens]
        new_rows = torch.cat([new_k, new_v], dim=1)[head * kept : (head + 1) * kept]
        singular = torch.linalg.svdvals(old_rows)
        # rows of the new projection: orthogonal, with the top singular values as norms
        torch.testing.assert_close(new_rows @ new_rows.T, torch.diag(singular[:kept] ** 2), rtol=1e-4, atol=1e-5)
    x = torch.randn(1, 16, 6, 10)
    assert new(x).shape == x.shape


def test_svd_init_at_full_rank_keeps_the_key_value_row_space():
    csa = SpectralMSA(12, 2, 6)
    model = torch.nn.Sequential(csa)
    reference = copy.deepcopy(csa)
    glmha.swap_attention(model, "glmha", init="svd", rank=12, calibration=False)
    new = model[0]
    torch.testing.assert_close(new.to_q.weight, reference.to_k.weight)  # official K Q^T order
    torch.testing.assert_close(new.pos_emb[0].weight, reference.pos_emb[0].weight)
    old = torch.cat([reference.to_q.weight, reference.to_v.weight], dim=1)
    mixed = torch.cat([new.to_k.weight, new.to_v.weight], dim=1)
    torch.testing.assert_close(mixed.T @ mixed, old.T @ old, rtol=1e-4, atol=1e-5)  # an orthogonal mix of tokens


def test_converted_model_trains_and_round_trips(tmp_path):
    model = glmha.swap_attention(glmha.create_model("restormer", **TINY_RESTORMER), "glmha", init="svd")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, target = torch.rand(2, 3, 16, 24), torch.rand(2, 3, 16, 24)
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
