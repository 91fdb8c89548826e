"""main() for this package's nodes: init, build, spin, shut down cleanly.

Both nodes spin on a SingleThreadedExecutor: their callbacks only store messages, publish or answer a service (the
inference runs on the node's own worker thread). rclpy's MultiThreadedExecutor dispatches every callback through a
thread pool from a busy main loop (ros2/rclpy#1223, #1452): on a 2-core machine beside the inference it doubled
fake_robot's CPU use and stalled its 50 Hz timers for 1-2 s at a time; the single-threaded executor did neither.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Tuple

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from .ros_compat import try_shutdown


def declare_parameters(node: Node, parameters: Dict[str, Tuple[Any, str]]) -> Dict[str, Any]:
    """Declare ``{name: (default, description)}`` up front and return the values. Floating-point parameters also
    take integers (YAML's ``50`` or ``[0, 1]`` for ``50.0`` or ``[0.0, 1.0]``); any other type mismatch is a
    ValueError naming the parameter and the expected type."""
    values = {}
    for name, (default, description) in parameters.items():
        is_float = isinstance(default, float) or (isinstance(default, list) and default
                                                  and all(isinstance(v, float) for v in default))
        descriptor = ParameterDescriptor(description=description, dynamic_typing=bool(is_float))
        try:
            value = node.declare_parameter(name, default, descriptor).value
        except ParameterException as e:
            raise ValueError(f"parameter {name}: {e}") from None
        if is_float:
            value = _as_floats(name, value, isinstance(default, list))
        values[name] = value
    return values


def _as_floats(name: str, value, is_list: bool):
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if is_list and isinstance(value, (list, tuple)) and all(number(v) for v in value):
        return [float(v) for v in value]
    if not is_list and number(value):
        return float(value)
    raise ValueError(f"parameter {name}: expected {'a list of numbers' if is_list else 'a number'}, got {value!r}")


def _shutting_down(grace_s: float = 1.0) -> bool:
    """Whether the context is (about to be) shut down: Ctrl-C's handler shuts it down a moment after the interrupt."""
    deadline = time.monotonic() + grace_s
    while rclpy.ok() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not rclpy.ok()


def spin_node(make_node: Callable[[], Node], name: str, args=None) -> None:
    """Ctrl-C and external shutdown end it quietly (exit 0); a configuration that cannot work (ValueError or
    OSError while building the node) is logged as ``cannot start: ...`` and exits 1."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, OSError) as e:
        if node is None:
            rclpy.logging.get_logger(name).fatal(f"cannot start: {e}")
            code = 1
        elif rclpy.ok():
            raise
    except Exception:
        # Ctrl-C shuts the context down under a running executor; taking a message at that moment can fail inside
        # rclpy (RuntimeError "Unable to convert call argument '0' to Python object", seen on a loaded 2-core
        # machine). That is a clean shutdown; an error while the context is up is a real one.
        if node is None or not _shutting_down():
            raise
    finally:
        if node is not None:
            node.destroy_node()
        try_shutdown()  # rclpy.try_shutdown, with SIGTERM handed back on every rclpy (ros_compat)
    if code:
        raise SystemExit(code)
