"""Presets for the official release files: the settings each one was trained and tested with.

A preset names one released checkpoint (``deraining.pth``, ``mst_l.pth``, ...) and holds
what its official code builds it with (the options file or the test script) and the steps
the official test script takes around the network: the grey denoisers read their inputs with
OpenCV's grey conversion, the dual-pixel model takes the left and right views stacked into 6
channels. ``glmha.load_model(path, preset=...)`` and ``--preset`` on the command line use
them; a plain state dict given without any description is recognised from its keys and
shapes (:func:`recognise_preset`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch


@dataclass(frozen=True)
class Preset:
    """One official release file and how the official code builds and runs it."""

    name: str
    release_file: str  # the file name of the official release
    model: str  # glmha.create_model name
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    source: str = ""  # where the settings come from in the official code
    grey_conversion: str | None = None  # "opencv": colour inputs read with cv2.IMREAD_GRAYSCALE
    example: str = ""  # one command that runs it
    # How the official test script reads input files: "native" keeps their precision, "8" is
    # cv2.imread's 8-bit colour read (a 16-bit file gives its high byte).
    read_depth: str = "native"

    @property
    def dual_pixel(self) -> bool:
        return bool(self.model_kwargs.get("dual_pixel_task", False))

    def same_except_name(self, other: "Preset") -> bool:
        return (self.model, self.model_kwargs, self.grey_conversion) == (other.model, other.model_kwargs, other.grey_conversion)


def _restormer(channels: int = 3, layer_norm_type: str = "WithBias", dual_pixel: bool = False) -> dict[str, Any]:
    # The network_g section of the official options files (Restormer/*/Options/*.yml).
    return {
        "inp_channels": 6 if dual_pixel else channels, "out_channels": channels, "dim": 48,
        "num_blocks": [4, 6, 6, 8], "num_refinement_blocks": 4, "heads": [1, 2, 4, 8],
        "ffn_expansion_factor": 2.66, "bias": False, "layer_norm_type": layer_norm_type,
        "dual_pixel_task": dual_pixel,
    }


def _restormer_presets() -> list[Preset]:
    presets = [
        Preset("deraining", "deraining.pth", "restormer", _restormer(), "deraining",
               "Deraining/Options/Deraining_Restormer.yml", example="glmha restore rainy/ --preset deraining --checkpoint deraining.pth --output derained/"),
        Preset("motion_deblurring", "motion_deblurring.pth", "restormer", _restormer(), "motion deblurring (GoPro)",
               "Motion_Deblurring/Options/Deblurring_Restormer.yml",
               example="glmha restore blurry/ --preset motion_deblurring --checkpoint motion_deblurring.pth --output sharp/"),
        Preset("single_image_defocus_deblurring", "single_image_defocus_deblurring.pth", "restormer", _restormer(),
               "defocus deblurring, single image (DPDD inputC)", "Defocus_Deblurring/Options/DefocusDeblur_Single_8bit_Restormer.yml",
               example="glmha restore DPDD/test/inputC/ --preset single_image_defocus_deblurring --checkpoint single_image_defocus_deblurring.pth --output out/",
               read_depth="8"),  # trained on 8-bit DPDD; test_single_image_defocus_deblur.py reads the 16-bit inputC at 8 bits
        Preset("dual_pixel_defocus_deblurring", "dual_pixel_defocus_deblurring.pth", "restormer", _restormer(dual_pixel=True),
               "defocus deblurring, dual pixel (DPDD inputL + inputR, 16-bit)", "Defocus_Deblurring/Options/DefocusDeblur_DualPixel_16bit_Restormer.yml",
               example="glmha restore DPDD/test/ --preset dual_pixel_defocus_deblurring --checkpoint dual_pixel_defocus_deblurring.pth --output out/"),
        Preset("real_denoising", "real_denoising.pth", "restormer", _restormer(layer_norm_type="BiasFree"), "real denoising (SIDD)",
               "Denoising/Options/RealDenoising_Restormer.yml",
               example="glmha restore noisy/ --preset real_denoising --checkpoint real_denoising.pth --output denoised/"),
    ]
    for colour, channels, options in (("color", 3, "GaussianColorDenoising"), ("gray", 1, "GaussianGrayDenoising")):
        grey = "opencv" if channels == 1 else None  # the official test script reads cv2.IMREAD_GRAYSCALE
        for level in ("blind", "sigma15", "sigma25", "sigma50"):
            suffix = "" if level == "blind" else level.replace("sigma", "Sigma")
            name = f"gaussian_{colour}_denoising_{level}"
            presets.append(Preset(
                name, f"{name}.pth", "restormer", _restormer(channels, "BiasFree"),
                f"Gaussian {'colour' if channels == 3 else 'grey'} denoising, {'blind' if level == 'blind' else 'sigma ' + level[5:]}",
                f"Denoising/Options/{options}_Restormer{suffix}.yml", grey,
                example=f"glmha restore noisy/ --preset {name} --checkpoint {name}.pth --output denoised/",
            ))
    return presets


PRESETS: dict[str, Preset] = {p.name: p for p in [
    *_restormer_presets(),
    Preset("mst_plus_plus", "mst_plus_plus.pth", "mst_plus_plus", {}, "RGB to 31-band hyperspectral (NTIRE 2022)",
           "MST-plus-plus predict_code/architecture: MST_Plus_Plus(in_channels=3, out_channels=31, n_feat=31, stage=3)",
           example="glmha reconstruct photos/ --preset mst_plus_plus --checkpoint mst_plus_plus.pth --output cubes/"),
    *(Preset(name, f"{name}.pth", name, {}, f"CASSI snapshot reconstruction, {name.upper().replace('_', '-')} (28 bands)",
             f"MST simulation/test_code/architecture: MST(dim=28, stage=2, num_blocks={list(blocks)})",
             example=f"glmha reconstruct meas/ --mask mask.mat --preset {name} --checkpoint {name}.pth --output cubes/")
      for name, blocks in (("mst_s", (2, 2, 2)), ("mst_m", (2, 4, 4)), ("mst_l", (4, 7, 5)))),
]}


def list_presets() -> list[str]:
    """Names accepted by ``preset=`` / ``--preset``."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; available: {list_presets()}") from None


def _layout(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def recognise_preset(state: Mapping[str, torch.Tensor]) -> list[Preset]:
    """The presets whose model has exactly the keys and shapes of ``state`` (built on the meta device, no memory).

    Several presets share one architecture (deraining and motion deblurring, say): then all of
    them are returned, in the order of :data:`PRESETS`.
    """
    from . import create_model

    wanted = _layout(state)
    matches, layouts = [], {}
    for preset in PRESETS.values():
        key = (preset.model, repr(sorted(preset.model_kwargs.items())))
        if key not in layouts:
            with torch.device("meta"):
                layouts[key] = _layout(create_model(preset.model, **preset.model_kwargs).state_dict())
        if layouts[key] == wanted:
            matches.append(preset)
    return matches


def preset_table() -> str:
    """Markdown: official file -> preset -> command (the README's table)."""
    rows = ["| official file | preset | task | command |", "| --- | --- | --- | --- |"]
    rows += [f"| `{p.release_file}` | `{p.name}` | {p.task} | `{p.example}` |" for p in PRESETS.values()]
    return "\n".join(rows)
