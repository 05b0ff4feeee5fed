"""The import graph of ``src/nar`` has no upward arrow and no folder cycle (docs/CONTRACTS.md, "Layers").

Every ``import nar.X`` / ``from nar.X import`` in a module of package ``P`` (function-level imports
included) must name a package of a lower layer than ``P``'s, or ``P`` itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "nar"

# Lower layers first; a package may import packages of strictly lower layers (and itself).
LAYERS: list[set[str]] = [
    {"errors"},
    {"config", "checkpoints", "atomic", "progress", "logconfig"},
    {"locks", "pictures", "geometry", "shapes", "text", "tokenizers"},
    {"model", "data"},
    {"sampling", "metrics"},
    {"runs"},
    {"lightning"},
    {"workflows"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else "__init__"


def imported_packages(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        out.update(n.split(".")[1] for n in names if n.startswith("nar.") and n.count(".") >= 1)
    return out


def test_every_package_has_a_layer():
    packages = {package_of(p) for p in SRC.rglob("*.py")} - {"__init__"}
    assert packages <= set(RANK), f"add {sorted(packages - set(RANK))} to LAYERS and to docs/CONTRACTS.md"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_only_go_down(path: Path):
    own = package_of(path)
    if own == "__init__":
        return
    upward = sorted(p for p in imported_packages(path) if p != own and RANK.get(p, -1) >= RANK[own])
    assert not upward, f"{path.relative_to(ROOT)} ({own}, layer {RANK[own]}) imports {upward} (not below it)"


def test_contracts_document_the_same_layers():
    text = (ROOT / "docs" / "CONTRACTS.md").read_text()
    section = text[text.index("## Layers"):]
    for layer in LAYERS:
        for name in layer:
            assert f"`{name}`" in section, f"docs/CONTRACTS.md 'Layers' does not name `{name}`"


def test_pyproject_lists_every_package():
    """Packages are listed by hand (experiments/ ships as nar.experiments); none may be forgotten."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"nar." + ".".join(p.relative_to(SRC).parts) if p != SRC else "nar"
             for p in [SRC, *(d for d in SRC.rglob("*") if d.is_dir() and (d / "__init__.py").is_file())]}
    assert found | {"nar.experiments"} == listed
