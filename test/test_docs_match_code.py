"""The integrator's documentation against the code: what README.md, docs/*.md and config/*.yaml state as behaviour
(parameter defaults, ranges and run-time flags, test references, command-line options, executables, links, the
/diagnostics keys) must be what the code does. Each check reads files only (no node is started)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST = REPO / "test"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
INTEGRATOR_DOCS = [REPO / "README.md"] + [REPO / "docs" / f for f in
                                          ("node.md", "robots.md", "replay.md", "reliability.md", "preprocessing.md")]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _test_names() -> dict:
    """test function / class name -> the test files that define it."""
    names: dict = {}
    for f in TEST.glob("test_*.py"):
        for m in re.finditer(r"^\s*(?:async\s+)?(?:def|class)\s+(test_\w+|Test\w+)", _text(f), re.M):
            names.setdefault(m.group(1), set()).add(f.name)
    return names


def test_every_test_the_docs_name_exists_where_they_say():
    """`test_x.py::test_y`, `::test_y` (a test of a file named before it) and bare `test_*.py` / `test_*` names in the
    docs and configs: a referenced test that does not exist is a false claim of coverage."""
    names, wrong = _test_names(), []
    for doc in DOCS + sorted((REPO / "config").glob("*.yaml")):
        text = _text(doc)
        for file, test in re.findall(r"(test_\w+\.py)::(test_\w+)", text):
            if not (TEST / file).exists() or file not in names.get(test, ()):
                wrong.append(f"{doc.name}: {file}::{test}")
        for test in re.findall(r"(?<![\w.])::(test_\w+)", text):
            if test not in names:
                wrong.append(f"{doc.name}: ::{test}")
        for file in re.findall(r"(?<![\w/])(?:test/)?(test_\w+\.py)", text):
            if not (TEST / file).exists():
                wrong.append(f"{doc.name}: {file}")
        for word in set(re.findall(r"(?<![\w.:/])(test_\w+)(?![\w.])", text)):
            if word not in names and not (TEST / f"{word}.py").exists():
                wrong.append(f"{doc.name}: {word}")
    assert not wrong, "the docs name tests that do not exist: " + ", ".join(sorted(set(wrong)))


def test_relative_links_and_anchors_in_the_docs_resolve():
    def anchors(path: Path) -> set:
        return {re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
                for m in re.finditer(r"^#+ (.*)$", _text(path), re.M)}

    wrong = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _text(doc)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            full = (doc.parent / path).resolve() if path else doc
            if path and not full.exists():
                if "shared" not in Path(path).parts:  # ../shared: the fixtures beside the repo, not part of it
                    wrong.append(f"{doc.name}: {target}")
                continue
            if anchor and full.suffix == ".md" and anchor not in anchors(full):
                wrong.append(f"{doc.name}: {target} (no such heading)")
    assert not wrong, wrong


def _node_md_table() -> dict:
    rows = {}
    for line in _text(REPO / "docs" / "node.md").splitlines():
        m = re.match(r"\| `([a-z_][\w.<>]*)` \| ([^|]+) \| (.*) \|$", line.strip())
        if m and "." in m.group(1) or (m and m.group(1) in ("prompt", "control_rate_hz", "command_rate_hz",
                                                            "inference_period_s", "blend_s", "max_observation_age_s",
                                                            "on_stale", "worker_niceness", "autostart",
                                                            "status_log_period_s")):
            rows[m.group(1)] = (m.group(2).strip(), m.group(3))
    return rows


def _documented_value(text: str):
    text = text.strip("`")
    if text in ("true", "false"):
        return text == "true"
    if text == '""':
        return ""
    if text[:1] in "[-0123456789":
        return ast.literal_eval(text)
    return text


def test_node_md_parameter_table_is_the_parameter_table():
    """Every row of docs/node.md's parameter table against node_params.PARAMETERS (and a group's parameters): the
    same names, defaults, "changeable at run time" exactly where a parameter is, and the ranges it states."""
    pytest.importorskip("rclpy")
    from turbopi_ros.ros.action_outputs import group_parameters
    from turbopi_ros.ros.node_params import PARAMETERS

    table = dict(PARAMETERS)
    table.update({k.replace(".G.", ".<name>."): v for k, v in group_parameters("G").items()})
    rows = _node_md_table()
    wrong = [f"{name}: not in docs/node.md's table" for name in table
             if name not in rows and not name.endswith(".velocity_scale")]  # in the group table of node.md
    for name, (default, text) in rows.items():
        if name not in table:
            wrong.append(f"{name}: in docs/node.md's table, not a parameter")
            continue
        p = table[name]
        if ("changeable at run time" in text) != p.runtime:
            wrong.append(f"{name}: run time {p.runtime} in PARAMETERS")
        if not default.startswith("(") and "<name>" not in default:
            value = _documented_value(default)
            if value != p.default and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                           and float(value) == p.default):
                wrong.append(f"{name}: documented default {default}, PARAMETERS {p.default!r}")
        for lo, hi in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)(?![\w.])", text):
            if (p.min, p.max) != (float(lo), float(hi)):
                wrong.append(f"{name}: documented range {lo}-{hi}, PARAMETERS [{p.min}, {p.max}]")
    assert not wrong, wrong


def test_config_files_set_only_declared_parameters_with_documented_types():
    """Each config/*.yaml key under turbopi_node is a declared parameter (or a listed group's) and its value passes
    the parameter's own check: a comment beside a value the node refuses would teach the wrong thing."""
    pytest.importorskip("rclpy")
    import yaml

    from turbopi_ros.ros.action_outputs import group_parameters
    from turbopi_ros.ros.node_params import PARAMETERS

    wrong = []
    for path in sorted((REPO / "config").glob("*.yaml")):
        section = yaml.safe_load(_text(path))["/**/turbopi_node"]["ros__parameters"]
        table = dict(PARAMETERS)
        for g in section.get("action.groups") or []:
            table.update(group_parameters(g))
        for name, value in section.items():
            if name not in table:
                wrong.append(f"{path.name}: {name} is not a parameter")
                continue
            try:
                table[name].check(name, [] if value == [] else value)
            except ValueError as e:
                wrong.append(f"{path.name}: {e}")
    assert not wrong, wrong


