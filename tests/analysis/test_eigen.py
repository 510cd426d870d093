import json
import re

import pytest
import torch

import glmha
from glmha.analysis.eigen import (
    apply_ranks,
    attention_modules,
    attention_spectra,
    capture_attention_maps,
    cumulative_share,
    level_of,
    rank_for_share,
    spectrum,
    suggest_ranks,
)
from glmha.cli import main
from glmha.io.images import builtin_photographs

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 2], "num_refinement_blocks": 1}


def tiny_restormer(attention="csa", **attention_kwargs):
    return glmha.create_model("restormer", attention=attention, attention_kwargs=attention_kwargs, **TINY).eval()


def test_capture_finds_every_attention_map_and_changes_nothing():
    model = tiny_restormer()
    x = torch.rand(2, 3, 32, 24)
    with torch.no_grad():
        before = model(x)
    maps = capture_attention_maps(model, x)
    assert list(maps) == list(attention_modules(model)) and len(maps) == 9
    assert maps["encoder_level1.0.attn"].shape == (2, 1, 8, 8)
    assert maps["latent.0.attn"].shape == (2, 8, 8, 8)
    assert maps["decoder_level1.0.attn"].shape == (2, 1, 16, 16)  # level 1 of the decoder has 2 * dim channels
    for attn in maps.values():  # softmax rows
        assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-5)
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_glmha_maps_are_rectangular():
    model = tiny_restormer("glmha", rank_ratio=0.5)
    maps = capture_attention_maps(model, torch.rand(1, 3, 16, 16))
    assert maps["decoder_level1.0.attn"].shape == (1, 1, 16, 8)
    assert maps["latent.0.attn"].shape == (1, 8, 8, 4)  # rank 32 / 8 heads -> rounded to 1 per head minimum
    spectra = attention_spectra(model, [torch.rand(1, 3, 16, 16)])
    assert len(spectra[0].cumulative) == min(spectra[0].map_shape)


