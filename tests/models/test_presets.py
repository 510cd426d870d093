"""Presets of the official release files: their settings are the official ones, and plain state dicts are recognised."""
import pytest
import torch

import glmha
from glmha.models.presets import PRESETS, get_preset, preset_table, recognise_preset
from tests.conftest import official_layouts

# network_g of each official options file (Restormer/*/Options/*.yml): inp/out channels, LayerNorm_type, dual_pixel_task;
# every one has dim 48, num_blocks [4,6,6,8], 4 refinement blocks, heads [1,2,4,8], ffn 2.66, bias False.
OFFICIAL_OPTIONS = {
    "deraining": (3, 3, "WithBias", False),
    "motion_deblurring": (3, 3, "WithBias", False),
    "single_image_defocus_deblurring": (3, 3, "WithBias", False),
    "dual_pixel_defocus_deblurring": (6, 3, "WithBias", True),
    "real_denoising": (3, 3, "BiasFree", False),
    **{f"gaussian_color_denoising_{level}": (3, 3, "BiasFree", False) for level in ("blind", "sigma15", "sigma25", "sigma50")},
    **{f"gaussian_gray_denoising_{level}": (1, 1, "BiasFree", False) for level in ("blind", "sigma15", "sigma25", "sigma50")},
}


def test_every_official_release_has_a_preset():
    assert set(OFFICIAL_OPTIONS) | {"mst_plus_plus", "mst_s", "mst_m", "mst_l"} == set(PRESETS)
    assert all(p.release_file == f"{p.name}.pth" for p in PRESETS.values())


@pytest.mark.parametrize("name", sorted(OFFICIAL_OPTIONS))
def test_restormer_presets_have_the_official_settings(name):
    preset = get_preset(name)
    inp, out, norm, dual = OFFICIAL_OPTIONS[name]
    assert preset.model == "restormer"
    assert preset.model_kwargs == {
        "inp_channels": inp, "out_channels": out, "dim": 48, "num_blocks": [4, 6, 6, 8], "num_refinement_blocks": 4,
        "heads": [1, 2, 4, 8], "ffn_expansion_factor": 2.66, "bias": False, "layer_norm_type": norm, "dual_pixel_task": dual,
    }
    # the grey denoisers' test script reads cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    assert preset.grey_conversion == ("opencv" if inp == 1 else None)
    assert preset.dual_pixel is dual


# official_state_dicts.json: the layouts of the official models, and the presets they must be recognised as
RECOGNISED = {
    "restormer": ["deraining", "motion_deblurring", "single_image_defocus_deblurring"],
    "restormer_gray_denoise": [f"gaussian_gray_denoising_{level}" for level in ("blind", "sigma15", "sigma25", "sigma50")],
    "restormer_dual_pixel": ["dual_pixel_defocus_deblurring"],
    "mst_plus_plus": ["mst_plus_plus"],
    "mst_s": ["mst_s"],
    "mst_m": ["mst_m"],
    "mst_l": ["mst_l"],
}


@pytest.mark.parametrize("entry", sorted(RECOGNISED))
def test_official_layouts_are_recognised(entry):
    state = {key: torch.empty(shape, device="meta") for key, shape in official_layouts()[entry]["state_dict"]}
    assert [p.name for p in recognise_preset(state)] == RECOGNISED[entry]


def test_bias_free_colour_layout_is_the_denoisers():
    with torch.device("meta"):
        state = glmha.create_model("restormer", layer_norm_type="BiasFree").state_dict()
    assert [p.name for p in recognise_preset(state)] == ["real_denoising"] + [
        f"gaussian_color_denoising_{level}" for level in ("blind", "sigma15", "sigma25", "sigma50")]


def test_other_layouts_match_nothing():
    state = glmha.create_model("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).state_dict()
    assert recognise_preset(state) == []
    with torch.device("meta"):
        glmha_state = glmha.create_model("restormer", attention="glmha").state_dict()
    assert recognise_preset(glmha_state) == []


def test_preset_table_lists_every_file_and_command():
    table = preset_table()
    for preset in PRESETS.values():
        assert f"| `{preset.release_file}` | `{preset.name}` |" in table and preset.example in table


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'derain'; available"):
        get_preset("derain")


def test_readme_has_the_preset_table():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert preset_table() in readme
