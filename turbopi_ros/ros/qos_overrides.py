"""ROS 2's standard QoS overrides on the node's topics: the cameras', the joint states' and the action outputs' history,
depth and reliability can be set at start with read-only parameters ``qos_overrides.<fully qualified
topic>.<subscription|publisher>.<policy>`` (params file or -p), which rclpy declares when the topic is created. The
prompt's two subscriptions and /diagnostics take none (the prompt's QoS pair is what makes latched and plain
publishers both heard)."""
from __future__ import annotations

import copy
from typing import Callable

from rclpy.qos import HistoryPolicy, QoSProfile
from rclpy.qos_overriding_options import QosCallbackResult, QoSOverridingOptions

OVERRIDES_EXPECTED = "history keep_last or keep_all, depth >= 1 with keep_last, reliability reliable or best_effort"


def _checked(qos: QoSProfile) -> QosCallbackResult:
    result = QosCallbackResult()
    result.successful = not (qos.history == HistoryPolicy.KEEP_LAST and qos.depth < 1)
    result.reason = "" if result.successful else f"depth {qos.depth} keeps no message"  # (create_overridable: expected)
    return result


def overridable() -> QoSOverridingOptions:
    """ROS 2's standard QoS overrides for a topic of the node: history, depth and reliability, as read-only
    parameters ``qos_overrides.<fully qualified topic>.<subscription|publisher>.<policy>`` given at start (params
    file or -p), declared by rclpy when the topic is created. A depth below 1 is refused."""
    return QoSOverridingOptions.with_default_policies(callback=_checked)


def create_overridable(create: Callable, msg_type, topic: str, callback, qos: QoSProfile):
    """``create`` (node.create_subscription or create_publisher; ``callback`` None for a publisher) with ``qos``
    (copied: rclpy writes the overrides into the profile it is given) under ``overridable``. A bad override is a
    ValueError naming the parameter and what it takes (rclpy raises a RuntimeError or a parameter error)."""
    from rclpy.exceptions import InvalidParameterTypeException
    from rclpy.qos_overriding_options import InvalidQosOverridesError

    args = (msg_type, topic) + ((callback,) if callback is not None else ()) + (copy.copy(qos),)
    try:
        return create(*args, qos_overriding_options=overridable())
    except (RuntimeError, InvalidParameterTypeException, InvalidQosOverridesError) as e:
        if isinstance(e, RuntimeError) and "QoS override" not in str(e):  # rcl's own errors (RCLError) stay as they are
            raise
        raise ValueError(f"qos_overrides of {topic}: {e} (expected: {OVERRIDES_EXPECTED})") from None
