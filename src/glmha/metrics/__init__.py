
# Spectral reconstruction metrics (MST++ challenge and MST simulation definitions).
from . import spectral  # noqa: F401,E402
from .spectral import cassi_psnr, cassi_ssim, mrae, rmse, sam, spectral_metrics, spectral_psnr  # noqa: E402

# Image metrics: PSNR / SSIM on RGB or on MATLAB's Y channel (the restoration papers' protocol).
from . import image  # noqa: F401,E402
from .image import psnr, rgb_to_y, ssim  # noqa: E402
