"""turbopi_node's entry point: ``ros2 run turbopi_ros turbopi_node``, ``python -m turbopi_ros.node``.

The node itself is TurbopiNode in policy_node.py. This module imports nothing heavy: importing torch and loading the
model take seconds, and a Ctrl-C in that time must end the process as cleanly as one later (spin.py), so the signal
handling is in place before the node's module is imported.
"""
import sys


MANAGED_FLAG = "--managed"  # a managed (lifecycle) node: ros/lifecycle_node.py


def main(args=None) -> None:
    # The inference worker is Python-heavy between kernels; a short GIL switch interval keeps the executor's
    # subscriptions and the command timer on time while it runs.
    sys.setswitchinterval(0.0005)
    from .ros.spin import run_node

    if MANAGED_FLAG in _non_ros_args(sys.argv if args is None else args):
        run_node("turbopi_ros.ros.lifecycle_node", "ManagedTurbopiNode", "turbopi_node", args)
    else:
        run_node("turbopi_ros.ros.policy_node", "TurbopiNode", "turbopi_node", args)


def _non_ros_args(argv) -> list:
    """The arguments outside ``--ros-args ... [--]`` spans (rcl's own), without importing rclpy."""
    plain, in_ros = [], False
    for arg in list(argv)[1:]:
        if arg == "--ros-args":
            in_ros = True
        elif in_ros and arg == "--":
            in_ros = False
        elif not in_ros:
            plain.append(arg)
    return plain


if __name__ == "__main__":
    main()
