"""main() for this package's nodes: init, build, spin on a multi-threaded executor, shut down cleanly."""
from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node


def spin_node(make_node: Callable[[], Node], name: str, args=None, num_threads: int = 2) -> None:
    """Ctrl-C and external shutdown end it quietly (exit 0); a configuration that cannot work (ValueError or
    OSError while building the node) is logged as ``cannot start: ...`` and exits 1."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=num_threads)
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
