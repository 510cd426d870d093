"""Package housekeeping: version, licence, citation, type marker, and an import graph without cycles that follows the layers."""
import ast
import sys
from pathlib import Path

import pytest
import yaml

import glmha
from glmha.cli import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "glmha"

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"glmha {glmha.__version__}"
    assert glmha.__version__ == _pyproject()["project"]["version"]


def test_license_file_matches_the_declared_license():
    declared = _pyproject()["project"]["license"]["text"]
    text = (ROOT / "LICENSE").read_text()
    assert declared == "MIT", "the LICENSE text below is the MIT licence"
    assert text.splitlines()[0] == "MIT License"
    assert "Permission is hereby granted, free of charge" in text and "2026" in text


def test_citation_file_is_valid_cff_with_the_papers():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors", "version", "license"):
        assert cff[key], key
    assert cff["version"] == glmha.__version__
    assert cff["license"] == _pyproject()["project"]["license"]["text"]
    titles = " | ".join(ref["title"] for ref in cff["references"])
    for paper in ("GLMHA", "Restormer", "Mask-guided Spectral-wise Transformer", "MST++"):
        assert paper in titles
    for ref in cff["references"]:
        assert ref["type"] and ref["year"] and ref["authors"], ref["title"]
        assert all(author.get("family-names") for author in ref["authors"]), ref["title"]


def test_type_marker_ships_with_the_package():
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["glmha"]


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, from every ``import`` and ``from`` statement
    anywhere in its source (module level, inside functions, under ``TYPE_CHECKING``).

    ``from a import b`` counts as an import of ``a.b`` when that is a module, else of ``a``.
    """
    top = package_dir.name
    modules: dict[str, tuple[Path, bool]] = {}
    for path in package_dir.rglob("*.py"):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if submodule in modules else source)
        graph[name] = {t for t in targets if t in modules and t != name and t.split(".")[0] == top}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)

    cycles = []
    for group in groups:  # walk inside the group from its first module until a module repeats
        path = [min(group)]
        while True:
            step = min(t for t in graph[path[-1]] if t in group)
            if step in path:
                cycles.append(path[path.index(step):] + [step])
                break
            path.append(step)
    return cycles


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p.a", "p.c"}, "p.c": set()}
    assert find_cycles(graph) == [["p.a", "p.b", "p.a"]]
    assert find_cycles({"p": {"p.a"}, "p.a": set()}) == []


def test_import_graph_reads_relative_and_function_level_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import f\n")
    (package / "a.py").write_text("def f():\n    from .sub import b\n    return b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\n")
    graph = import_graph(package)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.a"}}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]


def test_package_has_no_import_cycle():
    cycles = find_cycles(import_graph(PACKAGE))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


# The package's layers, lowest first: a module imports only from its own folder and from lower
# layers. Folders on one line are one layer and do not import each other. The package root
# (``glmha/__init__.py``) is the public facade above them all.
LAYERS = [
    ("glmha._version", "glmha.validation"),
    ("glmha.io",),
    ("glmha.attention", "glmha.metrics"),
    ("glmha.data",),
    ("glmha.models",),
    ("glmha.inference",),
    ("glmha.engine",),
    ("glmha.analysis",),
    ("glmha.experiments",),
    ("glmha.cli",),
]


def _layer_of(module: str) -> tuple[int, str]:
    part = ".".join(module.split(".")[:2])
    for rank, members in enumerate(LAYERS):
        if part in members:
            return rank, part
    raise AssertionError(f"{module} is in no layer of LAYERS; add its folder there")


def test_layers_import_only_downwards():
    graph = import_graph(PACKAGE)
    upward = []
    for source, targets in sorted(graph.items()):
        if source == "glmha":
            continue
        rank, part = _layer_of(source)
        for target in sorted(targets):
            if target == "glmha":
                upward.append(f"{source} -> glmha (import from the module that defines the name)")
                continue
            target_rank, target_part = _layer_of(target)
            if target_rank > rank or (target_rank == rank and target_part != part):
                upward.append(f"{source} -> {target}")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_package_root_holds_only_the_facade_and_the_base_modules():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "_version.py", "validation.py"]
