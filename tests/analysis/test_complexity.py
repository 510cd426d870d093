import pytest
import torch

import glmha
from glmha.analysis import attention_cost, attention_sweep, measure_attention
from glmha.analysis.complexity import format_size_table, format_size_tables, format_sweep, model_size_table, plot_sweep
from glmha.cli import main

MDTA_CASES = [(48, 1, 7, 9), (96, 2, 16, 16), (31, 1, 5, 6), (384, 8, 4, 4)]


@pytest.mark.parametrize("name", ["csa", "glmha", "linformer", "performer", "reformer"])
@pytest.mark.parametrize("bias", [False, True])
def test_mdta_formulas_match_the_flop_counter(name, bias):
    options = [{}]
    if name == "glmha":
        options += [{"rank_ratio": 0.25, "calibration": False}, {"rank": 8, "reduction": 4}]
    if name == "reformer":
        options += [{"bucket_size": 8, "n_hashes": 3}]
    for dim, heads, height, width in MDTA_CASES:
        for opts in options:
            analytic = attention_cost(name, "mdta", dim, heads, height, width, bias=bias, **opts)
            measured = measure_attention(name, "mdta", dim, heads, height, width, bias=bias, **opts)
            assert analytic == measured, (dim, heads, opts)


@pytest.mark.parametrize("name", ["csa", "glmha", "linformer", "performer", "reformer"])
@pytest.mark.parametrize("mask_guided", [False, True])
def test_smsa_formulas_match_the_flop_counter(name, mask_guided):
    options = {"reformer": {"bucket_size": 8}, "glmha": {"rank_ratio": 0.25}}.get(name, {})
    for dim, heads, dim_head, height, width in [(31, 1, 31, 7, 9), (56, 2, 28, 8, 4), (112, 4, 28, 4, 4)]:
        for bias in (False, True):
            kwargs = dict(dim_head=dim_head, mask_guided=mask_guided, bias=bias, **options)
            analytic = attention_cost(name, "smsa", dim, heads, height, width, **kwargs)
            assert analytic == measure_attention(name, "smsa", dim, heads, height, width, **kwargs), (dim, bias)


def test_spec_formulas_for_mdta_and_glmha():
    # docs/GLMHA.md section 4, with rho = 1/2, gamma = 8, h = 2
    C, h, N = 64, 2, 32 * 32
    csa = attention_cost("csa", "mdta", C, h, 32, 32)
    assert csa.macs == (4 + 2 / h) * C * C * N + 27 * C * N
    assert csa.params == 4 * C * C + 27 * C + h
    g = attention_cost("glmha", "mdta", C, h, 32, 32)
    rho = 0.5
    assert g.macs == (2 + 2 * rho + 2 * rho / h) * C * C * N + 9 * (1 + 2 * rho) * C * N + 2 * C * C / 8
    assert g.params == (2 + 2 * rho) * C * C + 9 * (1 + 2 * rho) * C + 2 * C * C / 8 + h


def _meta_profile(attention, **kwargs):
    with torch.device("meta"):
        model = glmha.create_model("restormer", attention=attention, **kwargs)
        return glmha.profile(model, *model.example_inputs(256, 256))


def test_restormer_glmha_meets_the_papers_headline_reductions():
    csa, low_rank = _meta_profile("csa"), _meta_profile("glmha")
    assert csa.params == 26_126_644 and csa.macs == 154_882_031_616
    assert csa.params - low_rank.params >= 370_000
    assert csa.macs - low_rank.macs >= 7.7e9
    # the exact figures written in docs/complexity.md
    assert (low_rank.params, low_rank.macs) == (24_697_588, 136_819_715_328)


def test_sweep_table_and_plot(tmp_path):
    rows = attention_sweep(["csa", "glmha"], dims=(16, 64), pixels=(256, 1024), fixed_pixels=256, fixed_dim=16)
    assert len(rows) == 8
    text = format_sweep(rows)
    assert "| glmha | 16 | 256 |" in text and "0.667" in text
    plot_sweep(rows, str(tmp_path / "sweep.png"))
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_size_table_from_python():
    rows = model_size_table(["restormer", "mst_plus_plus"], ["csa", "glmha"], 128, 128)
    assert [(r["model"], r["attention"]) for r in rows] == [
        ("restormer", "csa"), ("restormer", "glmha"), ("mst_plus_plus", "csa"), ("mst_plus_plus", "glmha"),
    ]
    assert rows[1]["params"] == 24_697_588 and rows[0]["params"] - rows[1]["params"] == 1_429_056
    assert "| restormer | glmha | 24.698 | 34.21 | 68.41 | -1,429,056 | -4.52 |" in format_size_table(rows, 128, 128)
    with pytest.raises(ValueError, match="restormer at 100x100"):
        model_size_table(["restormer"], ["csa"], 100, 100)


def test_size_tables_at_the_papers_sizes():
    tables = format_size_tables(["restormer", "mst_l"], ["csa"])
    # one table per size: 256x256 with both models, then 128x128 (Restormer's second size)
    assert tables.count("| model | attention |") == 2 and "GMACs at 256x256" in tables and "GMACs at 128x128" in tables
    assert tables.split("GMACs at 128x128")[1].count("| mst_l |") == 0


def test_cli_sweep_and_bad_attention(tmp_path, capsys):
    plot = tmp_path / "s.png"
    assert main(["complexity", "--sweep", "--attentions", "csa", "linformer", "--sweep-pixels", "64", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "| linformer | 512 | 64 |" in out and plot.exists()
    assert main(["complexity", "--attentions", "flash"]) == 1
    assert "unknown attention 'flash'" in capsys.readouterr().err


def test_cli_table_compares_with_csa(capsys):
    assert main(["complexity", "--models", "restormer", "--attentions", "csa", "glmha", "--size", "128", "128"]) == 0
    out = capsys.readouterr().out
    assert "| restormer | glmha | 24.698 | 34.21 | 68.41 | -1,429,056 | -4.52 |" in out


def test_cli_size_the_model_cannot_take_is_one_line(capsys):
    assert main(["complexity", "--models", "restormer", "--attentions", "csa", "--size", "100", "100"]) == 1
    err = capsys.readouterr().err.strip()
    assert "restormer at 100x100" in err and "divisible by 8" in err and "\n" not in err
