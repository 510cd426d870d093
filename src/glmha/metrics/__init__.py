
# Spectral reconstruction metrics (MST++ challenge and MST simulation definitions).
from . import spectral  # noqa: F401,E402
from .spectral import cassi_psnr, cassi_ssim, mrae, rmse, sam, spectral_metrics, spectral_psnr  # noqa: E402