def _entry_points() -> set:
    return set(re.findall(r'"([\w-]+) = turbopi_ros[\w.]*:main"', _text(REPO / "setup.py")))


def test_executables_the_docs_name_exist():
    scripts = _entry_points()
    named = set()
    for doc in INTEGRATOR_DOCS:
        named |= set(re.findall(r"\b(turbopi-[a-z-]+[a-z])\b", _text(doc)))
        named |= set(re.findall(r"ros2 run turbopi_ros (\w+)", _text(doc)))
    assert named - scripts == set(), f"named in the docs, not console scripts in setup.py: {named - scripts}"
    docs = "".join(_text(d) for d in INTEGRATOR_DOCS)
    for launch in set(re.findall(r"ros2 launch turbopi_ros ([\w.]+)", docs)):
        assert (REPO / "launch" / launch).exists(), launch
    for module in set(re.findall(r"python -m (turbopi_ros(?:\.\w+)*)(?![\w.<])", docs)):
        path = REPO / Path(*module.split("."))
        assert path.with_suffix(".py").exists() or (path / "__main__.py").exists(), module


TOOLS = {"turbopi-replay": "replay", "turbopi-soak": "soak", "turbopi-demo": "demo", "turbopi-bench": "bench",
         "turbopi-verify": "verify", "turbopi-exec-bench": "execution_bench",
         "turbopi-bench-preprocess": "bench_preprocess", "turbopi-kernel-targets": "kernel_targets"}


def test_command_line_options_the_docs_show_exist():
    """Every --option the docs show on a turbopi-* command line is an argparse option of that tool."""
    wrong = []
    for doc in INTEGRATOR_DOCS:
        for line in _text(doc).splitlines():
            for tool, module in TOOLS.items():
                m = re.search(re.escape(tool) + r"(?![\w-])(.*)", line)
                if not m:
                    continue
                source = _text(REPO / "turbopi_ros" / "tools" / f"{module}.py")
                for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", m.group(1)):
                    if f'"{option}"' not in source:
                        wrong.append(f"{doc.name}: {tool} {option}")
    assert not wrong, wrong


def test_diagnostics_keys_node_md_lists_are_published():
    """The /diagnostics values docs/node.md lists are keys the node's status code writes."""
    text = _text(REPO / "docs" / "node.md")
    section = text[text.index("- **`/diagnostics`**"):text.index("- A one-line status log")]
    source = "".join(_text(REPO / "turbopi_ros" / p) for p in
                     ("ros/node_status.py", "ros/warm_up.py", "policy/policy.py"))
    stages = re.search(r"STAGES = \(([^)]*)\)", source).group(1)
    times = re.search(r"TIMES = STAGES \+ \(([^)]*)\)", source).group(1)
    timed = {f"{s}_ms" for s in re.findall(r'"(\w+)"', stages + times)}
    wrong = []
    for key in set(re.findall(r"`([a-z_<>]+)`", section)):
        if key in timed or key.startswith("age_") or key in ("turbopi_node", "on_stale"):
            continue
        if not re.search(rf'["\']{re.escape(key)}["\']|\b{re.escape(key)}=', source):
            wrong.append(key)
    assert not wrong, f"docs/node.md lists /diagnostics keys the node does not publish: {sorted(wrong)}"


def test_a_managed_node_declares_no_parameter_before_its_first_configure():
    """docs/node.md (Managed mode): before the first configure `ros2 param set` is refused (nothing is declared yet);
    only after a cleanup is a run-time parameter set while unconfigured checked and kept for the next configure."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.exceptions import ParameterNotDeclaredException
    from rclpy.parameter import Parameter

    from turbopi_ros.ros.lifecycle_node import ManagedTurbopiNode

    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        node = ManagedTurbopiNode(context=context)
        try:
            assert not node.has_parameter("prompt")
            with pytest.raises(ParameterNotDeclaredException):
                node.set_parameters([Parameter("prompt", value="pick up the cup")])
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
