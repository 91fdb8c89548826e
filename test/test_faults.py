"""Faults while the node runs (a subprocess with config/demo_tiny.yaml): its inference fails or hangs (test-only fault
injection, ros/faults.py), a sensor stops, the robot process dies and comes back. Each time the commands stop
(on_stale: stop) when they must, no sooner, /diagnostics names the fault while it lasts, the node keeps running and
recovers by itself. Times of commands are the rmw source timestamps (when the node published them) and of faults the
node's own log stamps or the feeder's message stamps: the same system clock, so no reception delay of this process
enters the bounds."""
import json
import os
import re
import signal
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import level, node_params, node_session, stamp_of, trajectory_times, wait_for  # noqa: E402

from turbopi_ros.ros.faults import ENV  # noqa: E402

PARAMS = node_params()
PERIOD_S = 1.0 / PARAMS["control_rate_hz"]  # command_rate_hz 0 follows the feeder's 50 Hz joint states
MAX_AGE_S = PARAMS["max_observation_age_s"]
ERROR, OK = 2, 0
LOG_LINE = re.compile(r"^\[(\w+)\] \[(\d+\.\d+)\] \[turbopi_node\]: (.*)$", re.M)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    faults = tmp / "faults.json"
    with node_session(tmp, min_chunks=3, env={ENV: str(faults)}) as (feeder, node):
        yield feeder, node, faults


def log_time(log: str, text: str, after: float = 0.0) -> float:
    """The node's log stamp (system time, s) of the first line containing ``text`` logged after ``after``."""
    for m in LOG_LINE.finditer(log):
        if text in m.group(3) and float(m.group(2)) > after:
            return float(m.group(2))
    raise AssertionError(f"{text!r} not logged after {after}:\n{log[-3000:]}")


def commands_after(feeder, t: float) -> list:
    """Source times (s) of the commands published after system time ``t``."""
    with feeder.lock:
        return [s for _, s in feeder.commands_info if s > t]


def chunk_end(chunk) -> float:
    """The time (s, the node's clock) of a chunk's last point."""
    return stamp_of(chunk) + float(trajectory_times(chunk)[-1])


def status_is(feeder, want: int, text: str = "") -> bool:
    status = feeder.latest_status()
    return status is not None and level(status) == want and text in status.message


def recovered(feeder, node, since_mono: float) -> None:
    """Chunks, commands and an OK status come back. The bounds only end the waits: on a loaded machine (a run beside a
    busy loop) inferences outlasted the chunks, most were dropped as already past, 10 commands took over 10 s, and
    after test_the_whole_node_paused's pause 2 chunks over 30 s."""
    assert wait_for(lambda: len(feeder.since(feeder.chunks, since_mono)) >= 2, timeout=60), node.log()[-3000:]
    assert wait_for(lambda: len(feeder.since(feeder.commands, since_mono)) >= 10, timeout=30), node.log()[-3000:]
    assert wait_for(lambda: status_is(feeder, OK), timeout=15), feeder.latest_status()
    assert node.alive()


def recovery_named(log: str, failed: float, problem: str) -> bool:
    """The node's first "recovered: chunks flowing again (was: X)" logged after system time ``failed`` names
    ``problem``, or a problem of a kind (problems.kind_of) the node logged after ``failed`` and before it: the line
    names the newest problem, and on a loaded machine a chunk dropped as already past may come between."""
    from turbopi_ros.ros.problems import kind_of

    later = set()
    for m in LOG_LINE.finditer(log):
        if float(m.group(2)) <= failed:
            continue
        text = m.group(3)
        if text.startswith("no chunk: "):
            later.add(kind_of(text[len("no chunk: "):]))
        elif text.startswith("recovered: chunks flowing again (was: "):
            was = text[len("recovered: chunks flowing again (was: "):-1]
            return was.startswith(problem) or kind_of(was) in later
    return False



