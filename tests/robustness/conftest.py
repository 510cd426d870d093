"""Shared pieces of the robustness suite: tiny checkpoints, the CLI run in-process, and the outcome kinds."""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

import glmha
from glmha.cli import main

TINY_RESTORMER = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2]}
TINY_MST = {"dim": 8, "in_channels": 8, "out_channels": 8, "num_blocks": [1, 1, 1]}


@dataclass(frozen=True)
class Error:
    """A one-line error holding every one of ``words`` (case-insensitive)."""

    words: tuple[str, ...]

    def __init__(self, *words: str):
        object.__setattr__(self, "words", words)


@dataclass(frozen=True)
class Warns:
    """Success, with a warning holding every one of ``words``."""

    words: tuple[str, ...]

    def __init__(self, *words: str):
        object.__setattr__(self, "words", words)


def assert_words(text: str, words) -> None:
    for word in words:
        assert word.lower() in text.lower(), f"{word!r} not in {text!r}"


@pytest.fixture(scope="session")
def restormer_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoints") / "restormer.safetensors"
    return glmha.save_weights(glmha.create_model("restormer", **TINY_RESTORMER), path)


@pytest.fixture(scope="session")
def mst_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoints") / "mst.safetensors"
    return glmha.save_weights(glmha.create_model("mst_s", **TINY_MST), path)


@dataclass
class Run:
    code: int
    out: str
    err_lines: list[str]

    @property
    def error(self) -> str:
        """The single error line (a failed command prints exactly one)."""
        errors = [line for line in self.err_lines if ": error: " in line or line.startswith("usage:")]
        assert len([e for e in errors if ": error: " in e]) == 1, self.err_lines
        return next(e for e in errors if ": error: " in e)


@pytest.fixture()
def cli(capsys):
    """Run ``glmha`` in-process: the exit code, stdout and the stderr lines (progress bars left out)."""

    def run(*args: str) -> Run:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse: a bad flag or value
            code = exit_.code
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and "Traceback" not in captured.out
        progress = r"(restoring|reconstructing|tiles):\s+\d+%\|[^|]*\|[^\]]*\]"  # tqdm's bars, drawn on stderr too
        lines = [line for line in (re.sub(progress, "", part).strip() for part in re.split(r"[\r\n]", captured.err)) if line]
        return Run(code, captured.out, lines)

    return run


def check_cli_outcome(run: Run, command: str, expected) -> None:
    """A failure is exit code 1 (2 for argparse) and one ``glmha <command>: error:`` line with the words; a warning one line."""
    if isinstance(expected, Error):
        assert run.code in (1, 2), (run.code, run.err_lines)
        error = run.error
        assert error.startswith(f"glmha {command}: error: "), error
        assert_words(error, expected.words)
    elif isinstance(expected, Warns):
        assert run.code == 0, run.err_lines
        warnings = [line for line in run.err_lines if line.startswith(f"glmha {command}: warning: ")]
        assert len(warnings) == 1, run.err_lines
        assert_words(warnings[0], expected.words)
    else:
        assert run.code == 0, run.err_lines
        assert not [line for line in run.err_lines if "error" in line], run.err_lines
