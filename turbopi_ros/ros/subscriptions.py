"""The node's input subscriptions and their QoS: the cameras and the joint states keep only the newest message, the
prompt is heard from latched and plain publishers alike. The cameras', the joint states' and the action outputs' QoS
take ROS 2's standard overrides (``qos_overrides.<topic>.subscription.reliability`` ...: qos_overrides.py)."""
from __future__ import annotations

from typing import Callable, Dict, Sequence

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String

from .parameters import resolved_topic
from .qos_overrides import create_overridable
from .ros_compat import subscription_event_callbacks

# Sensor-data QoS (best effort, volatile: matches both best-effort and reliable publishers) with a queue of one: when
# the executor is busy, only the newest frame is waiting, never a backlog to deserialize.
NEWEST = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                    durability=qos_profile_sensor_data.durability, history=qos_profile_sensor_data.history)


def resolved_input_topics(node, topics: Dict[str, str], joint_states: str) -> Dict[str, str]:
    """input name -> the topic ``node`` subscribes to for it, its namespace and remaps applied (``joint_states`` in
    /robot1 is /robot1/joint_states), as messages about the inputs name it. ``joint_states``: the joint states'
    input name (the others are cameras). A name rcl refuses is a ValueError naming the parameter that gave it."""
    return {name: resolved_topic(node, topic, "joint_states.topic" if name == joint_states
                                 else f"cameras.topics (camera '{name}')") for name, topic in topics.items()}


def subscribe_sensors(node, cameras: Sequence[str], topics: Dict[str, str], compressed: Dict[str, bool],
                      joint_states_topic: str, on_image: Callable[[str, object], None],
                      on_joint_states: Callable[[JointState], None]) -> None:
    """One subscription per camera (CompressedImage where ``compressed[name]``, else Image; ``on_image(name, msg)``)
    and one for the joint states, each keeping only the newest message unless overridden (qos_overrides.py)."""
    for name in cameras:
        create_overridable(node.create_subscription, CompressedImage if compressed[name] else Image, topics[name],
                           lambda msg, name=name: on_image(name, msg), NEWEST)
    create_overridable(node.create_subscription, JointState, joint_states_topic, on_joint_states, NEWEST)


def subscribe_prompt(node, on_prompt: Callable[[String], None]) -> None:
    """~/prompt from a latched (transient local) publisher and from a plain one (`ros2 topic pub`): a transient local
    subscription is incompatible with a volatile publisher, a volatile one misses what was latched before it started,
    so there is one of each (the caller ignores a repeated prompt). The transient local one does not log the expected
    mismatch with plain publishers (the volatile one receives those)."""
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(String, "~/prompt", on_prompt, latched,
                             event_callbacks=subscription_event_callbacks(incompatible_qos=lambda event: None))
    node.create_subscription(String, "~/prompt", on_prompt,
                             QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                        durability=DurabilityPolicy.VOLATILE))