def test_inference_raises(running):
    """Commands stop within one control period of the failure, /diagnostics ERROR names it, chunks resume when
    inference works again."""
    feeder, node, faults = running
    start = time.time()
    faults.write_text(json.dumps({"raise": "engine exploded"}))
    assert wait_for(lambda: "injected fault: engine exploded" in node.log(), timeout=10), node.log()[-3000:]
    failed = log_time(node.log(), "inference failed: InjectedFault: injected fault: engine exploded", after=start)
    assert wait_for(lambda: status_is(feeder, ERROR, "engine exploded"), timeout=5), feeder.latest_status()
    time.sleep(1.0)
    late = commands_after(feeder, failed + PERIOD_S)
    assert late == [], f"{len(late)} commands over a period after the failure, the last {late[-1] - failed:.3f} s"
    assert node.alive()
    faults.write_text("")
    recovered(feeder, node, time.monotonic())
    assert recovery_named(node.log(), failed, "inference failed: InjectedFault"), node.log()[-3000:]


def test_inference_hangs(running):
    """A hang of 3 s or more: the commands follow the current chunk to its end and stop there; /diagnostics says
    inference is stalled, and for how long, while it is (a time that grows from one message to the next); chunks
    resume by themselves."""
    feeder, node, faults = running
    hang_from = time.monotonic()
    faults.write_text(json.dumps({"hang_s": 60.0}))  # until the file is cleared below (faults.hang)
    stalled = []

    def stall_reported() -> bool:
        status = feeder.latest_status()
        m = status and re.search(r"inference stalled: running for (\d+\.\d) s", status.message)
        if m and level(status) == ERROR and float(m.group(1)) not in stalled:
            stalled.append(float(m.group(1)))  # one per diagnostics message (1 Hz)
        return len(stalled) >= 2

    # The node reports a stall once the hang outlasts max(1 s, 5 x the median inference): from 1 s on a quiet
    # machine to over 6 s on an overloaded one. The hang lasts until this test has seen two reports of it.
    assert wait_for(stall_reported, timeout=40), (feeder.latest_status(), node.log()[-3000:])
    time.sleep(max(0.0, hang_from + 3.0 - time.monotonic()))
    faults.write_text("")  # the hang ends; the next inference is normal
    assert stalled[-1] > stalled[0] >= 1.0, stalled
    resumed_from = time.monotonic()
    recovered(feeder, node, resumed_from)
    # the hung inference's own chunk came 3 s or more after its observation, its every action (1 s of them) due
    # already: dropped, not published seconds old (chunk_gate.py)
    assert "recovered: chunks flowing again (was: chunk dropped: all its actions lie in the past" in node.log()

    # by the node's publish times (rmw source timestamps): a feeder that ran late itself (a loaded machine) may take
    # the chunk after the hang before the commands published during it
    with feeder.lock:
        chunks = [(s, m) for t, s, m in feeder.chunks_info if t >= hang_from - 1.0]
        commands = [s for _, s in feeder.commands_info]
    gaps = [(a, b) for (a, _), (b, _) in zip(chunks, chunks[1:]) if b - a > 2.0]
    assert len(gaps) == 1, [round(b - a, 2) for a, b in gaps]
    last = next(m for s, m in chunks if s == gaps[0][0])  # the chunk the hang started after
    end = chunk_end(last)
    during = [s for s in commands if gaps[0][0] <= s < gaps[0][1]]
    assert all(s <= end + PERIOD_S for s in during), (max(during) - end)  # none past its end
    # it followed that chunk to its end, if the chunk still had actions when it went out (on a machine so loaded
    # that an inference outlasts a chunk it had none, and no command is right)
    if end - gaps[0][0] > 3 * PERIOD_S:
        assert during, f"no command after the last chunk before the hang ({end - gaps[0][0]:.2f} s of it left)"
        assert max(during) >= end - 3 * PERIOD_S, (max(during) - end)


@pytest.mark.parametrize("silent, name", [("left_wrist_0_rgb_silent", "camera 'left_wrist_0_rgb'"),
                                          ("joints_silent", "joint_states")], ids=["camera", "joint_states"])
