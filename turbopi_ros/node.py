"""turbopi_node's entry point: ``ros2 run turbopi_ros turbopi_node``, ``python -m turbopi_ros.node``.

The node itself is TurbopiNode in policy_node.py. This module imports nothing heavy: importing torch and loading the
model take seconds, and a Ctrl-C in that time must end the process as cleanly as one later (spin.py), so the signal
handling is in place before the node's module is imported.
"""
import sys


def main(args=None) -> None:
    # The inference worker is Python-heavy between kernels; a short GIL switch interval keeps the executor's
    # subscriptions and the command timer on time while it runs.
    sys.setswitchinterval(0.0005)
    from .ros.spin import run_node

    run_node("turbopi_ros.ros.policy_node", "TurbopiNode", "turbopi_node", args)


if __name__ == "__main__":
    main()
