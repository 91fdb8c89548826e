"""Node parameters: one table of defaults, descriptions and constraints, declared with full ROS descriptors.

``ros2 param describe`` shows what each parameter takes: ``read_only`` for everything that needs a restart, integer
and floating-point ranges, and the accepted values of enumerations in ``additional_constraints``. Values are checked
once more here at start (rclpy skips range checks for a float parameter given as a YAML integer), so a node with a
value that cannot work stops with ``cannot start: parameter <name>: ...`` instead of failing at every inference.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node


@dataclasses.dataclass(frozen=True)
class Param:
    default: Any
    description: str
    runtime: bool = False  # may change while the node runs; everything else is read-only (restart to change)
    min: Optional[float] = None  # inclusive bounds for numbers
    max: Optional[float] = None
    choices: Optional[Tuple[str, ...]] = None  # enumeration (exact strings)
    pattern: Optional[str] = None  # a regular expression the whole string must match, with ``pattern_text``
    pattern_text: str = ""
    required: bool = False  # a string or list that must not be empty
    items: Optional[type] = None  # for a list: the type of its elements (str, float or bool)

    @property
    def is_float(self) -> bool:
        return isinstance(self.default, float) or self.items is float

    def constraints(self) -> str:
        parts = []
        if self.choices:
            parts.append("one of: " + ", ".join(self.choices))
        if self.pattern_text:
            parts.append(self.pattern_text)
        if self.required:
            parts.append("required (must not be empty)")
        if self.min is not None or self.max is not None:
            parts.append(f"range [{_num(self.min)}, {_num(self.max)}]")
        parts.append("changeable at run time" if self.runtime else "read-only: restart the node to change it")
        return "; ".join(parts)

    def descriptor(self) -> ParameterDescriptor:
        # Dynamic typing where rclpy's static typing would refuse good values: a float given as a YAML integer, and
        # an empty default list (rclpy types it as a byte array); check() enforces the types instead.
        dynamic = self.is_float or (isinstance(self.default, list) and not self.default)
        d = ParameterDescriptor(description=self.description, read_only=not self.runtime, dynamic_typing=dynamic,
                                additional_constraints=self.constraints())
        if self.min is not None and self.max is not None and not isinstance(self.default, list):
            if isinstance(self.default, float):
                d.floating_point_range = [FloatingPointRange(from_value=float(self.min), to_value=float(self.max),
                                                             step=0.0)]
            elif isinstance(self.default, int) and not isinstance(self.default, bool):
                d.integer_range = [IntegerRange(from_value=int(self.min), to_value=int(self.max), step=1)]
        return d

    def check(self, name: str, value: Any) -> Any:
        """The value, with integers accepted for floats; a ValueError naming the parameter and what it takes."""
        if self.is_float:
            value = _as_floats(name, value, isinstance(self.default, list))
        elif self.items is not None:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, self.items) for v in value):
                raise ValueError(f"parameter {name}: expected a list of {self.items.__name__}, got {value!r}")
            value = list(value)
        values = value if isinstance(value, (list, tuple)) else [value]
        if self.required and (value == "" or (isinstance(value, (list, tuple)) and len(value) == 0)):
            raise ValueError(f"parameter {name} is not set: {self.description}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"parameter {name}: {value!r} is not one of {list(self.choices)}")
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            raise ValueError(f"parameter {name}: {value!r} is not {self.pattern_text}")
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and (
                    (self.min is not None and v < self.min) or (self.max is not None and v > self.max)):
                raise ValueError(f"parameter {name}: {v!r} is out of range [{_num(self.min)}, {_num(self.max)}]")
        return value


def _num(x: Optional[float]) -> str:
    return "-inf" if x is None else f"{x:g}"


def _as_floats(name: str, value, is_list: bool):
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if is_list and isinstance(value, (list, tuple)) and all(number(v) for v in value):
        return [float(v) for v in value]
    if not is_list and number(value):
        return float(value)
    raise ValueError(f"parameter {name}: expected {'a list of numbers' if is_list else 'a number'}, got {value!r}")


NULL = "null"  # an unset list parameter, as `ros2 param dump` writes it and a parameter file reads it back


def declare_parameters(node: Node, table: Dict[str, Param]) -> Dict[str, Any]:
    """Declare every parameter of ``table`` up front with its descriptor and return the checked values."""
    values = {}
    for name, param in table.items():
        try:
            value = node.declare_parameter(name, param.default, param.descriptor()).value
            if isinstance(param.default, list) and (value is None or value == NULL):
                # an empty list in a parameter file arrives unset (rcl cannot tell its element type); `ros2 param
                # dump` writes an unset parameter as null, which rcl's YAML parser gives back as the string 'null'
                value = []
        except ParameterException as e:  # a wrong type, or a value outside the descriptor's range
            raise ValueError(f"parameter {name}: {e} (expected: {param.constraints()})") from None
        values[name] = param.check(name, value)
    return values


def resolved_topic(node: Node, topic: str, parameter: str) -> str:
    """``topic`` as ``node`` resolves it, its namespace and remaps applied (``joint_states`` in /robot1 is
    /robot1/joint_states). A name rcl refuses is a ValueError naming ``parameter``, the one that gave it (rclpy's
    InvalidTopicNameException as the topic is made ended the node with a traceback)."""
    try:
        return node.resolve_topic_name(topic)
    except RuntimeError as e:  # rcl's RCLError: no topic name
        why = str(e).split(", at ")[0].replace("failed to resolve name: ", "")
        raise ValueError(f"parameter {parameter}: {topic!r} is no topic name: {why} (expected a ROS topic name: "
                         "/joint_states, camera/image_raw, ~/image)") from None


def ignored_parameters(node: Node, table: Dict[str, Param]) -> str:
    """A warning naming the parameters given to ``node`` (params file, -p) that it does not declare, each with the
    declared name closest to it: rcl ignores them, so a typo (``action.max_jmp``) would leave a setting at its default
    without a word. "" when there are none. A warning, not a refusal: a ``/**`` section may hold other nodes'
    parameters. Call after every parameter is declared; rclpy's own do not count, nor do ``qos_overrides.*``
    (declared when the topics are made: ignored_qos_overrides)."""
    ignored = [n for n in _undeclared(node) if not n.startswith("qos_overrides.")]
    if not ignored:
        return ""
    return (f"parameters given that {node.get_name()} does not declare, ignored: {_with_closest(ignored, table)} "
            "(docs/node.md lists its parameters)")


def ignored_qos_overrides(node: Node) -> str:
    """A warning naming the ``qos_overrides.*`` given to ``node`` that no topic of it took (a topic it does not have,
    a policy it does not override, a typo), each with the closest one it declared; "" when there are none. Call
    once the node's topics are made: rclpy declares an override's parameter when it creates the topic."""
    ignored = [n for n in _undeclared(node) if n.startswith("qos_overrides.")]
    if not ignored:
        return ""
    # get_parameters_by_prefix, not list_parameters: rclpy 3 (Humble) has no Node.list_parameters
    taken = ["qos_overrides." + name for name in node.get_parameters_by_prefix("qos_overrides")]
    return (f"QoS overrides given that no topic of {node.get_name()} takes, ignored: {_with_closest(ignored, taken)} "
            "(its cameras, joint states and action outputs take history, depth and reliability: docs/node.md)")


def _undeclared(node: Node) -> list:
    given = getattr(node, "_parameter_overrides", {})  # (rclpy's, on every distro; {} where it is missing)
    return sorted(n for n in given if not node.has_parameter(n))


def _with_closest(names: Sequence[str], declared: Iterable[str]) -> str:
    """``names`` quoted and comma-separated, each with the closest of ``declared`` where one is close."""
    import difflib

    choices = list(declared)

    def named(name: str) -> str:
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.75)
        return f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    return ", ".join(map(named, names))


def on_parameters_set(node: Node, table: Dict[str, Param], apply: Optional[Callable[[Dict[str, Any]], None]] = None,
                      fixed: Optional[Dict[str, Any]] = None) -> list:
    """Validate run-time changes before they are set and apply them after (``apply`` None: validate only, as a
    managed node does while unconfigured: its parameters stay declared for the next configure).

    rclpy 7 (Jazzy) and later: validation in ``add_on_set_parameters_callback`` (which must not change state, as
    the rclpy docs ask) and ``apply`` in ``add_post_set_parameters_callback``. rclpy 3 (Humble) has no post-set
    callback: there ``apply`` runs at the end of the on-set callback, once the change has been validated. ``fixed``:
    parameters outside ``table`` (rclpy's own) with the value the node was built for, which it cannot follow at run
    time (use_sim_time: its clock, command stream and pause watch are set up for it): another value is refused.
    Returns the callbacks registered, for ros_compat.remove_parameter_callbacks (a managed node's cleanup).
    """
    from rcl_interfaces.msg import SetParametersResult

    from .ros_compat import register_post_set_callback

    def validated(params: Sequence) -> Tuple[Optional[str], Dict[str, Any]]:
        changes = {}
        for p in params:
            if fixed and p.name in fixed and p.value != fixed[p.name]:
                return (f"parameter {p.name}: the node was started with {fixed[p.name]!r}; read-only: restart the "
                        "node to change it"), {}
            if p.name not in table:  # use_sim_time and other rclpy parameters
                continue
            try:
                changes[p.name] = table[p.name].check(p.name, p.value)
            except ValueError as e:
                return str(e), {}
        return None, changes

    post_set = []  # [True] once a post-set callback is registered

    def on_set(params) -> SetParametersResult:
        error, changes = validated(params)
        if error:
            return SetParametersResult(successful=False, reason=error)
        if apply is not None and not post_set and changes:
            apply(changes)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    registered = [("on", on_set)]
    if apply is None:
        return registered

    def post(params):
        apply(validated(params)[1])

    if register_post_set_callback(node, post):
        post_set.append(True)
        registered.append(("post", post))
    return registered
