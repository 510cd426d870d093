import json
import math

import numpy as np
import pytest
import torch

from glmha.cli import main
from glmha.experiments.demo import BUDGETS
from glmha.experiments.study import RunScores, build_variant_model, parse_variant, run_study, study_tasks
from glmha.experiments.study_report import summarise, t_interval


def test_variant_specs():
    v = parse_variant("glmha:rank_ratio=0.25,calibration=false")
    assert (v.attention, v.options, v.ranks_share) == ("glmha", {"rank_ratio": 0.25, "calibration": False}, None)
    assert parse_variant("glmha:ranks=suggest").ranks_share == 0.95
    assert parse_variant("glmha:ranks=suggest@0.9").ranks_share == 0.9
    assert parse_variant("csa").options == {}
    for bad, message in [("nope", "unknown attention"), ("glmha:rank_ratio", "key=value"), ("csa:ranks=suggest", "glmha only"),
                         ("glmha:ranks=all", "suggest"), ("glmha:ranks=suggest@1.5", r"\(0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            parse_variant(bad)


def test_t_interval_is_students_t():
    # n = 4, sd = sqrt(5/3); t(0.975, 3) = 3.182446 from the tables
    assert t_interval([1.0, 2.0, 3.0, 4.0]) == pytest.approx(3.182446 * math.sqrt(5 / 3) / 2, rel=1e-6)
    # n = 3: t(0.975, 2) = 4.302653
    assert t_interval([0.1, -0.2, 0.4]) == pytest.approx(4.302653 * np.std([0.1, -0.2, 0.4], ddof=1) / math.sqrt(3), rel=1e-6)
    assert math.isnan(t_interval([1.0]))


def test_summary_pairs_differences_by_seed():
    def run(variant, seed, psnr):
        return RunScores("deraining", variant, seed, {"psnr": psnr}, [], 10, 20, 1.0)

    runs = [run("csa", 0, 30.0), run("csa", 1, 31.0), run("csa", 2, 29.0),
            run("glmha", 0, 29.9), run("glmha", 1, 31.2), run("glmha", 2, 28.8)]
    rows = summarise(runs, "csa", {"psnr": True})
    glmha = next(r for r in rows if r["variant"] == "glmha")["metrics"]["psnr"]
    assert glmha["mean"] == pytest.approx(np.mean([29.9, 31.2, 28.8]))
    assert glmha["std"] == pytest.approx(np.std([29.9, 31.2, 28.8], ddof=1))
    # paired: the differences per seed (-0.1, +0.2, -0.2), not the difference of unpaired spreads
    assert glmha["difference"]["values"] == pytest.approx([-0.1, 0.2, -0.2])
    assert glmha["difference"]["ci95"] == pytest.approx(t_interval([-0.1, 0.2, -0.2]))
    assert "difference" not in next(r for r in rows if r["variant"] == "csa")["metrics"]["psnr"]


def test_variants_of_a_seed_share_the_other_layers():
    config = study_tasks(BUDGETS["tiny"], 0, ["deraining"])[0].config
    csa = build_variant_model(config, parse_variant("csa"), seed=3)
    glmha = build_variant_model(config, parse_variant("glmha"), seed=3)
    other = build_variant_model(config, parse_variant("csa"), seed=4)
    shared = {k: v for k, v in csa.state_dict().items() if ".attn." not in k}
    glmha_state = glmha.state_dict()
    assert shared and all(torch.equal(v, glmha_state[k]) for k, v in shared.items())
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in shared.items())


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    result = run_study(out, ["deraining"], ["csa", "glmha", "glmha:ranks=suggest"], 2, "tiny", progress=False,
                       log=lambda _: None, test_images=2)
    return out, result


def test_tiny_study_writes_the_report(tiny_study):
    out, result = tiny_study
    payload = json.loads(result.json.read_text())
    assert payload["seeds"] == [0, 1] and payload["test_images"] == 2
    rows = {r["variant"]: r for r in payload["rows"]}
    assert set(rows) == {"csa", "glmha", "glmha:ranks=suggest"}
    assert rows["glmha"]["macs"] < rows["csa"]["macs"]
    for row in rows.values():
        assert all(math.isfinite(v) for v in row["metrics"]["psnr"]["values"])
    runs = {(r["variant"], r["seed"]): r for r in payload["runs"]}
    assert runs[("glmha:ranks=suggest", 0)]["ranks"]  # per-layer ranks from the trained CSA model of the seed
    diff = rows["glmha"]["metrics"]["psnr"]["difference"]["values"]
    expected = [runs[("glmha", s)]["metrics"]["psnr"] - runs[("csa", s)]["metrics"]["psnr"] for s in (0, 1)]
    assert diff == pytest.approx(expected)
    md = result.markdown.read_text()
    assert "glmha - csa" not in md and "psnr - csa (95 % CI)" in md
    assert result.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_resumes_without_training_again(tiny_study, monkeypatch):
    out, result = tiny_study
    before = json.loads(result.json.read_text())

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("glmha.engine.trainer.train", no_training)
    again = run_study(out, ["deraining"], ["csa", "glmha", "glmha:ranks=suggest"], 2, "tiny", progress=False,
                      log=lambda _: None, test_images=2)
    assert json.loads(again.json.read_text())["rows"] == before["rows"]


def test_study_command_errors(tmp_path, capsys):
    assert main(["study", "--seeds", "0", "--output", str(tmp_path)]) == 1
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert main(["study", "--variants", "csa", "nope", "--output", str(tmp_path)]) == 1
    assert "unknown attention 'nope'" in capsys.readouterr().err
    assert main(["study", "--tasks", "inpainting", "--output", str(tmp_path), "--budget", "tiny"]) == 1
    assert "unknown study task 'inpainting'" in capsys.readouterr().err
    assert main(["study", "--iterations", "-5", "--output", str(tmp_path), "--budget", "tiny"]) == 1
    assert "iterations must be a positive integer, got -5" in capsys.readouterr().err


def test_study_iterations_replace_the_budgets_and_a_folder_keeps_its_settings(tiny_study, tmp_path):
    out, _ = tiny_study
    # the finished runs of another number of iterations are not mixed in silently
    with pytest.raises(ValueError, match=r"trained with other settings \(.*train.total_iters.*\).*another --output"):
        run_study(out, ["deraining"], ["csa", "glmha"], 2, "tiny", progress=False, log=lambda _: None, test_images=2, iterations=3)
    # nor the scores of another held-out set
    with pytest.raises(ValueError, match=r"trained with other settings \(data\.test\..*\).*another --output"):
        run_study(out, ["deraining"], ["csa", "glmha"], 2, "tiny", progress=False, log=lambda _: None, test_images=3)
    result = run_study(tmp_path, ["deraining"], ["csa"], 1, "tiny", progress=False, log=lambda _: None, test_images=1, iterations=2)
    payload = json.loads(result.json.read_text())
    assert payload["iterations"] == 2 and "(2 iterations per model" in result.markdown.read_text()
    saved = json.loads((tmp_path / "runs" / "deraining" / "csa" / "seed0" / "study_config.json").read_text())
    assert saved["train"]["total_iters"] == 2 and saved["scheduler"]["T_max"] == 2
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        run_study(tmp_path, ["deraining"], ["csa"], 1, "tiny", progress=False, log=lambda _: None, iterations=0)
