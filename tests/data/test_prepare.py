"""``glmha prepare``: the official patch preparation on small datasets written in the official layouts."""
import cv2
import numpy as np
import pytest

from glmha.data import prepare as prep
from glmha.data.restoration import DatasetError


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def _random(shape, seed, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=np.int64).astype(dtype)


def test_overlap_grid_matches_the_official_positions():
    # np.arange(0, size - patch, patch - overlap) then size - patch: a GoPro frame (720 x 1280) gives 2 x 4 patches
    assert prep.overlap_grid(720, 512, 256) == [0, 208]
    assert prep.overlap_grid(1280, 512, 256) == [0, 256, 512, 768]
    assert prep.overlap_grid(3000, 512, 128) == [0, 384, 768, 1152, 1536, 1920, 2304, 2488]
    assert prep.overlap_grid(512, 512, 96) == [0]
    with pytest.raises(ValueError, match="smaller than the 512 px patch"):
        prep.overlap_grid(500, 512, 96)


def test_dpdd_patch_origins_on_a_dpdd_frame():
    """1120 x 1680, patch 512, stride 204: a 3 x 6 grid that fits, the right column moved to 1168, the bottom row
    moved to 608, and the corner (608, 1168), which is first reached (and taken) in the top row."""
    origins = prep.dpdd_patch_origins(1120, 1680)
    grid = {(r, c) for r in (0, 204, 408) for c in (0, 204, 408, 612, 816, 1020)}
    right = {(r, 1168) for r in (0, 204, 408)}
    bottom = {(608, c) for c in (0, 204, 408, 612, 816, 1020)}
    assert len(origins) == 28 and set(origins) == grid | right | bottom | {(608, 1168)}
    assert origins[6:8] == [(0, 1168), (608, 1168)]


def test_sharpness_filter_drops_the_flattest_patches():
    rng = np.random.default_rng(0)
    textured = [rng.integers(0, 65536, (32, 32, 3)).astype(np.uint16) for _ in range(7)]
    flat = [np.full((32, 32, 3), 1000 * k, np.uint16) for k in (1, 2, 3)]
    patches = textured[:3] + [flat[0]] + textured[3:] + flat[1:]
    kept = prep.sharpest_patches(patches, 0.3)  # int(0.3 * 10) = 3 dropped
    assert kept == [0, 1, 2, 4, 5, 6, 7]


def test_prepare_gopro_and_resume(tmp_path, monkeypatch):
    src, out = tmp_path / "Downloads" / "GoPro", tmp_path / "Datasets"
    frames = {name: (_random((600, 700, 3), i), _random((600, 700, 3), 10 + i)) for i, name in enumerate(["GOPR_2", "GOPR_10"])}
    for name, (blurry, sharp) in frames.items():
        _write(src / "input" / f"{name}.png", blurry)
        _write(src / "target" / f"{name}.png", sharp)
    _write(out / "test" / "GoPro" / "input" / "t1.png", _random((300, 400, 3), 20))
    _write(out / "test" / "GoPro" / "target" / "t1.png", _random((300, 400, 3), 21))

    real_run = prep._grid_job
    calls = []

    def failing_after_first(*args, **kwargs):
        job = real_run(*args, **kwargs)
        def run():
            if calls:
                raise KeyboardInterrupt  # killed while cutting the second frame
            calls.append(job.key)
            return job.run()
        return prep.Job(job.key, run)

    monkeypatch.setattr(prep, "_grid_job", failing_after_first)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare("gopro", src, out, progress=False)
    monkeypatch.setattr(prep, "_grid_job", real_run)
    report = prep.prepare("gopro", src, out, progress=False)
    assert report.skipped == 1 and report.done == 2  # the second frame and the validation crop

    crops = out / "train" / "GoPro"
    names = sorted(p.name for p in (crops / "input_crops").iterdir())
    assert names == sorted(f"{n}-{k}.png" for n in frames for k in range(1, 5))  # rows [0, 88] x cols [0, 188]
    blurry, sharp = frames["GOPR_10"]
    np.testing.assert_array_equal(cv2.imread(str(crops / "input_crops" / "GOPR_10-2.png")), blurry[0:512, 188:700])
    np.testing.assert_array_equal(cv2.imread(str(crops / "target_crops" / "GOPR_10-3.png")), sharp[88:600, 0:512])
    val = cv2.imread(str(out / "val" / "GoPro" / "input_crops" / "t1.png"))
    np.testing.assert_array_equal(val, _random((300, 400, 3), 20)[22:278, 72:328])
    assert not list(crops.rglob("*.tmp"))
    assert prep.prepare("gopro", src, out, progress=False).skipped == 3  # all done: nothing is cut again


