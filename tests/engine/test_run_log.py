"""A run's messages (glmha.engine.run_log): train.log holds each start's config and versions and every console line."""
from glmha.engine import train

from .conftest import DERAIN


def test_train_log_has_config_versions_and_console_lines(tmp_path, capsys, monkeypatch):
    import sys

    import yaml

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as without the tensorboard extra
    train(DERAIN, ["train.progress=false"], variant="smoke", output_dir=tmp_path, max_steps=3)
    train(DERAIN, ["train.progress=false"], variant="smoke", output_dir=tmp_path)
    console = capsys.readouterr().out.strip().splitlines()
    log = (tmp_path / "train.log").read_text()
    assert log.count("==== glmha train started") == 2 and "versions: glmha " in log and ", torch " in log and "device cpu" in log
    header = log.split("==== glmha train started")[1]
    config_text = header.split("config:\n", 1)[1].split("\niteration", 1)[0]
    assert yaml.safe_load(config_text)["model"]["dim"] == 8
    assert "tensorboard is not installed" in console[0] and not (tmp_path / "tensorboard").exists()
    assert any(line.startswith("resuming from ") for line in console)
    for line in console:  # every console line is in the log
        assert line in log
    assert "iteration 1: loss " in log and "iteration 6: psnr " in log and "finished: 6 iterations" in log
