"""Which test modules are ROS-facing: conftest marks their tests ``ros``, and .ci/run runs ``-m ros`` on Jazzy too.

A module is ROS-facing when it uses rclpy or another ROS package (``*_msgs``, ``*_srvs``, ``*_interfaces``, launch),
directly or through a module of this repository that does (test helpers, turbopi_ros.*, at any depth). What counts
as use is read from the source, so nothing has to be listed or remembered: imports anywhere in the file (also inside
functions), ``pytest.importorskip("sensor_msgs")`` (and import_module, __import__) and a subprocess's command list
running ``"-m", "turbopi_ros.tools.demo"``.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
ROS_PACKAGES = {"rclpy", "launch", "launch_ros", "launch_testing", "ament_index_python", "rosidl_runtime_py",
                "rosbag2_py", "message_filters", "tf2_ros", "cv_bridge"}
ROS_SUFFIXES = ("_msgs", "_srvs", "_interfaces")
IMPORTERS = {"importorskip", "import_module", "__import__"}  # calls whose first argument names a module


def is_ros_package(name: str) -> bool:
    root = name.split(".")[0]
    return root in ROS_PACKAGES or root.endswith(ROS_SUFFIXES)


def repo_file(name: str) -> Optional[Path]:
    """This repository's file for module ``name`` (turbopi_ros.x.y, or a helper in test/), or None."""
    parts = name.split(".")
    bases = [REPO] if parts[0] == "turbopi_ros" else [REPO / "test"] if len(parts) == 1 else []
    for base in bases:
        for path in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
            if path.is_file():
                return path
    return None


@functools.lru_cache(maxsize=None)
def module_names(path: Path) -> Tuple[str, ...]:
    """Every module the file imports, import-skips or runs with -m, and their parent packages (a.b runs a too)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1]) if REPO in path.parents else ""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    type_checking = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}  # never run
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .conversions import x, inside turbopi_ros
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1] if package else []
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]  # the name may be a submodule
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in IMPORTERS:
            names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        elif isinstance(node, (ast.List, ast.Tuple)):  # [sys.executable, "-m", "turbopi_ros.tools.demo", ...]
            strings = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            names = [m for flag, m in zip(strings, strings[1:]) if flag == "-m" and isinstance(m, str)]
        for name in names:
            parts = name.split(".")
            found += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return tuple(found)


def is_ros_facing(path: Path) -> bool:
    """Whether ``path`` or any repository module it reaches names a ROS package."""
    todo, seen = [path.resolve()], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in module_names(current):
            if is_ros_package(name):
                return True
            other = repo_file(name)
            if other is not None:
                todo.append(other.resolve())
    return False
