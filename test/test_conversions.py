import numpy as np
import pytest

pytest.importorskip("sensor_msgs")

from jtc_rules import cubic  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from turbopi_ros.ros.conversions import (InputError, chunk_to_trajectory, compressed_to_rgb, image_to_rgb,  # noqa: E402
                                     joint_state_to_vector, rgb_to_compressed, rgb_to_image, sec_to_stamp,
                                     stamp_to_sec)

RGB = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_decode_to_rgb(encoding):
    assert np.array_equal(image_to_rgb(rgb_to_image(RGB, encoding), "cam"), RGB)


def test_mono_becomes_three_equal_channels():
    out = image_to_rgb(rgb_to_image(RGB, "mono8"), "cam")
    assert out.shape == (5, 7, 3) and np.array_equal(out[..., 0], out[..., 2])


def test_row_padding_in_step_is_skipped():
    msg = rgb_to_image(RGB, "rgb8")
    rows = np.frombuffer(msg.data, np.uint8).reshape(5, 21)
    msg.data = np.concatenate([rows, np.full((5, 3), 77, np.uint8)], axis=1).tobytes()
    msg.step = 24
    assert np.array_equal(image_to_rgb(msg, "cam"), RGB)


def test_bad_images_name_the_camera_and_the_expectation():
    msg = rgb_to_image(RGB, "rgb8")
    msg.encoding = "16UC1"
    with pytest.raises(InputError, match=r"camera 'wrist': encoding 16UC1 not supported \(rgb8, bgr8, rgba8, "
                                         r"bgra8, mono8\)"):
        image_to_rgb(msg, "wrist")
    msg = rgb_to_image(RGB, "rgb8")
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(InputError, match=r"104 bytes of data, expected step x height = 21 x 5 = 105"):
        image_to_rgb(msg, "wrist")
    msg = rgb_to_image(RGB, "rgb8")
    msg.step = 10
    with pytest.raises(InputError, match="step 10 is less than width 7 x 3"):
        image_to_rgb(msg, "wrist")


def test_compressed_roundtrip_and_garbage():
    out = compressed_to_rgb(rgb_to_compressed(RGB, "png"), "cam")
    assert np.array_equal(out, RGB)
    msg = rgb_to_compressed(RGB, "jpeg")
    msg.data = b"\xff\xd8 definitely not a jpeg"
    with pytest.raises(InputError, match="could not be decoded"):
        compressed_to_rgb(msg, "cam")


def test_joint_states_by_name():
    msg = JointState(name=["b", "x", "a"], position=[2.0, 9.0, 1.0])
    assert joint_state_to_vector(msg, ["a", "b"]).tolist() == [1.0, 2.0]
    with pytest.raises(InputError, match=r"joints \['c'\] of state.joints missing"):
        joint_state_to_vector(msg, ["a", "c"])
    with pytest.raises(InputError, match="non-finite position 'a'=nan"):
        joint_state_to_vector(JointState(name=["a"], position=[float("nan")]), ["a"])
    with pytest.raises(InputError, match="2 names but 1 positions"):
        joint_state_to_vector(JointState(name=["a", "b"], position=[1.0]), ["a"])


def test_trajectory_points_times_and_velocities():
    actions = np.array([[0.0, 1.0], [0.1, 1.0], [0.3, 0.5]])
    msg = chunk_to_trajectory(actions, ["j1", "j2"], stamp=12.25, control_rate_hz=10.0)
    assert stamp_to_sec(msg.header.stamp) == pytest.approx(12.25)
    assert list(msg.joint_names) == ["j1", "j2"]
    times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
    assert times == pytest.approx([0.1, 0.2, 0.3])
    # central differences inside, second-order one-sided at the first point, zero at the last
    assert np.allclose([p.velocities for p in msg.points], [[0.5, 2.5], [1.5, -2.5], [0.0, 0.0]])
    two = chunk_to_trajectory(actions[:2], ["j1", "j2"], 12.25, 10.0)
    assert np.allclose([p.velocities for p in two.points], [[1.0, 0.0], [0.0, 0.0]])
    assert list(chunk_to_trajectory(actions[:1], ["j1", "j2"], 12.25, 10.0).points[0].velocities) == [0.0, 0.0]
    with pytest.raises(ValueError):
        chunk_to_trajectory(actions, ["j1"], 0.0, 10.0)


def test_a_controllers_cubics_between_the_points_follow_the_chunks_path():
    """A joint_trajectory_controller interpolates between points with cubics through their positions and velocities
    (jtc_rules.cubic). A chunk sampling a smooth path (1 Hz sines at 50 Hz) is followed closely between its points:
    position within 1e-4 of the path's 0.5, velocity within 2 % of its peak, acceleration within 20 % of its peak, on
    every segment but the last (where the trajectory comes to rest). The forward difference of the segment after
    each point was 25x further in velocity, with accelerations 3x the path's peak."""
    rate, amplitude, w = 50.0, 0.5, 2 * np.pi
    t = np.arange(1, 51) / rate
    phases = np.array([0.0, 1.0])
    actions = amplitude * np.sin(w * t[:, None] + phases)
    msg = chunk_to_trajectory(actions, ["j1", "j2"], 0.0, rate)
    positions = np.array([p.positions for p in msg.points])
    velocities = np.array([p.velocities for p in msg.points])
    s = np.linspace(0.0, 1.0 / rate, 21)[:-1]
    for k in range(len(t) - 2):
        p, v, a = cubic(positions[k], velocities[k], positions[k + 1], velocities[k + 1], 1.0 / rate, s)
        at = w * (t[k] + s)[:, None] + phases
        assert np.abs(p - amplitude * np.sin(at)).max() < 1e-4, k
        assert np.abs(v - amplitude * w * np.cos(at)).max() < 0.02 * amplitude * w, k
        assert np.abs(a + amplitude * w ** 2 * np.sin(at)).max() < 0.2 * amplitude * w ** 2, k


def test_stamp_conversion():
    t = sec_to_stamp(1.999999999)
    assert t.sec == 1 and t.nanosec == 999_999_999
    assert stamp_to_sec(sec_to_stamp(5.5)) == 5.5
