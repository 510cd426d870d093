"""Read depth: files keep their precision, or are read at 8 bits exactly as the official scripts read them."""
import cv2
import numpy as np
import pytest

from glmha import InputError
from glmha.data.hyperspectral import read_rgb
from glmha.io.images import read_image_and_depth
from glmha.models.presets import get_preset


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "deep.png"), (rng.random((20, 30, 3)) * 65535).astype(np.uint16))
    cv2.imwrite(str(tmp_path / "plain.jpg"), (rng.random((20, 30, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "float.tiff"), rng.random((20, 30, 3)).astype(np.float32))
    return tmp_path


def official_load_img(path):
    """Restormer's utils.load_img: cv2.imread's 8-bit colour read, BGR to RGB, / 255."""
    return np.float32(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)) / 255.0


def official_mst_plus_plus_rgb(path):
    """MST++ predict_code/test.py: cv2.imread, BGR to RGB, float32, min-max normalised."""
    rgb = np.float32(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
    return ((rgb - rgb.min()) / (rgb.max() - rgb.min())).transpose(2, 0, 1)


@pytest.mark.parametrize("name", ["deep.png", "plain.jpg"])
def test_read_depth_8_is_the_official_read(files, name):
    image, depth = read_image_and_depth(files / name, read_depth="8")
    assert depth == 8
    np.testing.assert_array_equal(image[0].numpy().transpose(1, 2, 0), official_load_img(files / name))


def test_native_read_depth_keeps_sixteen_bits(files):
    image, depth = read_image_and_depth(files / "deep.png")
    stored = cv2.cvtColor(cv2.imread(str(files / "deep.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert depth == 16
    np.testing.assert_allclose(image[0].numpy().transpose(1, 2, 0), stored / 65535.0, rtol=0, atol=1e-7)


def test_unknown_read_depth_is_refused(files):
    with pytest.raises(InputError, match="read depth must be one of"):
        read_image_and_depth(files / "deep.png", read_depth="12")


def test_single_image_defocus_preset_reads_as_its_official_test_script():
    assert get_preset("single_image_defocus_deblurring").read_depth == "8"
    assert get_preset("dual_pixel_defocus_deblurring").read_depth == "native"  # load_img16


@pytest.mark.parametrize("name", ["deep.png", "plain.jpg"])
def test_rgb_for_spectral_models_read_as_the_official_mst_plus_plus_script(files, name):
    np.testing.assert_array_equal(read_rgb(files / name, read_depth="8"), official_mst_plus_plus_rgb(files / name))


def test_rgb_for_spectral_models_keeps_sixteen_bit_and_float_precision(files):
    assert read_rgb(files / "plain.jpg", read_depth="native").tobytes() == official_mst_plus_plus_rgb(files / "plain.jpg").tobytes()
    deep = read_rgb(files / "deep.png", read_depth="native")
    assert len(np.unique(deep)) > 1000 > len(np.unique(read_rgb(files / "deep.png", read_depth="8")))
    stored = np.float32(cv2.cvtColor(cv2.imread(str(files / "deep.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB))
    np.testing.assert_array_equal(deep, ((stored - stored.min()) / (stored.max() - stored.min())).transpose(2, 0, 1))
    assert read_rgb(files / "float.tiff", read_depth="native").shape == (3, 20, 30)
