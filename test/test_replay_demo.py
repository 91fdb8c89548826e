"""A bag recorded from the real demo (`turbopi-demo --record`: fake_robot and turbopi_node as processes, the
recorder in the demo's) replays: at the recorded chunks' observation stamps, replay computes the node's chunks bit
for bit (same params file, so the same random weights, seed and thread count on CPU), and chunks.mcap reads back with
rosbags with the right topics, types and stamps.

Why the recorded node's instants: the node infers whenever its worker is free, on the newest messages then; replay
cannot know those instants, but each chunk carries its observation's stamp (the newest input stamp), and the node's
noise generator advances once per chunk. So replay observes once per recorded chunk, in order, on the newest message
of each input stamped at or before that chunk's stamp (or, where that one may still have been on its way to the node,
the one before: replay._candidates), and must reproduce every recorded chunk exactly. A different seed must reproduce
none (the comparison can fail).
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rosbags")
pytest.importorskip("rclpy")

from rosbags.highlevel import AnyReader  # noqa: E402

from test_replay import read_back, stamp_ns  # noqa: E402
from ros_helpers import demo_process, free_ros_domain  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHUNKS_S = 2.5  # seconds of chunks to record once they flow (the node starts in 3-4 s on 2 cores, more when busy)


def bag_start_ns(path: Path) -> int:
    with AnyReader([path]) as reader:
        return reader.start_time


def record_demo(params: Path, bag: Path, env: dict) -> str:
    """`turbopi-demo --duration 0 --record bag` until chunks have flowed for CHUNKS_S, then SIGTERM (as a process
    manager stops it); returns its output. The demo closes the recording on the way out."""
    flowing = re.compile(r"chunks\s+(\d+\.\d+)/s")
    with demo_process(["--duration", "0", "--params-file", str(params), "--record", str(bag)], env) as demo:
        deadline, since = time.monotonic() + 90, None
        while time.monotonic() < deadline and demo.proc.poll() is None:
            if since is None and any(float(m.group(1)) > 0 for m in map(flowing.search, list(demo.lines)) if m):
                since = time.monotonic()
            if since is not None and time.monotonic() - since > CHUNKS_S:
                break
            time.sleep(0.1)
        output = demo.stop()
    assert since is not None and "recorded " in output, output
    return output


def check_compared(report: dict, n: int) -> list:
    """Every one of the n recorded chunks is compared, except the last ones when the demo closed the recording before
    the newest input of a chunk recorded already was written (replay's not_rebuilt, each with why), at most 3. None
    has an input from before the recording: the demo starts the node only once the recorder writes every input
    (demo._start_recorded). Returns the indices of the compared chunks."""
    from turbopi_ros.tools.replay import MISSING

    recorded = report["recorded_chunks"]
    missing = {c["index"]: c["kind"] for c in recorded["not_rebuilt"]}
    assert recorded["compared"] + len(missing) == n and len(missing) <= 3, report
    assert set(missing.values()) <= {MISSING}, report
    assert sorted(missing) == list(range(n - len(missing), n)), report
    return [k for k in range(n) if k not in missing]


@pytest.mark.one_distro
def test_a_recorded_demo_replays_to_the_nodes_chunks_bit_for_bit(tmp_path):
    config = yaml.safe_load((REPO / "config" / "demo_tiny.yaml").read_text())
    config["/**/fake_robot"]["ros__parameters"].update({"camera.width": 64, "camera.height": 48})  # a small bag
    params = tmp_path / "demo.yaml"
    params.write_text(yaml.safe_dump(config))
    bag = tmp_path / "demo.mcap"
    # A domain of its own: a second graph in the recording (another test's node and fake robot on the same host and
    # domain) would make it unreplayable.
    domain = free_ros_domain()
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    output = record_demo(params, bag, env)

    recorded, types = read_back(bag)
    assert types == {"/camera/base/image_raw": "sensor_msgs/msg/Image",
                     "/camera/wrist/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
                     "/joint_states": "sensor_msgs/msg/JointState",
                     "/turbopi_node/action_chunk": "trajectory_msgs/msg/JointTrajectory",
                     "/turbopi_node/joint_command": "std_msgs/msg/Float64MultiArray"}
    node_chunks = recorded["/turbopi_node/action_chunk"]
    assert len(node_chunks) >= 3, output
    stamps = [stamp_ns(msg.header.stamp) for _, msg in node_chunks]
    assert stamps == sorted(stamps), f"chunk stamps go back: another turbopi_node was on ROS_DOMAIN_ID={domain}"
    assert recorded["/camera/base/image_raw"][0][1].width == 64

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "turbopi_ros.tools.replay", str(bag), "--params-file", str(params),
                          "--out", str(out), "--at-recorded-chunks"], cwd=str(REPO), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((out / "report.json").read_text())
    rebuilt = check_compared(report, len(node_chunks))
    assert report["recorded_chunks"]["reproduced_bit_for_bit"] == len(rebuilt), report
    assert report["skips"]["total"] == 0 and report["chunks"] == len(rebuilt)
    # 0 as a rule (the demo enables the node once the recorder has discovered its outputs); were the node's side of
    # that discovery later, the chunks the recording missed are found by their noise
    offset = report["recorded_chunks"]["noise_offset"]
    print(f"{len(rebuilt)} of {len(node_chunks)} recorded chunks reproduced bit for bit; "
          f"{report['recorded_chunks']['needed_another_candidate']} of them from another candidate than the likeliest; "
          f"noise offset {report['recorded_chunks']['noise_offset']}; not rebuilt: "
          f"{[(c['index'], c['kind']) for c in report['recorded_chunks']['not_rebuilt']]}")

    # chunks.mcap, read back with plain rosbags: the node's chunks exactly, at their observation stamps, beside the
    # recorded joint states
    replayed, types = read_back(out / "chunks.mcap")
    assert types == {"/turbopi_node/action_chunk": "trajectory_msgs/msg/JointTrajectory",
                     "/joint_states": "sensor_msgs/msg/JointState"}
    assert len(replayed["/joint_states"]) == len(recorded["/joint_states"])
    assert len(replayed["/turbopi_node/action_chunk"]) == len(rebuilt)
    for (t_ns, mine), (_, node) in zip(replayed["/turbopi_node/action_chunk"], [node_chunks[k] for k in rebuilt]):
        assert t_ns == stamp_ns(mine.header.stamp) == stamp_ns(node.header.stamp)
        assert list(mine.joint_names) == list(node.joint_names)
        positions = [np.array([p.positions for p in msg.points]) for msg in (mine, node)]
        assert np.array_equal(*positions)
        assert [stamp_ns(p.time_from_start) for p in mine.points] == [stamp_ns(p.time_from_start) for p in node.points]

    from turbopi_ros.tools.bags import BagWriter
    from turbopi_ros.tools.replay import replay

    # the comparison can fail: another seed (other weights, other noise) reproduces nothing
    config["/**/turbopi_node"]["ros__parameters"]["model.seed"] = 1
    other = tmp_path / "seed1.yaml"
    other.write_text(yaml.safe_dump(config))
    report = replay(bag, other, tmp_path / "seed1", at_recorded_chunks=True, limit=2, show_progress=False)
    assert report["recorded_chunks"]["compared"] == 2 and report["recorded_chunks"]["reproduced_bit_for_bit"] == 0
    # a window: the recorded chunks before it only draw their noise, so the generator stays in step
    middle = (stamp_ns(node_chunks[len(node_chunks) // 2][1].header.stamp) - bag_start_ns(bag)) * 1e-9
    report = replay(bag, params, tmp_path / "window", start_s=middle, at_recorded_chunks=True, limit=2,
                    show_progress=False)
    assert report["recorded_chunks"]["compared"] == 2 and report["recorded_chunks"]["reproduced_bit_for_bit"] == 2
    # a recording that began after the node's first chunks: their noise is found and skipped
    late = tmp_path / "late.mcap"
    with AnyReader([bag]) as reader, BagWriter(late) as writer:
        dropped = 0
        for conn, t_ns, raw in reader.messages():
            if conn.topic == "/turbopi_node/action_chunk" and dropped < 3:
                dropped += 1
                continue
            writer.write(conn.topic, conn.msgtype, t_ns, raw)
    report = replay(late, params, tmp_path / "late", at_recorded_chunks=True, limit=3, show_progress=False)
    assert report["recorded_chunks"]["reproduced_bit_for_bit"] == 3
    assert report["recorded_chunks"]["noise_offset"] == offset + 3
    # and the bag replays paced as the node would be
    report = replay(bag, params, tmp_path / "paced", start_s=middle, duration_s=1.0, show_progress=False)
    assert report["chunks"] >= 1 and report["instants"] == report["chunks"] + report["skips"]["total"], report
