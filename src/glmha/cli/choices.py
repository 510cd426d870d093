"""The names the commands offer as choices and defaults, without importing the library.

Building the parser (``glmha --help``, a mistyped option) should not wait for PyTorch, and the
library modules that define these tables import it. So the command line keeps their names
here; ``tests/cli/test_startup.py`` checks that each list matches the table it names.
"""
from __future__ import annotations

# glmha.models.presets.PRESETS, in its order (the README's table)
PRESETS = (
    "deraining", "motion_deblurring", "single_image_defocus_deblurring", "dual_pixel_defocus_deblurring", "real_denoising",
    "gaussian_color_denoising_blind", "gaussian_color_denoising_sigma15", "gaussian_color_denoising_sigma25",
    "gaussian_color_denoising_sigma50", "gaussian_gray_denoising_blind", "gaussian_gray_denoising_sigma15",
    "gaussian_gray_denoising_sigma25", "gaussian_gray_denoising_sigma50", "mst_plus_plus", "mst_s", "mst_m", "mst_l",
)
# glmha.engine.tasks.LOSSES
LOSSES = ("charbonnier", "l1", "mrae", "mse", "relative_l1", "rmse")
# glmha.metrics.protocols.PROTOCOLS that have metrics (dnd is scored online)
SCORED_PROTOCOLS = ("cassi", "deraining", "dpdd", "gaussian_denoising", "gopro_hide", "ntire2022", "realblur", "sidd")
# glmha.experiments.demo.BUDGETS
BUDGETS = ("tiny", "small", "default", "long")
# glmha.experiments.study.DEFAULT_TASKS and DEFAULT_VARIANTS
STUDY_TASKS = ("deraining", "rgb_to_hsi", "cassi", "gaussian_denoising")
STUDY_VARIANTS = ("csa", "glmha")
# glmha.inference.export.FORMATS
EXPORT_FORMATS = ("onnx", "torchscript")
# glmha.inference.reconstruction.CUBE_FORMATS
CUBE_FORMATS = ("mat", "npy")
# glmha.analysis.eigen.SPECTRA
SPECTRA = ("singular", "eigen")
# glmha.data.prepare.PREPARE_TASKS
PREPARE_TASKS = ("dfwb", "dpdd", "gopro", "sidd")
