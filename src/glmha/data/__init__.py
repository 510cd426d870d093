
# Spectral data: the CASSI forward model, hyperspectral files and built-in synthetic scenes.
from . import cassi, hyperspectral, synthetic_hsi  # noqa: F401,E402
from .cassi import CASSI  # noqa: E402
from .hyperspectral import ARAD1K, CASSIPatches, CubeFolder, load_cave_scenes, load_kaist_scenes  # noqa: E402
from .synthetic_hsi import SyntheticHSI, synthetic_scene  # noqa: E402

# Restoration data: datasets in the official layouts, synthetic degradations of real photographs.
from . import degradations, restoration  # noqa: F401,E402
from .restoration import (  # noqa: E402
    DatasetError, DNDImages, InputImages, NoisyImageFolder, PairedImageFolder, SIDDBlocks, SyntheticPairs, read_image, write_synthetic_folder,
)
