"""model/ imports no module above it and has no import circle (pi0.py <-> reference.py was one)."""
import ast
from pathlib import Path

MODEL = Path(__file__).resolve().parents[1] / "turbopi_ros" / "model"


def _imports(path: Path):
    """Sibling modules of model/ that ``path`` imports at any level (lazy imports inside functions count too; imports
    under ``if TYPE_CHECKING:`` do not run)."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, ast.ImportFrom):
            continue
        assert node.level <= 1, f"{path.name} imports from above model/: {'.' * node.level}{node.module}"
        if node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_model_package_has_no_import_circle():
    graph = {p.stem: _imports(p) for p in MODEL.glob("*.py")}
    assert "reference" in graph["pi0"] and "pi0" not in graph["reference"]

    def visit(node, path):
        for nxt in graph.get(node, ()):
            assert nxt not in path, "import circle: " + " -> ".join(path + [nxt])
            visit(nxt, path + [nxt])

    for module in graph:
        visit(module, [module])
