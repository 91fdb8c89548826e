"""Unit sizes: no class in turbopi_ros/ over 250 lines and no function over 60, except those README.md's layout
section names (each with its reason). A unit that grows past the limit fails here until it is split or listed; a
listed one that shrank back under the limit fails too, so the list stays short and true."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASS_LINES, FUNCTION_LINES = 250, 60


def _oversized(repo: Path = REPO):
    """{"path::Name": lines} of every class over CLASS_LINES and function over FUNCTION_LINES in turbopi_ros/."""
    found = {}
    for path in sorted((repo / "turbopi_ros").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            limit = CLASS_LINES if isinstance(node, ast.ClassDef) else FUNCTION_LINES
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found[f"{path.relative_to(repo).as_posix()}::{node.name}"] = lines
    return found


def _listed():
    """The exceptions README.md's layout section lists: lines "- `path::Name`: reason"."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Layout"):]
    return set(re.findall(r"^- `(turbopi_ros/[^`]+::\w+)`", section, flags=re.M))


def test_no_unit_over_its_limit_unless_listed_with_its_reason():
    oversized, listed = _oversized(), _listed()
    unlisted = {name: lines for name, lines in oversized.items() if name not in listed}
    assert not unlisted, (f"over {CLASS_LINES} lines (class) or {FUNCTION_LINES} (function), and not listed in "
                          f"README.md's layout section: {unlisted}")
    assert not listed - set(oversized), f"listed in README.md but within the limits now: {listed - set(oversized)}"


def test_the_size_reader_finds_long_units_and_only_those(tmp_path):
    package = tmp_path / "turbopi_ros" / "sub"
    package.mkdir(parents=True)
    (package / "m.py").write_text("def short():\n" + "    x = 1\n" * (FUNCTION_LINES - 1) + "\n\nclass Long:\n"
                                  + "    def long(self):\n" + "        x = 1\n" * FUNCTION_LINES
                                  + "    y = 1\n" * CLASS_LINES)
    assert _oversized(tmp_path) == {"turbopi_ros/sub/m.py::Long": CLASS_LINES + FUNCTION_LINES + 2,
                                    "turbopi_ros/sub/m.py::long": FUNCTION_LINES + 1}
