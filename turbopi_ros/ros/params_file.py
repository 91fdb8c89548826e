"""turbopi_node's parameters read from its --params-file YAML without starting the node (turbopi-replay, the demo's
recorder): the same section, the same defaults and the same checks, so a YAML the node refuses is refused here with
the same message, and a YAML it accepts means the same thing here.

rcl applies every section whose key matches the node's fully qualified name (``/turbopi_node``, or the one given
as ``node``: ``/robot1/turbopi_node``), a key without its leading ``/`` under the root, ``/*`` standing for one
name and ``/**`` for any number (``/**``, ``/**/turbopi_node``, ``/*``, ``/robot1/*``), later sections overriding
earlier ones; nested mappings are dotted names (``model: {seed: 0}`` is ``model.seed``). Like rclpy's declared
parameters, a value must have its default's type (a float also accepts an integer); names the node does not declare
are ignored by it, and listed by ``unknown`` here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

import yaml

if TYPE_CHECKING:
    from .node_config import NodeConfig

NODE = "turbopi_node"
NODE_FQN = f"/{NODE}"  # the node as launched: in the root namespace, not renamed
ROS_PARAMETERS = "ros__parameters"
ROS_BUILTINS = {"use_sim_time", "start_type_description_service"}  # rclpy's own parameters, set from YAML too


def applies(key: str, node: str = NODE_FQN) -> bool:
    """Whether rcl applies the section ``key`` to the node of fully qualified name ``node``: rclpy's matching, where
    ``/*`` becomes the regular expression ``(/\\w+)``, one name (so ``/**`` is ``(/\\w+)*``, any number of them). rcl
    refuses a key of other characters than names, ``/`` and ``*``: no node reads it."""
    key = key if key.startswith("/") else "/" + key
    if not re.fullmatch(r"[\w/*]+", key, flags=re.ASCII):
        return False
    try:
        return re.fullmatch(key.replace("/*", r"(/\w+)"), node, flags=re.ASCII) is not None
    except re.error:  # a '*' that follows no '/' (rcl: not a valid node name)
        return False


def read_sections(path: Path, node: str = NODE_FQN) -> Dict[str, Any]:
    """The flattened ros__parameters of every section that applies to the node ``node`` (fully qualified: rcl's
    rules, ``applies``), in file order."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--params-file {path}: {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"--params-file {path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"--params-file {path}: expected a mapping of node names to {{{ROS_PARAMETERS}: ...}}")
    values: Dict[str, Any] = {}
    found = False
    for key, section in doc.items():
        if not isinstance(key, str) or not applies(key, node):
            continue
        if not isinstance(section, dict) or not isinstance(section.get(ROS_PARAMETERS), dict):
            raise ValueError(f"--params-file {path}: section '{key}' has no '{ROS_PARAMETERS}:' mapping")
        values.update(_flatten(section[ROS_PARAMETERS]))
        found = True
    if not found:
        name = node.rsplit("/", 1)[-1]
        raise ValueError(f"--params-file {path}: no parameters for {name if node == NODE_FQN else node}: expected a "
                         f"'/**/{name}: {ROS_PARAMETERS}:' section (found sections {list(doc)})")
    return values


def _flatten(mapping: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def check_type(name: str, param, value: Any) -> None:
    """rclpy's static typing of a declared parameter: the default's type (floats and empty-default lists are
    dynamically typed there and checked by Param.check)."""
    if param.is_float or isinstance(param.default, list):
        return
    kinds: Tuple[type, str]
    if isinstance(param.default, bool):
        kinds = (bool, "a boolean")
    elif isinstance(param.default, int):
        kinds = (int, "an integer")
    else:
        kinds = (str, "a string")
    if not isinstance(value, kinds[0]) or (kinds[0] is int and isinstance(value, bool)):
        raise ValueError(f"parameter {name}: expected {kinds[1]}, got {value!r} (expected: {param.constraints()})")


def load(path: Path, node: str = NODE_FQN) -> "NodeConfig":
    """The node's configuration (node_config.NodeConfig) from the file: every turbopi_node parameter (PARAMETERS in
    node_params.py) with its checked value, the YAML's (the sections that apply to ``node``) or the default. A
    ValueError names the parameter and what it takes, as the node's ``cannot start:`` does."""
    from .node_config import NodeConfig
    from .node_params import PARAMETERS

    given = read_sections(path, node)
    values = {}
    for name, param in PARAMETERS.items():
        value = given.get(name, param.default)
        if value is None and isinstance(param.default, list):
            value = []  # null, as `ros2 param dump` writes an unset (empty-list) parameter: the node takes it so too
        check_type(name, param, value)
        values[name] = param.check(name, value)
    return NodeConfig.from_params(values)


def unknown(path: Path, node: str = NODE_FQN) -> List[str]:
    """Names in the YAML's turbopi_node sections that the node does not declare (it ignores them: typos?)."""
    from .action_outputs import group_table
    from .node_params import PARAMETERS

    given = read_sections(path, node)
    groups = given.get("action.groups", [])
    declared = set(PARAMETERS) | set(group_table(groups) if isinstance(groups, list) else {})
    return sorted(set(given) - declared - ROS_BUILTINS)
