"""BagRecorder's waits, which make `turbopi-demo --record` complete: wait_for_inputs returns once a message of every
input topic is written and wait_for_outputs once every output topic has a publisher; each names the topics it still
waits for when it gives up (timeout, or its publisher's process gone)."""
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

from ros_helpers import isolate_ros_domain, spin_in_background  # noqa: E402
from test_replay import read_back  # noqa: E402


def test_the_waits_return_once_every_topic_is_there_and_name_the_missing_ones(tmp_path):
    import rclpy
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from turbopi_ros.ros import ros_compat
    from turbopi_ros.tools.bags import JOINT_STATE, TRAJECTORY
    from turbopi_ros.tools.recorder import BagRecorder

    isolate_ros_domain()
    rclpy.init()
    recorder = BagRecorder(tmp_path / "r.mcap", [("/in_a", JOINT_STATE, True), ("/in_b", JOINT_STATE, True),
                                                  ("/out", TRAJECTORY, False)])
    robot = rclpy.create_node("robot")
    executor, thread = spin_in_background(recorder)
    executor.add_node(robot)
    try:
        with pytest.raises(RuntimeError, match=r"no message recorded on /in_a, /in_b \(after 0.3 s\)"):
            recorder.wait_for_inputs(0.3)
        with pytest.raises(RuntimeError, match=r"on /in_a, /in_b \(its publisher exited\)"):
            recorder.wait_for_inputs(30, alive=lambda: False)
        a = robot.create_publisher(JointState, "/in_a", 10)
        robot.create_timer(0.02, lambda: a.publish(JointState(name=["j"], position=[1.0])))
        with pytest.raises(RuntimeError, match=r"no message recorded on /in_b \(after 1 s\)"):
            recorder.wait_for_inputs(1.0)
        b = robot.create_publisher(JointState, "/in_b", 10)
        robot.create_timer(0.02, lambda: b.publish(JointState(name=["j"], position=[2.0])))
        recorder.wait_for_inputs(30)
        assert recorder.counts["/in_a"] > 0 and recorder.counts["/in_b"] > 0

        with pytest.raises(RuntimeError, match=r"no publisher discovered on /out \(after 0.3 s\)"):
            recorder.wait_for_outputs(0.3)
        robot.create_publisher(JointTrajectory, "/out", 10)
        recorder.wait_for_outputs(30)
    finally:
        counts = recorder.close()
        executor.shutdown()
        thread.join(timeout=5)
        robot.destroy_node()
        recorder.destroy_node()
        ros_compat.try_shutdown()
    recorded, types = read_back(tmp_path / "r.mcap")
    assert [len(recorded[t]) for t in ("/in_a", "/in_b")] == [counts["/in_a"], counts["/in_b"]]
    assert {m.position[0] for _, m in recorded["/in_b"]} == {2.0}
