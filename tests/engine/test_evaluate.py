"""``evaluate``: which checkpoint it reads, the official outputs it saves, and ``glmha score`` on those files."""
import numpy as np
import pytest
import scipy.io

from glmha.cli import main
from glmha.engine import evaluate, train

from .conftest import CONFIGS, QUIET

DERAIN = CONFIGS / "restormer" / "deraining_csa.yaml"


@pytest.fixture(scope="module")
def derain_run(tmp_path_factory):
    return train(DERAIN, QUIET, variant="smoke", output_dir=tmp_path_factory.mktemp("derain"))


def test_best_and_last_checkpoints(derain_run, tmp_path):
    from safetensors import safe_open

    best = derain_run.output_dir / "best.safetensors"
    with safe_open(str(best), "pt") as f:
        meta = f.metadata()
    assert int(meta["iteration"]) == derain_run.best["iteration"]
    assert float(meta["psnr"]) == pytest.approx(derain_run.best["psnr"])
    overrides = QUIET + [f"output_dir={derain_run.output_dir}"]
    last = evaluate(DERAIN, None, overrides, variant="smoke", output_dir=tmp_path / "a", progress=False)
    assert last.checkpoint == f"{derain_run.output_dir / 'model.safetensors'} (last, iteration 6)"
    chosen = evaluate(DERAIN, "best", overrides, variant="smoke", output_dir=tmp_path / "b", progress=False)
    assert chosen.checkpoint.startswith(f"{best} (best validation, iteration {meta['iteration']})")
    assert chosen.markdown.startswith("checkpoint: ")
    folder = evaluate(DERAIN, derain_run.output_dir, QUIET, variant="smoke", output_dir=tmp_path / "c", progress=False)
    assert folder.summary == last.summary


def _paired_overrides(root, protocol=None):
    extra = f", protocol: {protocol}" if protocol else ""
    return QUIET + [f"data.test={{Test: {{type: paired_folder, root: {root}{extra}}}}}"]


