"""The config schema: each kind of bad value gives one line naming the key, the value and what is allowed."""
import pytest

from glmha.engine import ConfigError, load_config

from .conftest import CONFIGS

DERAIN = CONFIGS / "restormer" / "deraining_csa.yaml"


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size = 0: must be an integer > 0"),
    ("train.val_every=-5", "train.val_every = -5: must be an integer > 0"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints = 0: must be an integer > 0"),
    ("train.stages=[{iters: 0}]", "train.stages[0].iters = 0: must be an integer > 0"),
    ("train.batch_size=2.5", "train.batch_size = 2.5: must be an integer"),
    ("train.batch_size='8'", "train.batch_size = '8': must be an integer"),
    ("train.grad_clip=0", "train.grad_clip = 0: must be a number > 0"),
    ("train.precision=fp8", "train.precision = 'fp8': must be one of 'fp32', 'bf16' or 'fp16'"),
    ("train.loss=l3", "train.loss = 'l3': must be one of ['charbonnier', 'l1', 'mrae', 'mse', 'relative_l1', 'rmse']"),
    ("train.progress=1", "train.progress = 1: must be true or false"),
    ("train.learning_rate=1", "train.learning_rate: unknown key; accepted: total_iters, batch_size"),
    ("train.stages=[{iters: 2, size: 8}]", "train.stages[0].size: unknown key; accepted: iters, patch_size, batch_size"),
    ("train.total_iters=10", "train: stages last 300000 iterations in all, but total_iters is 10"),
    ("train.mixup={beta: 0}", "train.mixup.beta = 0: must be a number > 0"),
    ("evaluate.tile=0", "evaluate.tile = 0: must be an integer > 0"),
    ("evaluate.sets=Test100", "evaluate.sets = 'Test100': must be a list"),
    ("seed=-1", "seed = -1: must be an integer >= 0"),
    ("task=denoise", "task = 'denoise': must be one of ['cassi', "),
    ("task={name: deraining, protocl: x}", "task.protocl: unknown argument; accepted: protocol"),
    ("model.name=resnet", "model.name = 'resnet': must be one of ["),
    ("model.attention=dense", "model.attention = 'dense': must be one of ["),
    ("data.train.rooot=x", "data.train.rooot: unknown argument; accepted: root, "),
    ("data.train.type=folder", "data.train.type = 'folder': must be one of ["),
    ("data.extra={}", "data.extra: unknown key; accepted: train, val, test"),
    ("optimizer.name=Adamm", "optimizer.name = 'Adamm': must be one of "),
    ("optimizer.lr=3e-4", "optimizer.lr = '3e-4': must be a number > 0 (YAML reads 3e-4 as text: write 3.0e-4)"),
    ("optimizer.momentum=0.9", "optimizer.momentum: unknown argument; accepted: lr, betas"),
    ("scheduler.milestones=[5, 3]", "scheduler.milestones = [5, 3]: must be 1 increasing positive iteration(s)"),
    ("scheduler.phases=[{name: Cosine}]", "scheduler.phases[0].name = 'Cosine': must be one of "),
])
def test_bad_values_are_one_line_with_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(DERAIN, [override])
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text and "pydantic" not in text


def test_several_problems_report_the_first_and_count_the_rest():
    with pytest.raises(ConfigError, match=r"^train.batch_size = 0: must be an integer > 0 \(and 1 more problem\)$"):
        load_config(DERAIN, ["train.batch_size=0", "train.log_every=0"])


def test_a_base_loop_is_detected(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\ntask: deraining\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"base configs form a loop: a.yaml -> b.yaml -> a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"base config not found: .*missing.yaml \(named by .*c.yaml\)"):
        load_config(tmp_path / "c.yaml")


def test_cli_reports_a_bad_value_in_one_line(capsys):
    from glmha.cli import main

    assert main(["train", str(DERAIN), "train.batch_size=0", "--smoke"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "glmha train: error: train.batch_size = 0: must be an integer > 0"
