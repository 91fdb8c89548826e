"""Bad input, one kind per test: no chunk is computed from it, the log and /diagnostics name the problem, the node
keeps running, and it recovers by itself when good input returns."""
import re
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import level, node_session, wait_for  # noqa: E402

ERROR = 2


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    with node_session(tmp_path_factory.mktemp("node"), min_chunks=2) as session:
        yield session


def _expect_rejected_then_recovered(feeder, node, faults: dict, expected, restore=None):
    """Switch ``faults`` on: after the chunk in flight, no chunk may arrive; the problem (``expected``: a string, or
    a compiled regex) must be named in the log and on /diagnostics. Then switch them off and expect chunks and an OK
    status again."""
    def named(text: str) -> bool:
        return bool(expected.search(text)) if isinstance(expected, re.Pattern) else expected in text

    assert wait_for(lambda: feeder.count(feeder.chunks) > 0, timeout=30)
    feeder.faults.update(faults)
    t_bad = time.monotonic()
    # an inference that started on good input just before the switch may still finish: allow 1 s for it
    assert wait_for(lambda: named(node.log()), timeout=10), node.log()[-3000:]
    time.sleep(1.0)
    t_settled = time.monotonic()
    assert wait_for(lambda: (feeder.latest_status() is not None and level(feeder.latest_status()) == ERROR
                             and named(feeder.latest_status().message)), timeout=5), \
        feeder.latest_status()
    time.sleep(1.5)
    leaked = feeder.since(feeder.chunks, t_settled)
    assert leaked == [], f"{len(leaked)} chunks computed from bad input ({expected})"
    assert node.alive(), node.log()
    for key in faults:
        feeder.faults.pop(key, None)
    if restore:
        restore()
    t_good = time.monotonic()
    assert wait_for(lambda: len(feeder.since(feeder.chunks, t_good)) >= 2, timeout=30), node.log()[-3000:]
    assert wait_for(lambda: level(feeder.latest_status()) == 0, timeout=5), feeder.latest_status().message
    assert "recovered" in node.log()
    return t_bad


def test_unsupported_encoding(running):
    feeder, node = running
    _expect_rejected_then_recovered(feeder, node, {"base_0_rgb_encoding": "16UC1"},
                                    "camera 'base_0_rgb': encoding 16UC1 not supported (rgb8, bgr8, rgba8, bgra8, "
                                    "mono8)")


def test_byte_count_mismatch(running):
    feeder, node = running
    _expect_rejected_then_recovered(feeder, node, {"base_0_rgb_truncate": 7},
                                    "camera 'base_0_rgb': 57593 bytes of data, expected step x height = 480 x 120 = "
                                    "57600")


def test_missing_joint(running):
    feeder, node = running
    _expect_rejected_then_recovered(feeder, node, {"drop_joint": "joint_3"},
                                    "joint_states: joints ['joint_3'] of state.joints missing from JointState")


def test_nan_in_state(running):
    feeder, node = running
    _expect_rejected_then_recovered(feeder, node, {"nan_joint": "joint_2"},
                                    "joint_states: non-finite position 'joint_2'=nan")


def test_stale_camera(running):
    feeder, node = running
    _expect_rejected_then_recovered(feeder, node, {"left_wrist_0_rgb_age": 2.0},
                                    "camera 'left_wrist_0_rgb': newest message is 2.")


def test_unstamped_camera(running):
    feeder, node = running
    _expect_rejected_then_recovered(feeder, node, {"base_0_rgb_zero_stamp": True},
                                    "camera 'base_0_rgb': header.stamp is zero")


def test_camera_stamped_in_the_future(running):
    """A sensor whose clock runs ahead of the node's: its age cannot be trusted (it would look fresh after it died)."""
    feeder, node = running
    _expect_rejected_then_recovered(feeder, node, {"left_wrist_0_rgb_age": -3.0},
                                    re.compile(r"camera 'left_wrist_0_rgb': header.stamp is (2\.9\d|3\.0\d) s ahead "
                                               r"of the node's clock"))


def test_empty_prompt(running):
    feeder, node = running
    feeder.publish_prompt("")
    _expect_rejected_then_recovered(feeder, node, {}, "prompt is empty",
                                    restore=lambda: feeder.publish_prompt("stack the cups"))


def test_commands_stop_while_input_is_bad(running):
    """on_stale=stop: once the node rejects its input, the joint command stream stops too."""
    feeder, node = running
    assert wait_for(lambda: feeder.count(feeder.chunks) > 0, timeout=30)
    feeder.faults["joints_age"] = 3.0
    assert wait_for(lambda: "joint_states: newest message is 3." in node.log(), timeout=10)
    t = time.monotonic()
    time.sleep(1.0)
    assert feeder.since(feeder.commands, t + 0.1) == []
    feeder.faults.pop("joints_age")
    t = time.monotonic()
    assert wait_for(lambda: len(feeder.since(feeder.commands, t)) > 10, timeout=30), node.log()[-2000:]
