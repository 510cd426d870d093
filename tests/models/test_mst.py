import pytest
import torch
from safetensors.torch import load_file

import glmha
from glmha.attention import MaskGuidedMechanism, SpectralMSA, list_attentions, shift_back_mask
from glmha.validation import InputError
from tests.conftest import SHARED_REFERENCE, official_layouts

GOLDEN = SHARED_REFERENCE / "golden"


def read_golden(name: str):
    """(state dict, inputs, output) of a golden file; skips when the shared folder is absent."""
    path = GOLDEN / f"{name}.safetensors"
    if not path.exists():
        pytest.skip(f"{path} not available")
    tensors = load_file(str(path))
    state = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
    inputs = [tensors[f"input.{i}"] for i in range(sum(k.startswith("input.") for k in tensors))]
    return state, inputs, tensors["output"]


@pytest.mark.parametrize("name", ["mst_s", "mst_m", "mst_l"])
def test_official_state_dict_layout(name):
    ref = official_layouts()[name]
    with torch.device("meta"):
        model = glmha.create_model(name)
    state = model.state_dict()
    assert list(state) == [k for k, _ in ref["state_dict"]]
    assert {k: list(v.shape) for k, v in state.items()} == {k: s for k, s in ref["state_dict"]}
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]


def test_parameter_counts():
    counts = {"mst_s": 922_648, "mst_m": 1_487_592, "mst_l": 2_018_156}
    for name, count in counts.items():
        with torch.device("meta"):
            assert sum(p.numel() for p in glmha.create_model(name).parameters()) == count


def test_golden_mst_s_256():
    state, (x, mask), expected = read_golden("mst_s")
    model = glmha.create_model("mst_s").eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(x, mask)
    assert out.shape == expected.shape == (1, 28, 256, 256)
    assert (out - expected).abs().max().item() < 1e-5


def official_shift_back(inputs: torch.Tensor, step: float = 2.0) -> torch.Tensor:
    # The official loop, written from its definition: down_sample = 256 // rows,
    # channel i is read from column int(step / down_sample**2 * i), width = rows.
    rows = inputs.shape[2]
    down = 256 // rows
    step = step / (down * down)
    out = inputs.clone()
    for i in range(inputs.shape[1]):
        out[:, i, :, :rows] = inputs[:, i, :, int(step * i):int(step * i) + rows]
    return out[:, :, :, :rows]


@pytest.mark.parametrize("level", [0, 1, 2])
def test_shift_back_matches_official_at_256(level):
    d = 2**level
    mask = torch.randn(1, 28 * d, 256 // d, [310, 155, 77][level])
    ours = shift_back_mask(mask, 256 // d, 2.0 / d**2)
    torch.testing.assert_close(ours, official_shift_back(mask), rtol=0, atol=0)


def test_shift_back_is_size_independent():
    # At 128 px the official code would use the level-1 step at level 0; ours keeps 2 px per band.
    mm = MaskGuidedMechanism(28)
    assert mm.downsample == 1
    mask = torch.arange(28 * 182, dtype=torch.float32).reshape(1, 28, 1, 182).expand(1, 28, 4, 182)
    out = shift_back_mask(mask, 128, 2.0)
    assert out[0, 5, 0, 0] == mask[0, 5, 0, 10]
    with pytest.raises(ValueError, match="too narrow"):
        shift_back_mask(mask, 140, 2.0)


def test_mask_guided_levels_get_their_downsampling():
    model = glmha.create_model("mst_s")
    assert [lvl[0].blocks[0][0].mm.downsample for lvl in model.encoder_layers] == [1, 2]
    assert model.bottleneck.blocks[0][0].mm.downsample == 4


def test_smsa_attributes_and_validation():
    attn = SpectralMSA(56, num_heads=2, dim_head=28, mask_guided=True)
    assert (attn.dim, attn.num_heads, attn.dim_head, attn.mask_guided) == (56, 2, 28, True)
    with pytest.raises(ValueError, match="needs num_heads"):
        SpectralMSA(56, num_heads=1, dim_head=28, mask_guided=True)
    with pytest.raises(ValueError, match="pass the shifted mask"):
        attn(torch.randn(1, 4, 4, 56))


def test_any_size_non_square_and_shared_mask():
    model = glmha.create_model("mst_s", num_blocks=[1, 1, 1]).eval()
    x, mask = model.example_inputs(16, 24, batch=2)
    assert mask.shape == (2, 28, 16, 78)
    x = torch.rand_like(x)
    mask = (torch.rand(1, 28, 16, 78) > 0.5).float()
    with torch.no_grad():
        both = model(x, mask)  # one mask for the batch
        first = model(x[:1], mask)
        per_sample = model(x, mask.expand(2, -1, -1, -1))
    assert both.shape == (2, 28, 16, 24)
    torch.testing.assert_close(both[:1], first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both, per_sample, atol=1e-5, rtol=1e-5)


def test_input_errors():
    model = glmha.create_model("mst_s", num_blocks=[1, 1, 1])
    x, mask = model.example_inputs(16, 16)
    with pytest.raises(InputError, match="shifted 3-D mask Phi as second input"):
        model(x)
    with pytest.raises(InputError, match=r"mask must be the shifted 3-D mask of shape 1 \(or 1\) x 28 x 16 x 70"):
        model(x, mask[..., :64])
    with pytest.raises(InputError, match="mask has 27 channels"):
        model(x, mask[:, :27])
    with pytest.raises(InputError, match="divisible by 4"):
        model(x[..., :14], mask[..., :68])
    with pytest.raises(InputError, match="input has 3 channels but the model expects 28"):
        model(x[:, :3], mask)
    with pytest.raises(ValueError, match="stage \\+ 1 = 3 entries"):
        glmha.create_model("mst_l", num_blocks=[1, 1])


@pytest.mark.parametrize("attention", list_attentions("smsa"))
def test_every_smsa_attention_trains(attention):
    model = glmha.create_model("mst_s", attention=attention, num_blocks=[1, 1, 1])
    x, mask = model.example_inputs(16, 16)
    out = model(torch.rand_like(x), (torch.rand_like(mask) > 0.5).float())
    out.square().mean().backward()
    assert out.shape == x.shape
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.skipif("glmha" not in list_attentions("smsa"), reason="GLMHA for S-MSA not registered")
def test_glmha_is_smaller_than_csa():
    with torch.device("meta"):
        csa = sum(p.numel() for p in glmha.create_model("mst_l").parameters())
        low_rank = sum(p.numel() for p in glmha.create_model("mst_l", attention="glmha").parameters())
    assert low_rank < csa
