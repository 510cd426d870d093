import pytest
import torch

from glmha.attention import build_attention, list_attentions

ALL_MDTA = ["csa", "glmha", "linformer", "performer", "reformer"]


def test_registered():
    assert set(ALL_MDTA) <= set(list_attentions("mdta"))
    assert set(ALL_MDTA) <= set(list_attentions("smsa"))


@pytest.mark.parametrize("name", ALL_MDTA)
@pytest.mark.parametrize(("dim", "heads", "size"), [(12, 2, (7, 5)), (20, 1, (3, 11))])
def test_mdta_shapes_and_gradients(name, dim, heads, size):
    layer = build_attention(name, "mdta", dim=dim, num_heads=heads, bias=True)
    assert (layer.dim, layer.num_heads) == (dim, heads)
    x = torch.randn(2, dim, *size, requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL_MDTA)
@pytest.mark.parametrize("mask_guided", [False, True])
def test_smsa_shapes_and_gradients(name, mask_guided):
    dim, heads, h, w = 16, 2, 5, 7
    layer = build_attention(name, "smsa", dim=dim, num_heads=heads, dim_head=dim // heads, mask_guided=mask_guided)
    x = torch.randn(2, h, w, dim)
    # level with dim // dim_head = 2: 0.5 px of dispersion per channel
    mask = torch.rand(2, h, w + int(0.5 * (dim - 1)), dim) if mask_guided else None
    out = layer(x, mask)
    assert out.shape == x.shape
    out.square().sum().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"


def _copy_projections(target, source):
    target.qkv.load_state_dict(source.qkv.state_dict())
    target.qkv_dwconv.load_state_dict(source.qkv_dwconv.state_dict())
    target.project_out.load_state_dict(source.project_out.state_dict())
    with torch.no_grad():
        target.temperature.copy_(source.temperature)


def test_linformer_with_identity_projections_is_csa():
    csa = build_attention("csa", "mdta", dim=12, num_heads=3)
    linformer = build_attention("linformer", "mdta", dim=12, num_heads=3, rank=12)
    _copy_projections(linformer, csa)
    with torch.no_grad():
        linformer.core.key_projection.copy_(torch.eye(4).expand(3, 4, 4))
        linformer.core.value_projection.copy_(torch.eye(4).expand(3, 4, 4))
    x = torch.randn(2, 12, 6, 5)
    torch.testing.assert_close(linformer(x), csa(x), rtol=0, atol=1e-5)


def test_performer_approximates_csa_with_many_features():
    csa = build_attention("csa", "mdta", dim=8, num_heads=2)
    x = torch.randn(1, 8, 4, 4)
    errors = []
    for features in (8, 20000):
        performer = build_attention("performer", "mdta", dim=8, num_heads=2, num_features=features)
        _copy_projections(performer, csa)
        errors.append((performer(x) - csa(x)).norm() / csa(x).norm())
    assert errors[1] < 0.02 and errors[1] < errors[0]


def test_reformer_with_one_bucket_attends_to_all_other_channels():
    # One chunk holding every token: shared-QK attention over all channels except the token itself.
    dim = 6
    reformer = build_attention("reformer", "mdta", dim=dim, num_heads=1, bucket_size=dim, n_hashes=1)
    x = torch.randn(1, dim, 4, 5)
    q, v = reformer.qkv_dwconv(reformer.qkv(x)).reshape(1, 2, dim, 20).unbind(1)
    qn = torch.nn.functional.normalize(q, dim=-1)
    logits = (qn @ qn.transpose(-2, -1)) * reformer.temperature[0]
    logits = logits - torch.eye(dim) * 1e4
    expected = reformer.project_out((logits.softmax(-1) @ v).reshape(1, dim, 4, 5))
    torch.testing.assert_close(reformer(x), expected, rtol=1e-5, atol=1e-5)


def test_reformer_hashes_into_chunks_deterministically():
    reformer = build_attention("reformer", "mdta", dim=40, num_heads=1, bucket_size=8, n_hashes=3)
    assert (reformer.core.n_chunks, reformer.core.n_buckets) == (5, 6)
    x = torch.randn(2, 40, 6, 6)
    torch.testing.assert_close(reformer(x), reformer(x))


def test_baselines_run_on_meta_device():
    with torch.device("meta"):
        for name in ALL_MDTA:
            out = build_attention(name, "mdta", dim=16, num_heads=2)(torch.zeros(1, 16, 8, 8))
            assert out.shape == (1, 16, 8, 8)


def test_smsa_linformer_with_identity_projections_is_csa():
    csa = build_attention("csa", "smsa", dim=12, num_heads=2, dim_head=6)
    linformer = build_attention("linformer", "smsa", dim=12, num_heads=2, dim_head=6, rank=12)
    state = {k: v for k, v in csa.state_dict().items()}
    with torch.no_grad():
        csa.rescale.uniform_(0.5, 2.0)
        state["rescale"] = csa.rescale.detach().clone()
        state["core.key_projection"] = torch.eye(6).expand(2, 6, 6)
        state["core.value_projection"] = torch.eye(6).expand(2, 6, 6)
    linformer.load_state_dict(state)
    x = torch.randn(2, 5, 7, 12)
    torch.testing.assert_close(linformer(x), csa(x), rtol=0, atol=1e-5)


def test_smsa_reformer_has_no_key_projection():
    reformer = build_attention("reformer", "smsa", dim=16, num_heads=2, dim_head=8)
    assert not hasattr(reformer, "to_k")
    with pytest.raises(ValueError, match="num_heads \\* dim_head == dim"):
        build_attention("performer", "smsa", dim=16, num_heads=2, dim_head=16)
