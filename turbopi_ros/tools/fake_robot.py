"""fake_robot: synthetic cameras (a moving pattern) and joint states that follow ~/joint_command, so the loop closes.

Each camera publishes a gradient with a bright bar sweeping across it (size, rate, encoding and compression are
parameters). Joint states move towards the newest command with a first-order lag of ``tracking_time_constant_s``.
"""
from __future__ import annotations

import math
import threading

import numpy as np
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray

from ..ros.conversions import SUPPORTED_ENCODINGS, rgb_to_compressed, rgb_to_image
from ..ros.parameters import Param, declare_parameters

PARAMETERS = {
    "cameras.topics": Param(["/camera/image_raw"], "camera topics to publish", items=str),
    "cameras.compressed": Param([False], "per camera: publish sensor_msgs/CompressedImage (jpeg) instead of Image",
                                items=bool),
    "camera.width": Param(320, "image width", min=1, max=8192),
    "camera.height": Param(240, "image height", min=1, max=8192),
    "camera.rate_hz": Param(15.0, "frames per second per camera", min=0.1, max=1000.0),
    "camera.encoding": Param("rgb8", "encoding of raw images", choices=SUPPORTED_ENCODINGS),
    "joint_states.topic": Param("/joint_states", "where joint states are published"),
    "joint_states.rate_hz": Param(50.0, "joint state rate", min=0.1, max=2000.0),
    "joints": Param(["joint_1"], "joint names published in JointState", items=str),
    "command.topic": Param("turbopi_node/joint_command", "Float64MultiArray commands to follow (relative: those of "
                           "the turbopi_node in this namespace)"),
    "command.joints": Param(["joint_1"], "joint names of the command's entries, in order", items=str),
    "tracking_time_constant_s": Param(0.05, "first-order lag of the joints following the command", min=0.0,
                                      max=60.0),
}


def pattern(width: int, height: int, t: float, phase: float) -> np.ndarray:
    """A colour gradient with a bright vertical bar sweeping across (uint8 RGB)."""
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    img = np.empty((height, width, 3), dtype=np.float32)
    img[..., 0] = 255 * x
    img[..., 1] = 255 * y
    img[..., 2] = 128 + 100 * math.sin(t + phase)
    bar = abs(x - (0.5 + 0.45 * math.sin(0.8 * t + phase))) < 0.04
    img[np.broadcast_to(bar, (height, width))] = 255
    return img.astype(np.uint8)


class FakeRobot(Node):
    def __init__(self, **kwargs):
        super().__init__("fake_robot", **kwargs)
        p = declare_parameters(self, PARAMETERS)
        self.width, self.height = int(p["camera.width"]), int(p["camera.height"])
        self.encoding = p["camera.encoding"]
        topics, compressed = list(p["cameras.topics"]), list(p["cameras.compressed"])
        if len(compressed) != len(topics):
            raise ValueError(f"cameras.compressed has {len(compressed)} entries for {len(topics)} topics")
        self.cameras = [(self.create_publisher(CompressedImage if c else Image, t, qos_profile_sensor_data), c)
                        for t, c in zip(topics, compressed)]
        self.joints = list(p["joints"])
        self.positions = np.zeros(len(self.joints))
        self.velocities = np.zeros(len(self.joints))
        self.target = self.positions.copy()
        index = {n: i for i, n in enumerate(self.joints)}
        missing = [j for j in p["command.joints"] if j not in index]
        if missing:
            raise ValueError(f"command.joints {missing} are not among joints {self.joints}")
        self.command_index = [index[j] for j in p["command.joints"]]
        self.tau = float(p["tracking_time_constant_s"])
        self.lock = threading.Lock()
        # Reliable, as robot drivers publish joint states: robot_state_publisher and RViz subscribe reliably (a
        # best-effort publisher reaches neither); sensor-data subscribers (turbopi_node) match it too.
        self.joint_pub = self.create_publisher(JointState, p["joint_states.topic"], 10)
        self.create_subscription(Float64MultiArray, p["command.topic"], self._on_command, 10)
        self.joint_period = 1.0 / float(p["joint_states.rate_hz"])
        self.create_timer(1.0 / float(p["camera.rate_hz"]), self._publish_images)
        self.create_timer(self.joint_period, self._publish_joints)
        self.commands_received = 0

    def _on_command(self, msg: Float64MultiArray) -> None:
        if len(msg.data) != len(self.command_index):
            self.get_logger().warning(f"command has {len(msg.data)} values, expected {len(self.command_index)}",
                                      throttle_duration_sec=5.0)
            return
        with self.lock:
            self.target[self.command_index] = msg.data
            self.commands_received += 1

    def _publish_images(self) -> None:
        now = self.get_clock().now()
        t = now.nanoseconds * 1e-9
        for i, (pub, is_compressed) in enumerate(self.cameras):
            rgb = pattern(self.width, self.height, t, phase=i)
            msg = rgb_to_compressed(rgb) if is_compressed else rgb_to_image(rgb, self.encoding)
            msg.header.stamp = now.to_msg()
            msg.header.frame_id = f"camera_{i}"
            pub.publish(msg)

    def _publish_joints(self) -> None:
        with self.lock:
            alpha = 1.0 - math.exp(-self.joint_period / self.tau) if self.tau > 0 else 1.0
            new = self.positions + alpha * (self.target - self.positions)
            self.velocities = (new - self.positions) / self.joint_period
            self.positions = new
            msg = JointState(name=self.joints, position=self.positions.tolist(), velocity=self.velocities.tolist())
        msg.header.stamp = self.get_clock().now().to_msg()
        self.joint_pub.publish(msg)


def main(args=None) -> None:
    from ..ros.spin import run_node

    run_node("turbopi_ros.tools.fake_robot", "FakeRobot", "fake_robot", args)


if __name__ == "__main__":
    main()
