"""No code reads a private attribute (a leading underscore) of a Lightning, torch, vLLM, peft or
bitsandbytes object: the next minor release of any of them may rename it and break resume or
preemption silently. An attribute counts as ours when our own code defines it (a def, a class, an
assignment); every other underscore attribute our code reads must be in ALLOWED, with a reason,
and with a check below that fails when the library changes it."""

import ast

from tests.helpers.cli import ROOT

SOURCES = [*sorted((ROOT / "soft_lightning").rglob("*.py")), *sorted((ROOT / "callbacks").rglob("*.py"))]
# attribute -> why we read it (each checked against the installed library below)
ALLOWED: dict[str, str] = {}


def our_names(trees) -> set[str]:
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    for part in ast.walk(target):  # our own objects' attributes: self.x = ..., cls.x = ...
                        if isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name) and \
                                part.value.id in ("self", "cls"):
                            names.add(part.attr)
                        elif isinstance(part, ast.Name):
                            names.add(part.id)
    return names


def private_reads() -> dict[str, list[str]]:
    trees = {path: ast.parse(path.read_text(), filename=str(path)) for path in SOURCES}
    ours = our_names(trees.values())
    found: dict[str, list[str]] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            stdlib = isinstance(node.value, ast.Name) and node.value.id in ("os", "sys")  # os._exit: documented
            if node.attr not in ours and not stdlib:
                found.setdefault(node.attr, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_private_library_attribute_outside_the_allow_list():
    found = private_reads()
    assert set(found) <= set(ALLOWED), {k: v for k, v in found.items() if k not in ALLOWED}
    assert set(ALLOWED) <= set(found), "an allow-list entry no longer used: remove it"
    # (Each entry, if one is ever needed, gets a test that fails when the library renames it.)


def test_the_check_finds_a_private_read(tmp_path):
    """The scan is not vacuous: a read of a library's private attribute is found."""
    tree = ast.parse("import torch\nok = torch.cpu._is_avx512_bf16_supported()\n")
    reads = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
             and n.attr not in our_names([tree])]
    assert reads == ["_is_avx512_bf16_supported"]
