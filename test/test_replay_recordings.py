"""turbopi-replay on bags as robot teams record them (fast preprocessing, cameras sharing a topic, relative topic
names, topics without messages or with two types, a namespaced node's chunks, --out naming a file): each case once
differed from what the node does, or docs/replay.md promises, on the same bag and params file."""
import numpy as np
import pytest

pytest.importorskip("rosbags")
pytest.importorskip("sensor_msgs")

from test_replay import (BASE, T, T0, WRIST_JPEG, BagWriter, InputBuffer, JOINT_STATES,  # noqa: E402
                         header, image_msg, joints_msg, node_section, params_for, pattern, read_back,
                         rgb_to_compressed, write_bag, write_params)

from turbopi_ros.ros import params_file  # noqa: E402
from turbopi_ros.tools.replay import main, replay  # noqa: E402


def test_fast_preprocessing_decodes_jpegs_reduced_as_the_node_does(tmp_path):
    """cameras.preprocess: fast -- the node's InputBuffer decodes a JPEG reduced (reduce_for=
    policy.reduced_decode_size); replay decoded it at full size, so its chunks were not the node's."""
    from turbopi_ros.ros.node_params import policy_from_config

    def big_jpeg(t):
        data = np.frombuffer(bytes(rgb_to_compressed(pattern(640, 480, t, 1)).data), dtype=np.uint8)
        return T["sensor_msgs/msg/CompressedImage"](header=header(t), format="jpeg", data=data)

    names = node_section()["state.joints"]
    msgs = [(BASE, image_msg(T0, 0, "bgr8")), (WRIST_JPEG, big_jpeg(T0)), ("/joint_states", joints_msg(T0, names))]
    bag = tmp_path / "big.mcap"
    with BagWriter(bag) as b:
        for i, (topic, m) in enumerate(msgs):
            b.write_msg(topic, T0 * 1_000_000_000 + 1_000_000 * (i + 1), m)
        b.write_msg("/rosout_like", T0 * 1_000_000_000 + 50_000_000, T["std_msgs/msg/String"](data="end"))
    params = params_for(tmp_path, cameras__preprocess="fast")
    report = replay(bag, params, tmp_path / "out", period_s=0.01, show_progress=False)
    assert report["chunks"] == 1, report
    (_, chunk), = read_back(tmp_path / "out" / "chunks.mcap")[0]["/turbopi_node/action_chunk"]

    config = params_file.load(params)
    policy = policy_from_config(config)
    buffer = InputBuffer(list(config.cameras.names), {}, list(config.state.joints), config.max_observation_age_s,
                         reduce_for=policy.reduced_decode_size)  # as policy_node.py builds it
    for topic, m in msgs:
        buffer.store({BASE: "base_0_rgb", WRIST_JPEG: "left_wrist_0_rgb", "/joint_states": JOINT_STATES}[topic], m)
    node = policy.infer(buffer.observation(buffer.snapshot(), config.prompt, T0 + 0.01))
    assert np.array_equal(np.array([pt.positions for pt in chunk.points]), node.actions)


def test_two_cameras_on_one_topic_both_get_its_messages(tmp_path):
    """The node subscribes once per camera, so two model slots may share a topic (a robot with fewer cameras than
    the model has slots); replay kept one camera per topic and waited for the other for the whole bag."""
    bag = tmp_path / "in.mcap"
    write_bag(bag, compressed=False)
    params = write_params(tmp_path, cameras__topics=[BASE, BASE], cameras__compressed=[False, False])
    report = replay(bag, params, tmp_path / "out", period_s=0.25, show_progress=False)
    assert report["chunks"] == 7 and report["skips"]["total"] == 1, report


def test_relative_topic_names_resolve_as_the_node_resolves_them(tmp_path):
    """``joint_states.topic: joint_states`` (no leading slash, as ROS params files often say it) subscribes the node
    to /joint_states; replay said the bag, which has /joint_states, had no topic joint_states."""
    bag = tmp_path / "in.mcap"
    write_bag(bag)
    params = write_params(tmp_path, cameras__topics=[BASE.lstrip("/"), WRIST_JPEG], cameras__compressed=[False, True],
                          joint_states__topic="joint_states")
    report = replay(bag, params, tmp_path / "out", period_s=0.25, show_progress=False)
    assert report["chunks"] == 7, report


def _connections_only(path, topics):
    with BagWriter(path) as bag:
        for topic, msgtype in topics:
            bag.connection(topic, msgtype)


