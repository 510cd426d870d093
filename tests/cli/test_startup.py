"""Start-up: ``import glmha`` and building the command line load no PyTorch (``glmha --help`` answers at once),
the choices the parser offers are the library's, and every command says what Ctrl-C leaves."""
import json
import subprocess
import sys

import pytest

import glmha
import glmha.cli
from glmha.cli import choices

HEAVY = ("torch", "numpy", "cv2", "scipy", "matplotlib")


def test_import_and_parser_load_no_heavy_library():
    code = (
        "import json, sys\n"
        "import glmha\n"
        f"after_import = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "import glmha.cli\n"
        "glmha.cli.build_parser()\n"
        f"after_parser = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps([after_import, after_parser, glmha.__version__]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    after_import, after_parser, version = json.loads(out)
    assert after_import == [] and after_parser == []
    assert version == glmha.__version__


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["restore"], ["train", "--bogus"], ["score", "nope"]])
def test_help_version_and_argument_errors_load_no_torch(argv):
    code = (
        "import sys\n"
        "from glmha.cli import main\n"
        f"try:\n    main({argv!r})\n"
        "except SystemExit as exit:\n    code = exit.code\n"
        "print('torch' in sys.modules, code, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    loaded, code = result.stderr.strip().splitlines()[-1].split()
    assert loaded == "False"
    assert code == ("0" if argv[0].startswith("--") else "2")


def test_lazy_package_names_resolve_and_are_listed():
    listed = dir(glmha)
    assert set(glmha.__all__) <= set(listed) and "models" in listed
    for name in glmha.__all__:
        assert getattr(glmha, name) is not None
    assert glmha.create_model is glmha.models.create_model
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        glmha.nope  # noqa: B018


def test_parser_choices_are_the_library_tables():
    from glmha.analysis.eigen import SPECTRA
    from glmha.data.prepare import PREPARE_TASKS
    from glmha.engine.tasks import LOSSES
    from glmha.experiments.demo import BUDGETS
    from glmha.experiments.study import DEFAULT_TASKS, DEFAULT_VARIANTS
    from glmha.inference.export import FORMATS
    from glmha.inference.reconstruction import CUBE_FORMATS
    from glmha.metrics.protocols import PROTOCOLS
    from glmha.models.presets import list_presets

    assert choices.PRESETS == tuple(list_presets())
    assert choices.LOSSES == tuple(sorted(LOSSES))
    assert choices.SCORED_PROTOCOLS == tuple(sorted(p for p in PROTOCOLS if PROTOCOLS[p].metrics))
    assert choices.BUDGETS == tuple(BUDGETS)
    assert (choices.STUDY_TASKS, choices.STUDY_VARIANTS) == (tuple(DEFAULT_TASKS), tuple(DEFAULT_VARIANTS))
    assert choices.EXPORT_FORMATS == tuple(FORMATS)
    assert choices.CUBE_FORMATS == tuple(CUBE_FORMATS)
    assert choices.SPECTRA == tuple(SPECTRA)
    assert choices.PREPARE_TASKS == tuple(sorted(PREPARE_TASKS))


# the least each command parses
MINIMAL = {
    "prepare": ["gopro", "--source", "downloads"],
    "score": ["deraining", "--restored", "restored/"],
    "reconstruct": ["a.png", "--checkpoint", "c.pth", "--output", "cubes/"],
    "demo": [],
    "study": [],
    "distill": ["--teacher", "t.pth", "--inputs", "builtin", "--output", "run/"],
    "complexity": [],
    "rank": [],
    "restore": ["a.png", "--checkpoint", "c.pth", "--output", "out/"],
    "export": ["--checkpoint", "c.pth", "--output", "m.pt"],
    "train": ["config.yaml"],
    "evaluate": ["config.yaml"],
}


def test_every_command_says_what_an_interrupt_leaves():
    assert set(MINIMAL) == set(glmha.cli.COMMANDS)
    parser = glmha.cli.build_parser()
    for name, command in glmha.cli.COMMANDS.items():
        text = command.INTERRUPTED.format(**vars(parser.parse_args([name, *MINIMAL[name]])))
        assert text and "\n" not in text and "{" not in text, name
