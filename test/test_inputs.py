"""InputBuffer: the node's newest-message rule and input checks, without a node."""
import numpy as np
import pytest

pytest.importorskip("sensor_msgs")

from sensor_msgs.msg import JointState  # noqa: E402

from turbopi_ros.ros.conversions import InputError, rgb_to_compressed, rgb_to_image, sec_to_stamp  # noqa: E402
from turbopi_ros.ros.inputs import InputBuffer, WaitingForInput  # noqa: E402

NOW = 1000.0


def _buffer(max_age=0.5):
    return InputBuffer(["base_0_rgb", "left_wrist_0_rgb"], {"base_0_rgb": "/cam/base", "left_wrist_0_rgb": "/cam/wrist",
                                                           "joint_states": "/joint_states"}, ["a", "b"], max_age)


def _image(t, compressed=False, value=10):
    rgb = np.full((24, 32, 3), value, np.uint8)
    msg = rgb_to_compressed(rgb) if compressed else rgb_to_image(rgb, "rgb8")
    msg.header.stamp = sec_to_stamp(t)
    return msg


def _joints(t, a=0.1, b=0.2):
    msg = JointState(name=["b", "x", "a"], position=[b, 9.0, a])
    msg.header.stamp = sec_to_stamp(t)
    return msg


def _filled(buffer, t=NOW - 0.1):
    buffer.store("base_0_rgb", _image(t))
    buffer.store("left_wrist_0_rgb", _image(t - 0.05, compressed=True))
    buffer.store("joint_states", _joints(t + 0.01))


def test_waiting_names_every_missing_topic():
    buffer = _buffer()
    buffer.store("base_0_rgb", _image(NOW))
    with pytest.raises(WaitingForInput, match=r"no message yet on /cam/wrist \(camera 'left_wrist_0_rgb'\), "
                                              r"/joint_states \(joint_states\)"):
        buffer.observation(buffer.snapshot(), "go", NOW)


def test_observation_from_the_newest_messages():
    buffer = _buffer()
    _filled(buffer)
    buffer.store("base_0_rgb", _image(NOW - 0.02, value=200))  # newest wins
    obs = buffer.observation(buffer.snapshot(), "pick", NOW)
    assert obs.prompt == "pick" and obs.stamp == pytest.approx(NOW - 0.02)
    image = obs.images["base_0_rgb"]()  # conversions are deferred to the policy's camera threads
    assert image.shape == (24, 32, 3) and image[0, 0, 0] == 200
    np.testing.assert_array_equal(obs.state, [0.1, 0.2])  # state.joints order, extra joints ignored


@pytest.mark.parametrize("name, t, message", [
    ("joint_states", NOW - 0.8, r"joint_states: newest message is 0.80 s old \(max_observation_age_s 0.5\)"),
    ("base_0_rgb", NOW + 2.0, r"camera 'base_0_rgb': header.stamp is 2.00 s ahead of the node's clock"),
    ("base_0_rgb", NOW - 2 * 86400, r"over a day: do the clocks differ"),
])
def test_stale_and_future_inputs_are_refused(name, t, message):
    buffer = _buffer()
    _filled(buffer)
    buffer.store(name, _joints(t) if name == "joint_states" else _image(t))
    with pytest.raises(InputError, match=message):
        buffer.observation(buffer.snapshot(), "go", NOW)
    assert buffer.stale(buffer.snapshot(), NOW)


def test_unstamped_input_and_empty_prompt():
    buffer = _buffer()
    _filled(buffer)
    snapshot = buffer.snapshot()
    with pytest.raises(InputError, match="prompt is empty"):
        buffer.observation(snapshot, "  ", NOW)
    buffer.store("left_wrist_0_rgb", _image(0.0))
    with pytest.raises(InputError, match="camera 'left_wrist_0_rgb': header.stamp is zero"):
        buffer.observation(buffer.snapshot(), "go", NOW)


def test_snapshot_is_a_copy():
    buffer = _buffer()
    _filled(buffer)
    snapshot = buffer.snapshot()
    buffer.store("base_0_rgb", _image(NOW))
    assert snapshot["base_0_rgb"] is not buffer.snapshot()["base_0_rgb"]
