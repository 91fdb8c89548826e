"""main() for this package's nodes: init, build, spin, shut down cleanly.

Both nodes spin on a SingleThreadedExecutor: their callbacks only store messages, publish or answer a service (the
inference runs on the node's own worker thread). rclpy's MultiThreadedExecutor dispatches every callback through a
thread pool from a busy main loop (ros2/rclpy#1223, #1452): on a 2-core machine beside the inference it doubled
fake_robot's CPU use and stalled its 50 Hz timers for 1-2 s at a time; the single-threaded executor did neither.
"""
from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


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
        rclpy.logging.get_logger(name).fatal(f"cannot start: {e}")
        code = 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if code:
        raise SystemExit(code)