@pytest.mark.parametrize("protocol", ["deraining", "gopro_hide", "realblur"])
def test_saved_images_score_as_evaluated(derain_run, tmp_path, capsys, protocol):
    """evaluate --save-images writes the official PNGs; `glmha score` on them gives the evaluate numbers."""
    from glmha.data.restoration import write_synthetic_folder

    root = write_synthetic_folder(tmp_path / "Test", "deraining", num_images=3, image_size=48, seed=4)
    result = evaluate(DERAIN, derain_run.weights, _paired_overrides(root, protocol), variant="smoke", output_dir=tmp_path / "eval",
                      save_images=True, progress=False)
    saved = tmp_path / "eval" / "Test"
    assert sorted(p.name for p in saved.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    code = main(["score", protocol, "--restored", str(saved), "--target", str(root / "target"), "--per-image", "--output", str(tmp_path / "s.csv")])
    assert code == 0
    lines = (tmp_path / "s.csv").read_text().splitlines()
    header = lines[0].split(",")
    for row, line in zip(result.per_image, lines[1:]):
        values = dict(zip(header, line.split(",")))
        assert float(values["psnr"]) == pytest.approx(row["psnr"], abs=1e-9)
        assert float(values["ssim"]) == pytest.approx(row["ssim"], abs=1e-9)


def test_sidd_idenoised_and_cassi_test_result(tmp_path):
    """SIDD: the float32 Idenoised.mat; CASSI: Test_result.mat with pred and truth; both score as evaluated."""
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (2, 2, 16, 16, 3), dtype=np.uint8)
    noisy = np.clip(gt.astype(int) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
    scipy.io.savemat(tmp_path / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": gt})
    scipy.io.savemat(tmp_path / "ValidationNoisyBlocksSrgb.mat", {"ValidationNoisyBlocksSrgb": noisy})
    config = CONFIGS / "restormer" / "real_denoising_csa.yaml"
    run = train(config, QUIET + ["train.total_iters=2", "train.stages=[{iters: 2, patch_size: 16, batch_size: 2}]"], variant="smoke",
                output_dir=tmp_path / "run")
    sets = (f"data.test={{SIDD: {{type: sidd_blocks, noisy_mat: {tmp_path}/ValidationNoisyBlocksSrgb.mat,"
            f" target_mat: {tmp_path}/ValidationGtBlocksSrgb.mat}}}}")
    result = evaluate(config, run.weights, QUIET + [sets], variant="smoke", output_dir=tmp_path / "eval", save_images=True, progress=False)
    idenoised = scipy.io.loadmat(tmp_path / "eval" / "SIDD" / "mat" / "Idenoised.mat")["Idenoised"]
    assert idenoised.shape == (2, 2, 16, 16, 3) and idenoised.dtype == np.float32
    assert (tmp_path / "eval" / "SIDD" / "png" / "0002_01.png").is_file()
    from glmha.engine.score import score_files

    rows, mean = score_files("sidd", tmp_path / "eval" / "SIDD" / "mat" / "Idenoised.mat", tmp_path / "ValidationGtBlocksSrgb.mat")
    assert [r["image"] for r in rows] == [r["image"] for r in result.per_image] == ["0001_01", "0001_02", "0002_01", "0002_02"]
    assert mean["psnr"] == pytest.approx(result.summary[0]["psnr"], abs=1e-9)
    assert mean["ssim"] == pytest.approx(result.summary[0]["ssim"], abs=1e-9)

    mst = CONFIGS / "mst" / "mst_l_cassi_csa.yaml"
    run = train(mst, QUIET, variant="smoke", output_dir=tmp_path / "mst")
    result = evaluate(mst, "best", QUIET + [f"output_dir={tmp_path / 'mst'}"], variant="smoke", output_dir=tmp_path / "mst_eval",
                      save_images=True, progress=False)
    assert set(result.summary[0]) == {"set", "images", "psnr", "ssim", "psnr_train_log", "ssim_train_log"}
    saved = scipy.io.loadmat(tmp_path / "mst_eval" / "synthetic" / "Test_result.mat")
    assert saved["pred"].shape == saved["truth"].shape == (2, 32, 32, 28)
    rows, mean = score_files("cassi", tmp_path / "mst_eval" / "synthetic" / "Test_result.mat")
    for key in ("psnr", "ssim", "psnr_train_log", "ssim_train_log"):
        assert mean[key] == pytest.approx(result.summary[0][key], abs=1e-6), key


def test_dnd_submission_files(tmp_path):
    import h5py

    rng = np.random.default_rng(1)
    (tmp_path / "DND" / "images_srgb").mkdir(parents=True)
    with h5py.File(tmp_path / "DND" / "info.mat", "w") as f:
        group = f.create_group("info")
        refs = []
        for i in range(2):
            with h5py.File(tmp_path / "DND" / "images_srgb" / f"{i + 1:04d}.mat", "w") as image:
                image["InoisySRGB"] = rng.random((40, 40, 3)).astype(np.float32).T
            tops = rng.integers(1, 20, 20).astype(float)
            refs.append(group.create_dataset(f"b{i}", data=np.stack([tops, tops, tops + 15, tops + 15])).ref)
        group.create_dataset("boundingboxes", data=np.array([refs], dtype=h5py.ref_dtype))
    config = CONFIGS / "restormer" / "real_denoising_csa.yaml"
    run = train(config, QUIET + ["train.total_iters=2", "train.stages=[{iters: 2, patch_size: 16, batch_size: 2}]"], variant="smoke",
                output_dir=tmp_path / "run")
    result = evaluate(config, run.weights, QUIET + [f"data.test={{DND: {{type: dnd, root: {tmp_path / 'DND'}, protocol: dnd}}}}"],
                      variant="smoke", output_dir=tmp_path / "eval", progress=False)
    assert result.summary[0]["note"].startswith("submission files in")
    submission = scipy.io.loadmat(tmp_path / "eval" / "DND" / "mat" / "0002.mat")
    assert submission["Idenoised"].shape == (1, 20) and submission["Idenoised"][0, 0].shape == (16, 16, 3)
    assert submission["Idenoised"][0, 0].dtype == np.float32 and str(submission["eval_version"][0]) == "1.0"
    assert bool(submission["israw"][0, 0]) is False


def test_evaluate_refuses_unwritable_output_and_unknown_protocol(derain_run, tmp_path):
    from glmha.engine import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write the results into"):
        evaluate(DERAIN, derain_run.weights, QUIET, variant="smoke", output_dir=blocker / "eval", progress=False)
    with pytest.raises(ConfigError, match="data.test.Test.protocol: unknown evaluation protocol 'nope'"):
        evaluate(DERAIN, derain_run.weights, _paired_overrides(tmp_path, "nope"), variant="smoke", output_dir=tmp_path / "e", progress=False)


def test_self_ensemble_in_evaluate(derain_run, tmp_path):
    """evaluate.ensemble (or ensemble=): the restored images are the x8 self-ensemble of the model's outputs."""
    import torch

    import glmha
    from glmha.engine import ConfigError
    from glmha.inference.ensemble import self_ensemble

    overrides = QUIET + [f"output_dir={derain_run.output_dir}"]
    plain = evaluate(DERAIN, None, overrides, variant="smoke", output_dir=tmp_path / "plain", progress=False)
    mean = evaluate(DERAIN, None, overrides + ["evaluate.ensemble=mean"], variant="smoke", output_dir=tmp_path / "mean", progress=False)
    median = evaluate(DERAIN, None, overrides, variant="smoke", output_dir=tmp_path / "median", progress=False, ensemble="median")
    assert plain.per_image != mean.per_image != median.per_image
    model = glmha.load_model(derain_run.weights).eval()
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        expected = self_ensemble(model, x, "mean")
    torch.testing.assert_close(glmha.restore(model, x, ensemble="mean"), expected, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="unknown evaluate options|ensemble"):
        evaluate(DERAIN, None, overrides + ["evaluate.ensemble=max"], variant="smoke", output_dir=tmp_path / "x", progress=False)


def test_cassi_refuses_the_self_ensemble(tmp_path):
    from glmha.engine import ConfigError

    with pytest.raises(ConfigError, match="self-ensemble does not apply to CASSI"):
        evaluate(CONFIGS / "mst" / "mst_l_cassi_csa.yaml", None, QUIET + ["evaluate.ensemble=mean"], variant="smoke",
                 output_dir=tmp_path / "e", progress=False)
