"""main() for this package's nodes: init, build, spin, shut down cleanly.

Both nodes spin on a SingleThreadedExecutor: their callbacks only store messages, publish or answer a service (the
inference runs on the node's own worker thread). rclpy's MultiThreadedExecutor dispatches every callback through a
thread pool from a busy main loop (ros2/rclpy#1223, #1452): on a 2-core machine beside the inference it doubled
fake_robot's CPU use and stalled its 50 Hz timers for 1-2 s at a time; the single-threaded executor did neither.
"""
from __future__ import annotations

import time
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


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
        rclpy.try_shutdown()
    if code:
        raise SystemExit(code)
