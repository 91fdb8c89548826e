"""Bad (and unusual) messages at the conversion level, where the node-level tests (test_node_bad_input.py) cannot reach
or would be slow: a raw 4K frame (the transport needs a larger shared-memory segment to carry it between processes),
a truncated JPEG that the decoder still decodes (OpenCV 4, Humble's, does), and the JointState checks."""
import logging

import numpy as np
import pytest

pytest.importorskip("sensor_msgs")

from sensor_msgs.msg import JointState  # noqa: E402

from turbopi_ros.ros.conversions import (InputError, compressed_to_rgb, image_to_rgb, joint_state_to_vector,  # noqa: E402
                                     rgb_to_compressed, rgb_to_image)
from turbopi_ros.tools.fake_robot import pattern  # noqa: E402
from turbopi_ros.ros.inputs import JOINT_STATES, InputBuffer  # noqa: E402

JOINTS = ["a", "b", "c"]


def _stamped(msg, t=100.0):
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)
    return msg


def test_raw_4k_frame_is_used_and_warned_about_once(caplog):
    buffer = InputBuffer(["base_0_rgb"], {"base_0_rgb": "/cam", JOINT_STATES: "/js"}, JOINTS, max_age_s=0.5)
    rgb = pattern(3840, 2160, 0.0, 0)
    buffer.store("base_0_rgb", _stamped(rgb_to_image(rgb, "bgr8")))
    buffer.store(JOINT_STATES, _stamped(JointState(name=JOINTS, position=[0.0, 1.0, 2.0])))
    with caplog.at_level(logging.WARNING, logger="turbopi_ros.ros.inputs"):
        for _ in range(3):
            obs = buffer.observation(buffer.snapshot(), "go", now=100.1)
    assert np.array_equal(obs.images["base_0_rgb"](), rgb)  # the conversion runs later, on the camera threads
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["camera 'base_0_rgb': 3840x2160 images are used, but each costs tens of ms to convert and "
                        "downscale to the model's input (224x224); publish them smaller (e.g. image_proc's resize) to "
                        "save it"]
    buffer.store("base_0_rgb", _stamped(rgb_to_image(pattern(640, 480, 0.0, 0))))
    with caplog.at_level(logging.WARNING, logger="turbopi_ros.ros.inputs"):
        buffer.observation(buffer.snapshot(), "go", now=100.1)
    assert len(caplog.records) == 1  # a normal size says nothing


def test_truncated_jpeg_is_refused_even_where_it_decodes(monkeypatch):
    msg = rgb_to_compressed(pattern(160, 120, 0.0, 0), "jpeg")
    assert compressed_to_rgb(msg, "wrist").shape == (120, 160, 3)
    msg.data = bytes(msg.data)[:-600]
    with pytest.raises(InputError, match=r"camera 'wrist': compressed image \(jpeg, \d+ bytes\) could not be decoded"):
        compressed_to_rgb(msg, "wrist")  # OpenCV 5 refuses it itself
    import cv2  # OpenCV 4 returns the top of the image and a grey rest, with a warning on stderr only

    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: np.full((120, 160, 3), 128, np.uint8))
    with pytest.raises(InputError, match=r"camera 'wrist': JPEG data \(\d+ bytes\) has no end-of-image marker: the "
                                         r"image was cut short"):
        compressed_to_rgb(msg, "wrist")
    png = rgb_to_compressed(pattern(160, 120, 0.0, 0), "png")
    assert compressed_to_rgb(png, "wrist").shape == (120, 160, 3)  # the marker check is for JPEG only


def test_encoding_names_are_exact():
    msg = rgb_to_image(pattern(8, 4, 0.0, 0), "bgr8")
    msg.encoding = "BGR8"
    with pytest.raises(InputError, match=r"encoding BGR8 not supported \(rgb8, bgr8, rgba8, bgra8, mono8\) \(ROS "
                                         r"encodings are lowercase: 'bgr8'\)"):
        image_to_rgb(msg, "cam")
    msg.encoding = "yuv422"
    with pytest.raises(InputError, match=r"encoding yuv422 not supported \(rgb8, bgr8, rgba8, bgra8, mono8\)$"):
        image_to_rgb(msg, "cam")


@pytest.mark.parametrize("names, positions, message", [
    (["a", "b", "a", "c"], [0.0, 1.0, 2.0, 3.0], r"duplicate joint names \['a'\] in JointState \(expected each joint "
                                                   r"once\)"),
    ([], [], r"JointState has no joint names \(expected names and positions for state.joints \['a', 'b', 'c'\]\)"),
    (["a", "b", "c"], [0.0, float("inf"), float("-inf")], r"non-finite position 'b'=inf, 'c'=-inf; state must be "
                                                          r"finite"),
    (["a", "b", "c"], [0.0, 1.0], r"3 names but 2 positions \(expected one position per name\)"),
], ids=["duplicate", "no names", "inf", "lengths"])
def test_bad_joint_states(names, positions, message):
    with pytest.raises(InputError, match="joint_states: " + message):
        joint_state_to_vector(JointState(name=names, position=positions), JOINTS)


def test_duplicates_outside_the_state_joints_are_refused_too():
    """Which of two positions a joint has cannot be known, whether or not the model uses it: a driver bug to fix."""
    with pytest.raises(InputError, match=r"duplicate joint names \['x'\]"):
        joint_state_to_vector(JointState(name=["a", "b", "c", "x", "x"], position=[0.0] * 5), JOINTS)

