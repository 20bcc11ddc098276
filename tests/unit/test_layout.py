"""The house rules that keep the package readable: no import cycles (but the model registry's), every list of choices
defined once and offered by the command line as the library checks it, no reference to a file the repo lacks."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from classicnets import choices
from classicnets.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "classicnets"
# The one cycle on purpose (classicnets/models/__init__.py): each family module imports the registry to register
# itself, and the registry imports the package on first use.
REGISTRATION_CYCLE = {
    "classicnets.models",
    "classicnets.models.registry",
    *(f"classicnets.models.{m}" for m in ("alexnet", "alexnet_variants", "vgg", "googlenet", "resnet", "lenet")),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the classicnets modules it imports anywhere in its file (top level, inside functions, and under
    TYPE_CHECKING alike: a cycle of lazy imports is still a cycle in the design)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from pkg import sub` imports the submodule pkg.sub; `from pkg import name` imports pkg
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]  # fmt: skip
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or through others."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_only_import_cycle_is_the_model_registry():
    graph = import_graph()
    assert len(graph) > 60 and graph["classicnets.training.loop"]  # the walk found the package
    cycles = [group for group in strongly_connected(graph) if len(group) > 1]
    assert [sorted(c) for c in cycles if c != REGISTRATION_CYCLE] == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [g for g in strongly_connected(graph) if len(g) > 1] == [{"a", "b", "c"}]


def subcommand_choices() -> dict[tuple[str, str], tuple[str, ...]]:
    """(command, flag) -> the choices argparse offers."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for command, p in sub.choices.items():
        for action in p._actions:
            if action.choices is not None and action.option_strings:
                found[(command, action.option_strings[0])] = tuple(action.choices)
    return found


@pytest.mark.parametrize(
    ("command", "flag", "expected"),
    [
        ("train", "--optimizer", choices.OPTIMIZERS),
        ("train", "--schedule", choices.SCHEDULES),
        ("train", "--precision", choices.PRECISIONS),
        ("train", "--cache", choices.DATA_CACHE),
        ("eval", "--precision", choices.PRECISIONS),
        ("predict", "--precision", choices.PRECISIONS),
        ("predict", "--runtime", choices.RUNTIMES),
        ("bench", "--precision", choices.PRECISIONS),
        ("bench", "--mode", choices.BENCH_MODES),
        ("import", "--from", choices.IMPORT_FORMATS),
        ("export", "--from", choices.IMPORT_FORMATS),
        ("export", "--format", choices.EXPORT_FORMATS),
    ],
)
def test_the_command_line_offers_what_the_library_accepts(command, flag, expected):
    assert subcommand_choices()[(command, flag)] == expected


def test_the_library_accepts_every_choice_and_refuses_others():
    import torch

    from classicnets.config import resolve_config
    from classicnets.errors import UsageError
    from classicnets.runtime import resolve_precision

    for name in choices.OPTIMIZERS:
        assert resolve_config(overrides={"optimizer": name}).optim.name == name
    for name in choices.SCHEDULES:
        assert resolve_config(overrides={"schedule": name}).schedule.name == name
    for name in choices.AUGMENTATIONS:
        assert resolve_config(settings=[f"data.augment={name}"]).data.augment == name
    for name in choices.DATA_CACHE:
        assert resolve_config(overrides={"cache": name}).data.cache == name
    with pytest.raises(UsageError, match="data.cache='sometimes'"):
        resolve_config(settings=["data.cache=sometimes"])
    for name in ("auto", "fp32", "bf16"):  # fp16 is for GPUs
        assert resolve_precision(name, torch.device("cpu")) in choices.PRECISIONS
    with pytest.raises(UsageError, match="optim.name='rmsprop'"):
        resolve_config(overrides={"optimizer": "rmsprop"})
    with pytest.raises(UsageError, match="unknown precision"):
        resolve_precision("fp8", torch.device("cpu"))


def repo_text_files() -> list[Path]:
    skip = {".venv", ".git", "runs", "build", "dist"}
    return [
        p
        for p in REPO.rglob("*")
        if p.is_file() and not (set(p.relative_to(REPO).parts) & skip) and p.suffix in {".py", ".md", ".yaml", ".toml"}
    ]


def test_every_markdown_file_the_repo_names_is_in_the_repo():
    """Users do not have the team's shared folder: a file mentioned here but absent is a dead end."""
    names = {p.name for p in REPO.rglob("*.md") if ".venv" not in p.parts}
    missing = {}
    for path in repo_text_files():
        for name in re.findall(r"\b([A-Za-z_][\w-]*\.md)\b", path.read_text(encoding="utf-8", errors="ignore")):
            if name not in names:
                missing.setdefault(name, str(path.relative_to(REPO)))
    assert missing == {}


def test_relative_links_in_the_docs_resolve():
    broken = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(REPO)} -> {target}")
    assert broken == []


def test_readme_is_the_short_front_door():
    assert (REPO / "README.md").stat().st_size < 12 * 1024
