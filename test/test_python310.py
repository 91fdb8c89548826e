"""Humble runs Python 3.10: every .py of the package, its launch files and tests must compile there.

Two checks, so one always runs: in this interpreter, ast with ``feature_version=(3, 10)`` (which rejects ``except*``
and newer syntax) plus what it lets through (PEP 646 ``*Ts`` unpacking) plus 3.11+ standard-library names (tomllib,
typing.Self, ...); and the real python3.10 compiling every file. CI (``TURBOPI_REQUIRE_PY310=1``, set by .ci/run)
fails where no python3.10 is found; elsewhere that half skips and says why. TURBOPI_PYTHON310 names one.
"""
import ast
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
FEATURE_VERSION = (3, 10)
# Standard-library modules and names that Python 3.10 lacks (what-s-new 3.11 and 3.12).
NEW_MODULES = {"tomllib": "3.11", "wsgiref.types": "3.11"}
NEW_NAMES = {
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "TypeVarTuple", "Unpack",
               "Required", "NotRequired", "dataclass_transform", "get_overloads", "clear_overloads", "override",
               "TypeAliasType"},
    "enum": {"StrEnum", "ReprEnum", "EnumCheck", "FlagBoundary", "verify", "member", "nonmember", "global_enum"},
    "datetime": {"UTC"},
    "asyncio": {"TaskGroup", "timeout", "timeout_at", "Runner", "Barrier"},
    "contextlib": {"chdir"},
    "hashlib": {"file_digest"},
    "operator": {"call"},
    "math": {"cbrt", "exp2"},
    "itertools": {"batched"},
}
NEW_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def python_files() -> List[Path]:
    folders = ("turbopi_ros", "launch", "test")
    return [REPO / "setup.py"] + [p for d in folders for p in sorted((REPO / d).rglob("*.py"))]


def static_problems(source: str, name: str) -> List[str]:
    """What Python 3.10 would not accept in ``source``, found without a 3.10 interpreter."""
    try:
        tree = ast.parse(source, name, feature_version=FEATURE_VERSION)
    except SyntaxError as e:
        return [f"{name}:{e.lineno}: {e.msg} (Python 3.10 syntax)"]
    problems = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        # PEP 646 (3.11): a[*b] and *args: *Ts, which feature_version lets through
        if isinstance(node, ast.Subscript) and any(isinstance(e, ast.Starred) for e in
                                                   (node.slice.elts if isinstance(node.slice, ast.Tuple)
                                                    else [node.slice])):
            problems.append(f"{where}: star unpacking in a subscript needs Python 3.11")
        if isinstance(node, ast.arguments) and node.vararg and isinstance(node.vararg.annotation, ast.Starred):
            problems.append(f"{where}: *args: *Ts needs Python 3.11")
        if isinstance(node, ast.Import):
            problems += [f"{where}: {a.name} needs Python {NEW_MODULES[a.name]}" for a in node.names
                         if a.name in NEW_MODULES]
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module in NEW_MODULES:
                problems.append(f"{where}: {node.module} needs Python {NEW_MODULES[node.module]}")
            problems += [f"{where}: {node.module}.{a.name} is not in Python 3.10" for a in node.names
                         if a.name in NEW_NAMES.get(node.module, ())]
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.attr in NEW_NAMES.get(node.value.id, ()):
            problems.append(f"{where}: {node.value.id}.{node.attr} is not in Python 3.10")
        if isinstance(node, ast.Name) and node.id in NEW_BUILTINS:
            problems.append(f"{where}: {node.id} is not in Python 3.10")
    return problems


def find_python310() -> Optional[str]:
    """TURBOPI_PYTHON310, else a python3.10 that runs (a pyenv shim on PATH may not), else pyenv's own builds."""
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]
    candidates = [os.environ.get("TURBOPI_PYTHON310", ""), shutil.which("python3.10") or ""]
    for root in roots:
        if root:
            candidates += sorted(glob.glob(os.path.join(root, "versions", "3.10*", "bin", "python3.10")), reverse=True)
    candidates.append("/usr/bin/python3.10")
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.stdout.strip() == "True":
            return exe
    return None


# Compiles each file in memory (no .pyc written) and prints {path: error} as JSON.
COMPILE_ALL = """
import json, sys
errors = {}
for path in sys.argv[1:]:
    try:
        with open(path, encoding="utf-8") as f:
            compile(f.read(), path, "exec", dont_inherit=True)
    except SyntaxError as e:
        errors[path] = f"line {e.lineno}: {e.msg}"
print(json.dumps(errors))
"""


def compile_with(python: str, paths: List[Path]) -> dict:
    out = subprocess.run([python, "-c", COMPILE_ALL] + [str(p) for p in paths], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def python310() -> str:
    exe = find_python310()
    if exe is None:
        msg = ("no python3.10 found (tried TURBOPI_PYTHON310, python3.10 on PATH, pyenv's versions/3.10*, "
               "/usr/bin/python3.10): Humble's Python is only checked statically here")
        if os.environ.get("TURBOPI_REQUIRE_PY310", "") not in ("", "0", "false"):
            pytest.fail(msg + "; TURBOPI_REQUIRE_PY310 is set, so this is a failure")
        pytest.skip(msg)
    return exe


def test_every_file_is_python310_syntax_statically():
    problems = [p for path in python_files() for p in static_problems(path.read_text(), str(path.relative_to(REPO)))]
    assert not problems, "\n".join(problems)


def test_every_file_compiles_with_python310(python310):
    errors = compile_with(python310, python_files())
    assert not errors, "\n".join(f"{path}: {err}" for path, err in errors.items())


SNIPPETS_311 = {
    "except*": "try:\n    pass\nexcept* ValueError:\n    pass\n",
    "star subscript": "def f(a, b):\n    return a[*b]\n",
    "star vararg annotation": "def f(*args: *Ts):\n    pass\n",
}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the snippets are Python 3.11 syntax, which this Python "
                    f"{sys.version_info.major}.{sys.version_info.minor} cannot compile: the check is for 3.11+")
@pytest.mark.parametrize("what", sorted(SNIPPETS_311))
def test_311_syntax_is_caught_statically(what):
    source = SNIPPETS_311[what]
    compile(source, what, "exec")  # valid in this interpreter (3.11+): only the check can tell
    assert static_problems(source, what), what


@pytest.mark.parametrize("what", sorted(SNIPPETS_311))
def test_311_syntax_is_rejected_by_python310(what, tmp_path, python310):
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPETS_311[what])
    assert compile_with(python310, [path]), what


@pytest.mark.parametrize("source", ["import tomllib\n", "from typing import Self\n", "import enum\nx = enum.StrEnum\n",
                                    "raise ExceptionGroup('x', [ValueError()])\n"])
def test_311_standard_library_names_are_caught(source):
    assert static_problems(source, "snippet"), source


def test_310_code_passes():
    source = ("from typing import Optional\n\ndef f(x: Optional[int]) -> int:\n    match x:\n        case None:\n"
              "            return 0\n        case _:\n            return x\n"
              "with (open(__file__) as a, open(__file__) as b):\n    pass\n")
    assert static_problems(source, "ok") == []