def test_prepare_sidd_pairs_noisy_and_ground_truth(tmp_path):
    src = tmp_path / "SIDD"
    for scene in ("0001_001_S6", "0002_001_S6"):
        _write(src / scene / f"{scene[:4]}_GT_SRGB_010.PNG", _random((600, 600, 3), int(scene[:4])))
        _write(src / scene / f"{scene[:4]}_NOISY_SRGB_010.PNG", _random((600, 600, 3), 100 + int(scene[:4])))
    prep.prepare("sidd", src, tmp_path / "Datasets", progress=False)
    folder = tmp_path / "Datasets" / "train" / "SIDD"
    assert len(list((folder / "input_crops").iterdir())) == 8
    noisy = cv2.imread(str(folder / "input_crops" / "0002_NOISY_SRGB_010-4.png"))
    np.testing.assert_array_equal(noisy, _random((600, 600, 3), 102)[88:600, 88:600])
    clean = cv2.imread(str(folder / "target_crops" / "0002_NOISY_SRGB_010-4.png"))  # named after the noisy file
    np.testing.assert_array_equal(clean, _random((600, 600, 3), 2)[88:600, 88:600])


def test_prepare_dfwb_keeps_small_images_whole(tmp_path):
    src = tmp_path / "Downloads"
    _write(src / "DIV2K" / "0001.png", _random((900, 1000, 3), 1))
    _write(src / "Flickr2K" / "000001.png", _random((700, 1200, 3), 2))  # one side <= 800: kept whole
    _write(src / "WaterlooED" / "00001.bmp", _random((300, 400, 3), 3))
    _write(src / "BSD400" / "test_001.png", _random((180, 180, 3), 4))
    prep.prepare("dfwb", src, tmp_path / "Datasets", progress=False)
    out = tmp_path / "Datasets" / "train" / "DFWB"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"DIV2K-0001-{k}.png" for k in range(1, 7)] + ["Flickr2K-000001.png", "WaterlooED-00001.png", "BSD400-test_001.png"])
    np.testing.assert_array_equal(cv2.imread(str(out / "DIV2K-0001-6.png")), _random((900, 1000, 3), 1)[388:900, 488:1000])
    with pytest.raises(DatasetError, match="DFWB needs .*WaterlooED"):
        (src / "WaterlooED" / "00001.bmp").unlink()
        (src / "WaterlooED").rmdir()
        prep.prepare("dfwb", src, tmp_path / "other", progress=False)


def test_prepare_dpdd_sixteen_bit_with_filter(tmp_path):
    src = tmp_path / "DPDD"
    for split, shape in (("train", (700, 800, 3)), ("val", (300, 320, 3))):
        for k, view in enumerate(("inputL", "inputR", "inputC", "target")):
            _write(src / split / split / view / "1P0A1.png", _random(shape, 10 * k + len(split), np.uint16))  # official nesting
    prep.prepare("dpdd", src, tmp_path / "Datasets", progress=False)
    train = tmp_path / "Datasets" / "train" / "DPDD"
    # 700 x 800: origins (0,0) (0,204) (0,288) (188,288) (188,0) (188,204); int(0.3 * 6) = 1 dropped
    origins = prep.dpdd_patch_origins(700, 800)
    assert origins == [(0, 0), (0, 204), (0, 288), (188, 288), (188, 0), (188, 204)]
    written = sorted((train / "target_crops").iterdir())
    assert [p.name for p in written] == [f"1P0A1-{k}.png" for k in range(1, 6)]
    target = _random((700, 800, 3), 30 + 5, np.uint16)
    crops = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in written]
    assert all(c.dtype == np.uint16 for c in crops)
    positions = [next(i for i, (r, c) in enumerate(origins) if np.array_equal(crop, target[r:r + 512, c:c + 512])) for crop in crops]
    assert positions == sorted(positions) and len(set(positions)) == 5  # in order, one dropped
    val = cv2.imread(str(tmp_path / "Datasets" / "val" / "DPDD" / "inputC_crops" / "1P0A1.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(val, _random((300, 320, 3), 20 + 3, np.uint16)[22:278, 32:288])


def test_prepare_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preparation task 'nope'"):
        prep.prepare("nope", tmp_path, tmp_path)
    with pytest.raises(DatasetError, match="source folder not found"):
        prep.prepare("gopro", tmp_path / "missing", tmp_path, progress=False)
    with pytest.raises(DatasetError, match="no DPDD train split"):
        prep.prepare("dpdd", tmp_path, tmp_path, progress=False)
