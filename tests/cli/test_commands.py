"""The command line as a whole: one module per command, help, one-line errors."""
import subprocess
import sys

import pytest

import glmha.cli
from glmha.cli import main


def test_every_command_is_a_module_with_help_examples_arguments_and_run():
    for name, command in glmha.cli.COMMANDS.items():
        assert command.__name__ == f"glmha.cli.{name}"
        assert command.HELP and command.EXAMPLES.split()[:2] == ["glmha", name]
        assert callable(command.add_arguments) and callable(command.run)


def test_importing_the_cli_leaves_the_commands_libraries_unloaded():
    # the run functions import what they call: the engine and the experiments only load for their commands
    code = "import sys, glmha.cli; print(sorted(m for m in sys.modules if m.startswith(('glmha.engine', 'glmha.experiments'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_complexity_table_matches_official_restormer_size(capsys):
    assert main(["complexity", "--models", "restormer", "--attentions", "csa", "--size", "128", "128"]) == 0
    out = capsys.readouterr().out
    assert "| restormer | csa | 26.127 | 38.72 | 77.44 |" in out


def test_unknown_model_is_one_clear_line(capsys):
    assert main(["complexity", "--models", "resnet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("glmha complexity: error: unknown model 'resnet'") and "\n" not in err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["complexity", "--help"])
    assert info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_prepare_and_score_errors_are_one_line(tmp_path, capsys):
    assert main(["prepare", "gopro", "--source", str(tmp_path / "missing"), "--output", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("glmha prepare: error: source folder not found") and "\n" not in err
    (tmp_path / "restored").mkdir()
    assert main(["score", "deraining", "--restored", str(tmp_path / "restored"), "--target", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("glmha score: error: no .png") and "\n" not in err
    assert main(["score", "sidd", "--restored", str(tmp_path / "none.mat")]) == 1
    assert "glmha score: error: the sidd protocol needs ValidationGtBlocksSrgb.mat" in capsys.readouterr().err
    assert main(["score", "sidd", "--restored", str(tmp_path / "none.mat"), "--target", str(tmp_path / "gt.mat")]) == 1
    assert "glmha score: error: no such file or folder" in capsys.readouterr().err