def test_spectrum_of_known_maps():
    uniform = torch.full((4, 4), 0.25)  # every row the same: rank 1
    identity = torch.eye(4)
    assert torch.allclose(cumulative_share(spectrum(uniform)), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(cumulative_share(spectrum(identity)), torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    assert torch.allclose(spectrum(identity, "eigen"), torch.ones(4, dtype=torch.float64))
    assert rank_for_share([0.25, 0.5, 0.75, 1.0], 0.5) == 2
    assert rank_for_share([0.25, 0.5, 0.75, 1.0], 0.51) == 3
    assert rank_for_share([0.9, 1.0], 0.9) == 1
    with pytest.raises(ValueError, match="square"):
        spectrum(torch.rand(3, 2), "eigen")


def test_levels():
    assert level_of("encoder_level1.3.attn") == "encoder_level1"
    assert level_of("body.0.encoder_layers.1.0.blocks.1.0") == "body.0.encoder_layers.1"
    assert level_of("bottleneck.blocks.0.0") == "bottleneck"
    assert level_of("attn") == "attn"


@pytest.mark.parametrize("attention, kv_tokens", [("csa", 31), ("glmha", 16)])
def test_spectral_msa_maps_of_mst_plus_plus(attention, kv_tokens):
    model = glmha.create_model("mst_plus_plus", stage=1, attention=attention).eval()
    maps = capture_attention_maps(model, torch.rand(1, 3, 16, 16))
    assert maps["body.0.bottleneck.blocks.0.0"].shape == (1, 4, 31, kv_tokens)  # S-MSA: heads of 31 channels
    spectra = attention_spectra(model, [torch.rand(1, 3, 16, 16)])
    assert [s.level for s in spectra] == [
        "body.0.encoder_layers.0", "body.0.encoder_layers.1", "body.0.bottleneck", "body.0.decoder_layers.0", "body.0.decoder_layers.1"
    ]


def _train_a_few_steps(model, steps=8):
    # a small denoising task on built-in photographs, enough to move the attention off its initial state
    clean = torch.cat(builtin_photographs(2, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        noisy = clean + 0.1 * torch.randn_like(clean)
        loss = (model(noisy) - clean).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_rank_command_on_a_trained_model(tmp_path, capsys):
    model = _train_a_few_steps(tiny_restormer())
    checkpoint = tmp_path / "tiny.safetensors"
    glmha.save_weights(model, checkpoint)
    out = tmp_path / "rank"
    code = main(
        ["rank", "--checkpoint", str(checkpoint), "--output", str(out),  # the file records its model
         "--num-images", "2", "--size", "48", "--suggest", "--share", "0.9"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert (out / "attention_spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "ranks.md").read_text()
    assert table.count("\n| ") == 10 and "rank for 95%" in table  # header + 9 layers
    assert "apply_ranks(model, ranks)" in printed and "rank_ratio" in printed
    suggestion = json.loads((out / "ranks.json").read_text())
    assert suggestion["share"] == 0.9 and len(suggestion["ranks"]) == 9

    # the suggested settings build working GLMHA models
    x = torch.rand(1, 3, 16, 16)
    ratio = float(re.search(r'rank_ratio=([0-9.]+)', printed).group(1))  # glmha.swap_attention(..., rank_ratio=...)
    uniform = glmha.create_model("restormer", attention="glmha", attention_kwargs={"rank_ratio": ratio}, **TINY)
    for name, layer in attention_modules(uniform).items():
        assert layer.rank >= suggestion["ranks"][name]
    assert uniform(x).shape == x.shape
    per_layer = apply_ranks(model, suggestion["ranks"])
    assert {name: layer.rank for name, layer in attention_modules(per_layer).items()} == suggestion["ranks"]
    assert torch.isfinite(per_layer(x)).all()


def test_suggested_ranks_are_multiples_of_the_heads():
    model = tiny_restormer()
    spectra = attention_spectra(model, [torch.rand(1, 3, 16, 16)])
    for layer in spectra:
        rank = suggest_ranks([layer], 0.99)[layer.name]
        assert rank % layer.heads == 0 and layer.heads <= rank <= layer.heads * layer.map_shape[0]


def test_rank_command_errors_are_one_line(tmp_path, capsys):
    assert main(["rank", str(tmp_path / "missing"), "--model-kwargs", json.dumps(TINY)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("glmha rank: error: no such file") and "\n" not in err
    assert main(["rank", "--model-kwargs", "{dim: 8}"]) == 1
    assert "--model-kwargs is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["mst_s", "mst_s_real"])
def test_rank_command_on_a_cassi_model_uses_built_in_scenes(tmp_path, capsys, name):
    kwargs = {"stage": 1, "num_blocks": [1, 1]}
    out = tmp_path / "rank"
    assert main(["rank", "--model", name, "--model-kwargs", json.dumps(kwargs), "--num-images", "1", "--size", "32",
                 "--output", str(out)]) == 0
    ranks = json.loads((out / "ranks.json").read_text())["ranks"]
    assert set(ranks) == {"encoder_layers.0.0.blocks.0.0", "bottleneck.blocks.0.0", "decoder_layers.0.2.blocks.0.0"}
    model = apply_ranks(glmha.create_model(name, **kwargs), ranks)
    assert {name: layer.rank for name, layer in attention_modules(model).items()} == ranks
    assert model(*model.example_inputs(16, 16)).shape == (1, 28, 16, 16)


def test_real_cassi_models_are_analysed_on_simulated_measurements(capsys):
    from glmha.data.spectral_datasets import SyntheticRealCASSI
    from glmha.inference.reconstruction import builtin_real_cassi_inputs

    # built-in scenes through a random 660 x 660 aperture, with the simulated shot noise
    (y,) = builtin_real_cassi_inputs(1, 32)[0]
    assert y.shape == (1, 32, 32 + 54) and torch.equal(y[0], SyntheticRealCASSI(count=1, size=32)[0]["input"])
    assert main(["rank", "a.png", "--model", "mst_s_real", "--model-kwargs", json.dumps({"stage": 1, "num_blocks": [1, 1]})]) == 1
    assert "analyses it on built-in scenes, give no images" in capsys.readouterr().err
