"""The package's layers (README, Layout): model (torch) <- policy (numpy in, numpy out) <- ros (the node runtime) <-
tools (demo, bench, replay, soak, verify). A module imports only its own layer and those below; logs.py, under them
all, imports nothing of the package; the top-level shims (node, fake_robot, demo) are entry points. No module reaches
itself through its imports (no import circles). The imports are read from the source, as test/ros_facing.py does,
wherever they are (also inside functions)."""
from pathlib import Path
from typing import Dict, List, Set

import pytest

from ros_facing import REPO, module_names, repo_file

PACKAGE = REPO / "turbopi_ros"
LAYERS = ("model", "policy", "ros", "tools")
BASE = {"logs"}
ENTRY_POINTS = {"node", "fake_robot", "demo"}


def _modules() -> List[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    if len(parts) > 1:
        return parts[0]
    name = path.stem
    return "base" if name in BASE else "entry" if name in ENTRY_POINTS else "unplaced"


def _imports(path: Path) -> Set[Path]:
    """The package's modules (not package __init__ files) that ``path`` imports."""
    found = set()
    for name in module_names(path):
        other = repo_file(name)
        if other is not None and other.name != "__init__.py" and PACKAGE in other.parents and other != path:
            found.add(other)
    return found


def _allowed(importer: str, imported: str) -> bool:
    if imported == "base":
        return True
    if importer == "base":
        return False
    if importer == "entry":
        return imported in LAYERS
    return imported in LAYERS and LAYERS.index(imported) <= LAYERS.index(importer)


def test_every_module_has_a_layer():
    unplaced = [str(p.relative_to(REPO)) for p in _modules() if _layer(p) == "unplaced"]
    assert unplaced == [], f"top-level modules outside the layers {LAYERS}: move them into one"


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{p.relative_to(REPO)} ({_layer(p)}) imports {q.relative_to(REPO)} ({_layer(q)})"
              for p in _modules() for q in sorted(_imports(p)) if not _allowed(_layer(p), _layer(q))]
    assert upward == []


def test_no_import_circles():
    graph: Dict[Path, Set[Path]] = {p: _imports(p) for p in _modules()}
    circles, state = [], {}

    def visit(node: Path, stack: List[Path]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circle = stack[stack.index(nxt):] + [nxt]
                circles.append(" -> ".join(str(p.relative_to(PACKAGE)) for p in circle))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for p in graph:
        if p not in state:
            visit(p, [p])
    assert circles == []


@pytest.mark.parametrize("importer, imported, allowed", [
    ("model", "policy", False), ("policy", "ros", False), ("ros", "tools", False), ("tools", "model", True),
    ("policy", "policy", True), ("base", "model", False), ("model", "base", True), ("entry", "tools", True)])
def test_the_rule_itself(importer, imported, allowed):
    assert _allowed(importer, imported) is allowed
