"""Which ROS 2 this runs on, and the rclpy behaviour that differs between the releases the package supports.

CI runs the ROS-facing tests on Kilted (rclpy 9.1, the default venv) and Jazzy (rclpy 7.1, what a Jetson Thor on
JetPack 7 / Ubuntu 24.04 runs); Humble (rclpy 3.3, Python 3.10) is compile-checked only. Where rclpy behaves
differently across these, the package calls a function here instead, with a comment naming the versions; APIs that
exist only in some of them are kept out of the package altogether (test/test_ros_compat.py lists and checks them).

``python -m turbopi_ros.ros.ros_compat`` prints a one-line header naming the distro (scripts/test.sh and demo.sh do).
Importing this module does not import rclpy.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Optional

# rclpy's major version in each distro: Humble 3.3, Iron 4.1, Jazzy 7.1, Kilted 9.1.
DISTRO_BY_RCLPY_MAJOR = {3: "humble", 4: "iron", 7: "jazzy", 9: "kilted"}


def rclpy_version() -> Optional[str]:
    """rclpy's version: the ``ros-rclpy`` wheel's metadata in a venv, rclpy's package.xml in a ROS install."""
    from importlib import metadata

    for dist in ("ros-rclpy", "rclpy"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        from ament_index_python.packages import get_package_share_directory

        with open(os.path.join(get_package_share_directory("rclpy"), "package.xml")) as f:
            found = re.search(r"<version>\s*([^<\s]+)\s*</version>", f.read())
        return found.group(1) if found else None
    except Exception:  # no ament index, or no rclpy in it
        return None


def ros_distro() -> str:
    """The distro of the rclpy installed here, told by its version (a venv sets no ROS_DISTRO); else ROS_DISTRO (a
    sourced ROS install); else "unknown"."""
    version = rclpy_version() or ""
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else None
    return DISTRO_BY_RCLPY_MAJOR.get(major) or os.environ.get("ROS_DISTRO") or "unknown"


def header() -> str:
    env = os.path.relpath(sys.prefix) if sys.prefix != sys.base_prefix else sys.prefix
    return f"== ROS 2 {ros_distro()}: rclpy {rclpy_version() or 'unknown'}, Python {sys.version.split()[0]} ({env}) =="


def try_shutdown(context=None) -> None:
    """``rclpy.try_shutdown`` that also hands SIGINT and SIGTERM back to the process, on every rclpy.

    rclpy 9 (Kilted) try_shutdown uninstalls rclpy's signal handlers when it shuts the default context down, as
    ``rclpy.shutdown`` does everywhere. rclpy 7 (Jazzy) and 3 (Humble) try_shutdown leave them installed, and from
    then on a SIGTERM is swallowed: a process manager stopping a node that is still tearing down, or a CI timeout
    stopping the test process, is ignored instead of ending it. A non-default context keeps the handlers (both).
    """
    import rclpy
    from rclpy.signals import uninstall_signal_handlers
    from rclpy.utilities import get_default_context

    rclpy.try_shutdown(context=context)
    if not _try_shutdown_uninstalls_handlers() and (context is None or context is get_default_context()):
        uninstall_signal_handlers()


def shutdown_keeping_signal_handlers() -> None:
    """``rclpy.try_shutdown`` for a process that owns SIGINT and SIGTERM itself (rclpy.init with
    SignalHandlerOptions.NO, spin.py): the handlers are left alone.

    rclpy 9's try_shutdown uninstalls rclpy's handlers even where none were installed, and doing so sets SIGINT and
    SIGTERM to SIG_DFL for a moment before putting the process's own disposition back (seen with strace): a second
    Ctrl-C in that moment would kill the node. rclpy 7 and 3 try_shutdown do not touch them.
    """
    import rclpy

    if _try_shutdown_uninstalls_handlers():
        rclpy.try_shutdown(uninstall_handlers=False)
    else:
        rclpy.try_shutdown()


def _try_shutdown_uninstalls_handlers() -> bool:
    """rclpy >= 9 (Kilted): try_shutdown uninstalls the signal handlers, unless told not to (uninstall_handlers)."""
    import inspect

    import rclpy

    return "uninstall_handlers" in inspect.signature(rclpy.try_shutdown).parameters


def subscription_event_callbacks(**callbacks):
    """rclpy's SubscriptionEventCallbacks: in rclpy.event_handler from rclpy 4 (Iron, Jazzy 7, Kilted 9; the old
    rclpy.qos_event warns there), in rclpy.qos_event in rclpy 3 (Humble)."""
    try:
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:
        from rclpy.qos_event import SubscriptionEventCallbacks
    return SubscriptionEventCallbacks(**callbacks)


def callbacks_get_message_info() -> bool:
    """Whether a subscription callback taking two arguments is called with the message and its MessageInfo (the rmw
    source and reception timestamps): rclpy 3.4+ (Iron, Jazzy 7, Kilted 9). rclpy 3.3 (Humble) calls every callback
    with the message only, so a two-argument one raises TypeError in the executor."""
    from rclpy.subscription import Subscription

    return hasattr(Subscription, "CallbackType")


def register_post_set_callback(node, callback) -> bool:
    """Register ``callback`` to run after parameters are set: rclpy 4+ (Iron, Jazzy 7, Kilted 9) have
    Node.add_post_set_parameters_callback; rclpy 3 (Humble) has none. Returns False there: the caller then applies
    changes at the end of its add_on_set_parameters_callback instead."""
    register = getattr(node, "add_post_set_parameters_callback", None)
    if register is None:
        return False
    register(callback)
    return True


def remove_parameter_callbacks(node, registered) -> None:
    """Remove the parameter callbacks ``registered`` lists ((kind, callback): "on" set, or "post" set, which only
    rclpy 4+ has), as parameters.on_parameters_set returns them."""
    for kind, callback in registered:
        if kind == "on":
            node.remove_on_set_parameters_callback(callback)
        else:
            node.remove_post_set_parameters_callback(callback)


def refuse_unavailable_transitions(node) -> None:
    """A lifecycle node's ChangeState request for a transition its current state does not have, named by id
    (launch_ros's ChangeState event, a lifecycle manager, ``ros2 service call``), is answered success=False and
    logged, on every rclpy.

    rclpy 8+ (Kilted 9) does so itself. rclpy 7 (Jazzy) and 3 (Humble) let rcl's RCLError ("Transition is not
    registered") out of the service callback, and so out of the executor's spin_once: the node process ended with a
    traceback. (Named by label, each answers success=False.) A node made without its lifecycle services has none."""
    from rclpy.impl.implementation_singleton import rclpy_implementation

    service = getattr(node, "_service_change_state", None)
    if service is None:
        return
    answer = service.callback

    def change_state(request, response):
        try:
            return answer(request, response)
        except rclpy_implementation.RCLError as e:
            label = f" ({request.transition.label})" if request.transition.label else ""
            node.get_logger().error(f"change_state: transition {request.transition.id}{label} refused: "
                                    f"{' '.join(str(e).split())} (expected one the current state has: ros2 lifecycle "
                                    "list <node>)")
            response.success = False
            return response
    service.callback = change_state


if __name__ == "__main__":
    print(header(), flush=True)
