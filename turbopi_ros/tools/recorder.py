"""BagRecorder: records turbopi_node's inputs and outputs to MCAP (``turbopi-demo --record OUT.mcap``), so that
turbopi-replay can be tried with no robot. On a robot, ``ros2 bag record`` does the same job.

The messages are written as they arrive, serialized (raw subscriptions: the bytes on the wire, no deserializing),
stamped with their arrival time on this node's clock, as rosbag2 does. The inputs are subscribed best effort with a
deep queue (they match best-effort and reliable publishers and nothing is dropped here when this process is busy),
the node's outputs reliably; cameras first, then joint states, in the node's own order.

A recording is complete when it holds every input of every chunk and the node's first chunk: ``wait_for_inputs``
(a message on every input topic) before the node starts and ``wait_for_outputs`` (its publishers discovered) before it
is enabled get that (turbopi-demo --record does both). Without them, a recorder that discovers a publisher late (DDS
discovery retries every few seconds when its first announcements are missed, as on a loaded machine) misses what the
node already used.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from ..ros.node_config import NodeConfig
from .bags import COMPRESSED, IMAGE, JOINT_STATE, TRAJECTORY, BagWriter
from .processes import CHUNK_TOPIC, COMMAND_TOPIC

QUEUE = 100
MESSAGE_CLASSES = {IMAGE: Image, COMPRESSED: CompressedImage, JOINT_STATE: JointState, TRAJECTORY: JointTrajectory,
                   "std_msgs/msg/Float64MultiArray": Float64MultiArray}


def node_topics(config: NodeConfig) -> List[Tuple[str, str, bool]]:
    """(topic, type, is_input) of what turbopi_node with the configuration ``config`` reads and publishes."""
    cameras = config.cameras
    topics = [(t, COMPRESSED if c else IMAGE, True) for t, c in zip(cameras.topics, cameras.compressed)]
    topics.append((config.joint_states.topic, JOINT_STATE, True))
    topics += [(CHUNK_TOPIC, TRAJECTORY, False), (COMMAND_TOPIC, "std_msgs/msg/Float64MultiArray", False)]
    return topics


class BagRecorder(Node):
    def __init__(self, path: Path, topics: List[Tuple[str, str, bool]], **kwargs):
        super().__init__("turbopi_recorder", **kwargs)
        self.bag = BagWriter(Path(path))
        self.lock = threading.Lock()
        self.counts: Dict[str, int] = {}
        self.inputs = [topic for topic, _, is_input in topics if is_input]
        self.outputs = [topic for topic, _, is_input in topics if not is_input]
        inputs = QoSProfile(depth=QUEUE, reliability=qos_profile_sensor_data.reliability,
                            durability=qos_profile_sensor_data.durability)
        outputs = QoSProfile(depth=QUEUE, reliability=ReliabilityPolicy.RELIABLE)
        for topic, msgtype, is_input in topics:
            self.bag.connection(topic, msgtype)
            self.counts[topic] = 0
            self.create_subscription(MESSAGE_CLASSES[msgtype], topic,
                                     lambda raw, topic=topic, msgtype=msgtype: self._write(topic, msgtype, raw),
                                     inputs if is_input else outputs, raw=True)

    def _write(self, topic: str, msgtype: str, raw: bytes) -> None:
        t_ns = self.get_clock().now().nanoseconds
        with self.lock:
            if self.bag is not None:
                self.bag.write(topic, msgtype, t_ns, raw)
                self.counts[topic] += 1

    def wait_for_inputs(self, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
        """Until a message of every input topic is written. RuntimeError naming the topics still silent once
        ``timeout_s`` has passed or ``alive()`` (the publishing process runs) turns false."""
        self._wait(lambda: [t for t in self.inputs if self.counts[t] == 0], "no message recorded", timeout_s, alive)

    def wait_for_outputs(self, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
        """Until this node has discovered a publisher of every output topic; else RuntimeError as wait_for_inputs."""
        self._wait(lambda: [t for t in self.outputs if self.count_publishers(t) == 0], "no publisher discovered",
                   timeout_s, alive)

    def _wait(self, pending: Callable[[], List[str]], what: str, timeout_s: float, alive: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                left = pending()
            if not left:
                return
            if not alive() or time.monotonic() > deadline:
                why = "its publisher exited" if not alive() else f"after {timeout_s:g} s"
                raise RuntimeError(f"recorder: {what} on {', '.join(left)} ({why})")
            time.sleep(0.02)

    def close(self) -> Dict[str, int]:
        """Finish the file (index, summary); later messages are dropped. Returns the message count per topic."""
        with self.lock:
            if self.bag is not None:
                self.bag.close()
                self.bag = None
            return dict(self.counts)
