"""Imports inside soft_lightning/ flow one way: no module reaches itself through others, counting
the imports made inside functions too (they are cycles that only bite later), and the samplers do
not reach into the training code."""

import ast
from pathlib import Path

from tests.helpers.cli import ROOT

PACKAGE = ROOT / "soft_lightning"


def name_of(path: Path) -> str:
    """`sampler.hf` for soft_lightning/sampler/hf.py, `sampler` for its __init__.py."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules `path` imports (`from soft_lightning.sampler import hf` names the
    submodule; any other name, the module it comes from)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "soft_lightning":
            inner = node.module.removeprefix("soft_lightning").removeprefix(".")
            for alias in node.names:
                sub = f"{inner}.{alias.name}".lstrip(".")
                found.add(sub if sub in modules else inner)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("soft_lightning.") for a in node.names
                      if a.name.startswith("soft_lightning.")}
    return found - {name_of(path), ""}


def test_no_import_cycle_in_the_package():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {name_of(f) for f in files}
    graph = {name_of(f): imports_of(f, modules) for f in files}
    assert {"sampler", "sampler.base", "sampler.hf"} <= graph.keys() and "sampler.base" in graph["sampler.hf"]
    done, on_path = set(), []

    def visit(module: str) -> None:
        if module in on_path:
            raise AssertionError("import cycle: " + " -> ".join(on_path[on_path.index(module):] + [module]))
        if module in done or module not in graph:
            return
        on_path.append(module)
        for dep in sorted(graph[module]):
            visit(dep)
        on_path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_no_sampler_imports_the_lightning_module():
    """A backend samples from weights it is handed (`sync_weights`), never from the training code."""
    files = sorted((PACKAGE / "sampler").glob("*.py"))
    modules = {name_of(f) for f in PACKAGE.rglob("*.py")}
    assert files and all("module" not in imports_of(f, modules) for f in files)