def test_a_sensor_stops(running, silent, name):
    """Commands stop within max_observation_age_s + one period of the sensor's last message; recovery when it is
    back."""
    feeder, node, _ = running
    recovered(feeder, node, time.monotonic())
    feeder.faults[silent] = True
    try:
        key = "joints" if silent.startswith("joints") else silent[:-len("_silent")]
        stopped_at = time.monotonic()
        stale = wait_for(lambda: status_is(feeder, ERROR, name + ": newest message is"), timeout=5)
        assert stale, feeder.latest_status()
        time.sleep(0.5)
        last = feeder.last_stamp[key]
        late = commands_after(feeder, last + MAX_AGE_S + PERIOD_S)
        assert late == [], f"commands {late[-1] - last:.3f} s after the last {name} message"
        # no sooner than stale, give or take the sensor's last few messages (best effort: a loaded machine may lose
        # them, and the node then goes stale from the one before) and a late command tick; or than the newest chunk
        # ended, where an overloaded machine's inference took longer than a chunk lasts
        with feeder.lock:
            chunks = [m for _, s, m in feeder.chunks_info if s <= last + MAX_AGE_S]
        stop = min(last + MAX_AGE_S, chunk_end(chunks[-1]))
        early = commands_after(feeder, stop - 5 * PERIOD_S)
        assert early, f"the commands stopped before the input was stale ({last + MAX_AGE_S - stop:.3f} s before)"
        assert node.alive()
    finally:  # the sensor comes back even when a check failed: the module's next tests share this node
        feeder.faults.pop(silent)
    recovered(feeder, node, time.monotonic())
    assert time.monotonic() - stopped_at < 30


def test_the_whole_node_paused(running):
    """The node process stopped for 2 s (SIGSTOP: a machine overloaded, a VM paused) in the middle of an inference:
    the log and /diagnostics name the pause, not a sensor or a hung inference; the chunk computed across it is dropped
    rather than published with a 2 s-old stamp; chunks resume by themselves.

    The pause lands inside an inference by design: each inference first sleeps 0.4 s (the test-only delay fault) and
    the test stops the node 0.05 s after one started. Stopped at a random moment, it could land while a chunk that had
    passed the last check was being handed to DDS: that chunk then went out after the pause with the pause in its
    source timestamp (a fresh-clone CI run: a chunk 2.05 s old, no "chunk dropped"), which no check in the node can
    prevent and which is not what this test is about."""
    feeder, node, faults = running
    recovered(feeder, node, time.monotonic())
    entered = faults.parent / "paused_inference_started"
    entered.unlink(missing_ok=True)
    start = len(node.log())
    try:
        faults.write_text(json.dumps({"delay_s": 0.4, "entered_file": str(entered)}))
        assert wait_for(entered.exists, timeout=10), node.log()[-3000:]
        time.sleep(0.05)  # the engine thread is in the inference's delay, its observation taken
        os.kill(node.proc.pid, signal.SIGSTOP)
        time.sleep(2.0)
        os.kill(node.proc.pid, signal.SIGCONT)
        resumed_wall, resumed = time.time(), time.monotonic()
    finally:
        faults.write_text("{}")
    recovered(feeder, node, resumed)
    log = node.log()[start:]
    pause = re.findall(r"\[ERROR\].*no chunk: the node did not run for (\d+\.\d+) s", log)
    assert len(pause) == 1 and 1.8 <= float(pause[0]) <= 3.0, log
    # the pause is not blamed on the inference it stopped: no stall reported of an inference running across it (a
    # loaded machine's own slow inferences after it, over max(1 s, 5 x the median), are reported, rightly: a run
    # beside a busy loop had one of 2.2 s start 2.4 s after the pause ended)
    stall = re.compile(r"^\[ERROR\] \[(\d+\.\d+)\] .*no chunk: inference stalled: running for (\d+\.\d) s", re.M)
    stalls = [(float(t) - float(running), running) for t, running in stall.findall(log)]
    assert all(started > resumed_wall - 0.1 for started, _ in stalls), (resumed_wall, stalls, log)
    assert "no chunk: chunk dropped: " in log, f"the chunk computed across the pause was not dropped:\n{log}"
    # every chunk published after the pause (its rmw source timestamp: one published just before the pause may only
    # arrive after it) comes from inputs stamped after it (an observation is at most max_observation_age_s old when
    # taken)
    with feeder.lock:
        after = [m for _, source, m in feeder.chunks_info if source > resumed_wall]
    old = [round(resumed_wall - stamp_of(m), 2) for m in after if stamp_of(m) < resumed_wall - MAX_AGE_S]
    assert old == [], f"chunks published after the pause from observations this old (s): {old}\n{log}"
