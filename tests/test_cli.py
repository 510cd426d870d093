import pytest

from glmha.cli import main


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