def test_a_topic_without_messages_is_named(tmp_path, capsys):
    """rosbag2 lists a topic it subscribed to even when nothing was published on it (a camera driver that died):
    replay stops naming it, as for a missing topic. A bag with no message at all said '--start 0 s is past the end
    of the bag (-9223372036.855 s long)'; one with a silent camera replayed as all 'waiting' skips, exit status 0."""
    params = params_for(tmp_path)
    empty = tmp_path / "empty.mcap"
    _connections_only(empty, [(BASE, "sensor_msgs/msg/Image"), (WRIST_JPEG, "sensor_msgs/msg/CompressedImage"),
                              ("/joint_states", "sensor_msgs/msg/JointState")])
    assert main([str(empty), "--params-file", str(params), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "no message on /camera/base/image_raw" in err and "past the end" not in err, err

    silent = tmp_path / "silent"  # a sqlite3 directory: the wrist camera's topic is listed, with 0 messages
    written = write_bag(tmp_path / "w.mcap", drop=WRIST_JPEG)
    with BagWriter(silent, storage="sqlite3") as bag:
        bag.connection(WRIST_JPEG, "sensor_msgs/msg/CompressedImage")
        for arrival, topic, msgtype, cdr, _ in written:
            bag.write(topic, msgtype, arrival, cdr)
    assert main([str(silent), "--params-file", str(params), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "no message on /camera/wrist/image_raw/compressed (camera 'left_wrist_0_rgb' (cameras.topics)" in err, err


def test_a_topic_with_two_types_replays_the_subscribed_one(tmp_path):
    """A topic recorded with two types (bags merged, a driver changed): the node's subscription takes the messages of
    its type; replay refused the bag saying the topic 'is None'."""
    written = write_bag(tmp_path / "w.mcap")
    bag = tmp_path / "two_types.mcap"
    jpeg = np.frombuffer(bytes(rgb_to_compressed(pattern(64, 48, 0, 0)).data), dtype=np.uint8)
    other = T["sensor_msgs/msg/CompressedImage"](header=header(T0 + 1.95), format="jpeg", data=jpeg)
    with BagWriter(bag) as b:
        for arrival, topic, msgtype, cdr, _ in written:
            b.write(topic, msgtype, arrival, cdr)
        b.write_msg(BASE, (T0 + 1.96) * 1_000_000_000, other)
    report = replay(bag, params_for(tmp_path), tmp_path / "out", period_s=0.25, show_progress=False)
    assert report["chunks"] == 7 and report["skips"]["total"] == 1, report


def test_recorded_chunks_of_a_namespaced_node_are_found(tmp_path):
    """The params file's ``/**/turbopi_node`` section runs the node in any namespace (a robot's ``/robot1``): its
    chunks are then on /robot1/turbopi_node/action_chunk, and --at-recorded-chunks said the bag had no
    /turbopi_node/action_chunk."""
    from test_replay import ARRIVAL_MS, node_chunks_and_inputs

    params = params_for(tmp_path)
    inputs, chunks = node_chunks_and_inputs(tmp_path, params)
    messages = [(t_ns + ARRIVAL_MS[topic] * 1_000_000, topic, msgtype, cdr) for t_ns, topic, msgtype, cdr in inputs]
    bag = tmp_path / "recording.mcap"
    with BagWriter(bag) as b:
        for arrival, topic, msgtype, cdr in sorted(messages, key=lambda m: m[0]):
            b.write(topic, msgtype, arrival, cdr)
        for t_ns, msg in chunks:
            b.write_msg("/robot1/turbopi_node/action_chunk", t_ns + 50_000_000, msg)
    report = replay(bag, params, tmp_path / "out", at_recorded_chunks=True, show_progress=False)
    assert report["recorded_chunks"]["compared"] == report["recorded_chunks"]["reproduced_bit_for_bit"] == 8, report


def test_an_out_path_that_is_a_file_is_refused_before_the_replay(tmp_path, capsys):
    """--out naming a file: the whole replay ran, then the outputs' mkdir raised FileExistsError (a traceback, exit
    status 1) instead of the tool's refusal (exit status 2)."""
    bag = tmp_path / "in.mcap"
    write_bag(bag)
    out = tmp_path / "out.txt"
    out.write_text("not a directory")
    assert main([str(bag), "--params-file", str(params_for(tmp_path)), "--out", str(out)]) == 2
    assert f"--out {out} is a file" in capsys.readouterr().err
