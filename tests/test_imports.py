"""Imports inside the package flow one way: from each sub-package only to the ones below it in
LAYERS (or within itself), with no module reaching itself through others; the imports made inside
functions count too (they are cycles that only bite later). No module is imported under the name
of another concept, and no folder holds more than 12 modules."""

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.cli import ROOT

PACKAGE = ROOT / "soft_lightning"
# Bottom to top; `callbacks` is the top-level callbacks/ folder, installed as soft_lightning.callbacks.
LAYERS = ["utils", "models", "sampler", "signals", "rounds", "training", "callbacks", "commands", ""]
FOLDERS = {"callbacks": ROOT / "callbacks", **{name: PACKAGE / name for name in LAYERS if name and name != "callbacks"}}


def package_files() -> dict[str, Path]:
    """Module name (`sampler.hf`, `sampler` for its __init__, `cli`) -> file."""
    files = {}
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "callbacks").glob("*.py")]:
        base = ROOT if path.is_relative_to(ROOT / "callbacks") else PACKAGE
        parts = path.relative_to(base).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


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
    return found - {""}


def layer(module: str) -> int:
    """The sub-package's place in LAYERS (top-level modules: the top)."""
    head = module.split(".")[0]
    return LAYERS.index(head if head in LAYERS else "")


def test_every_sub_package_is_layered_and_imports_flow_down():
    files = package_files()
    heads = {m.split(".")[0] for m in files if "." in m or (PACKAGE / m).is_dir() or m == "callbacks"}
    assert heads <= set(LAYERS), f"a sub-package missing from LAYERS: {heads - set(LAYERS)}"
    upward = [f"{m} -> {dep}" for m, path in files.items() for dep in imports_of(path, set(files))
              if dep in files and layer(dep) > layer(m)]
    assert not upward, "imports that run up the layers: " + ", ".join(upward)


def test_no_import_cycle_in_the_package():
    files = package_files()
    graph = {m: imports_of(path, set(files)) - {m} for m, path in files.items()}
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


def test_no_sampler_imports_the_training_code():
    """A backend samples from weights it is handed (`sync_weights`), never from the training code."""
    files = package_files()
    sampler = {m: p for m, p in files.items() if m.split(".")[0] == "sampler"}
    used = {dep for path in sampler.values() for dep in imports_of(path, set(files))}
    assert sampler and not any(dep.startswith("training") for dep in used)


def test_folders_are_small_and_no_alias_renames_a_module():
    assert all(len(list(folder.glob("*.py"))) - 1 <= 12 for folder in [PACKAGE, *FOLDERS.values()])
    renaming = re.compile(r"\s*(import soft_lightning\S* as |from soft_lightning\S* import .* as )")
    aliased = [f"{path.relative_to(ROOT)}: {line.strip()}" for path in package_files().values()
               for line in path.read_text().splitlines() if renaming.match(line)]
    assert not aliased, aliased


def test_a_spawned_child_imports_neither_the_cli_nor_lightning_for_a_vllm_sampler():
    """`spawn` re-imports `soft_lightning.__main__` in every child (a spawned sampler, vLLM's
    workers) as `__mp_main__`: the CLI stays out of it, and so does Lightning where the child only
    samples with vLLM (≈ 0.7 CPU-s less per vLLM child on a 2-core Zen 1 EPYC: vLLM brings most of it)."""
    code = ("import runpy, sys; runpy.run_module('soft_lightning', run_name='__mp_main__'); "
            "import soft_lightning.sampler.process, soft_lightning.sampler.vllm; "
            "print(sorted(m for m in ('soft_lightning.cli', 'lightning', 'torchmetrics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]
