"""``glmha rank --suggest`` prints Python that runs as printed and builds the suggested model from the analysed one."""
import json

import pytest
import torch

import glmha
from glmha.analysis.eigen import attention_modules
from glmha.cli import main

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}
RANK = ["--size", "32", "--num-images", "1", "--suggest", "--output", "spectra"]


def _printed_code(capsys) -> str:
    out = capsys.readouterr().out
    return out[out.index("# GLMHA ranks keeping"):]  # from the heading (a comment) to the end


def _run(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, "<printed by glmha rank --suggest>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("attention", ["csa", "glmha"])
def test_printed_code_loads_the_analysed_checkpoint(tmp_path, monkeypatch, capsys, attention):
    monkeypatch.chdir(tmp_path)  # the printed path is the one given, relative here
    torch.manual_seed(0)
    kwargs = {"attention_kwargs": {"rank_ratio": 0.5}} if attention == "glmha" else {}
    analysed = glmha.create_model("restormer", attention=attention, **kwargs, **TINY)
    glmha.save_model(analysed, "tiny.safetensors")
    assert main(["rank", "--checkpoint", "tiny.safetensors", *RANK]) == 0
    code = _printed_code(capsys)
    assert "glmha.load_model('tiny.safetensors')" in code
    # a CSA model starts GLMHA by SVD of its weights; a GLMHA one cannot, and starts afresh
    assert ("apply_ranks(model, ranks)  # per-layer GLMHA, warm-started by SVD" if attention == "csa"
            else 'apply_ranks(model, ranks, init="random")') in code
    built = _run(code)
    ranks = json.loads((tmp_path / "spectra" / "ranks.json").read_text())["ranks"]
    assert {name: layer.rank for name, layer in attention_modules(built["model"]).items()} == ranks
    # the analysed weights, not fresh ones: a layer outside the attention is the checkpoint's
    torch.testing.assert_close(built["model"].patch_embed.proj.weight, analysed.patch_embed.proj.weight, rtol=0, atol=0)
    assert built["uniform"].spec.attention == "glmha"


def test_printed_code_for_weights_without_record_repeats_the_model_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    analysed = glmha.create_model("restormer", **TINY)
    torch.save(analysed.state_dict(), "plain.pth")  # a plain state dict: the flags say what it is
    assert main(["rank", "--checkpoint", "plain.pth", "--model-kwargs", json.dumps(TINY), *RANK]) == 0
    code = _printed_code(capsys)
    assert "glmha.load_model('plain.pth', model='restormer', dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)" in code
    built = _run(code)
    assert built["model"].spec.layers
    torch.testing.assert_close(built["model"].patch_embed.proj.weight, analysed.patch_embed.proj.weight, rtol=0, atol=0)


def test_printed_code_for_an_untrained_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["rank", "--model-kwargs", json.dumps(TINY), *RANK]) == 0
    code = _printed_code(capsys)
    assert 'glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)' in code
    built = _run(code)
    ranks = json.loads((tmp_path / "spectra" / "ranks.json").read_text())["ranks"]
    assert {name: layer.rank for name, layer in attention_modules(built["model"]).items()} == ranks
