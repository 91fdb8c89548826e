"""The node's parts, each on its own (without a node): the command stream's thread, what each command tick publishes and
the stream's period, the last check before a chunk goes out and what becomes of a chunk or a problem, the engine
worker's loop and stall watch, the warm-up, the prompt, the statistics and their /diagnostics status."""
import os
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("diagnostic_msgs")

from turbopi_ros.policy.chunking import ChunkSchedule  # noqa: E402
from turbopi_ros.ros.chunk_flow import ChunkFlow, RealTimeChunking  # noqa: E402
from turbopi_ros.ros.chunk_gate import ChunkGate  # noqa: E402
from turbopi_ros.ros.command_stream import CommandPeriod, CommandSource, CommandStream  # noqa: E402
from turbopi_ros.ros.engine_worker import EngineHooks, EngineWorker  # noqa: E402
from turbopi_ros.ros.inputs import JOINT_STATES, InputBuffer, PromptSlot, shorten  # noqa: E402
from turbopi_ros.ros.node_status import WARMING_UP, NodeStats, diagnostic_status, status_line  # noqa: E402
from turbopi_ros.ros.pauses import PauseWatch  # noqa: E402
from turbopi_ros.ros.problems import ProblemLog  # noqa: E402
from turbopi_ros.ros.warm_up import WARMUP_PROMPT, WarmUp  # noqa: E402
from ros_helpers import wait_for  # noqa: E402

MAX_AGE_S = 0.5
WALL_AGE_S = 10.0  # the engine tests on the wall clock: an observation goes stale there only when the test says so


def joint_state(stamp: float, position: float = 0.1):
    sec = int(stamp)
    header = SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=int(round((stamp - sec) * 1e9))))
    return SimpleNamespace(header=header, name=["j"], position=[position])


def joints_only(now: float, max_age: float = MAX_AGE_S) -> InputBuffer:
    inputs = InputBuffer([], {JOINT_STATES: "/joint_states"}, ["j"], max_age)
    inputs.store(JOINT_STATES, joint_state(now))
    return inputs


# --- the command stream -------------------------------------------------------------------------------------------
def _stream(tick, period=0.01, threshold=0.3):
    pauses, stop, events = PauseWatch(threshold), threading.Event(), {"paused": [], "errors": []}
    stream = CommandStream(tick, period, pauses, events["paused"].append, events["errors"].append, stop,
                           alive=lambda: True)
    return stream, stop, events


def test_the_command_stream_ticks_at_its_period_and_follows_a_new_one():
    ticks = []
    stream, stop, events = _stream(lambda: ticks.append(time.monotonic()))
    stream.start()
    time.sleep(0.5)
    stream.period_s = 0.02
    time.sleep(0.1)
    switched = len(ticks)
    time.sleep(0.5)
    stop.set()
    stream.join(1.0)
    fast, slow = np.diff(ticks[5:switched - 5]), np.diff(ticks[switched:])
    assert np.median(fast) == pytest.approx(0.01, rel=0.2) and np.median(slow) == pytest.approx(0.02, rel=0.2)
    assert events == {"paused": [], "errors": []}


def test_a_late_tick_is_a_pause_and_a_failing_tick_does_not_end_the_stream():
    calls = []

    def tick():
        calls.append(time.monotonic())
        if len(calls) == 5:
            time.sleep(0.6)  # the thread did not run: as a paused process looks to it
        if len(calls) == 10:
            raise RuntimeError("boom")

    stream, stop, events = _stream(tick)
    stream.start()
    time.sleep(1.2)
    stop.set()
    stream.join(1.0)
    assert len(events["paused"]) == 1 and 0.5 < events["paused"][0] < 2.0, events
    assert events["errors"] == ["command stream: RuntimeError: boom"]
    assert len(calls) > 20  # went on after both


# --- what a command tick publishes, and the stream's period ---------------------------------------------------------
class FakeOutputs:
    def __init__(self):
        self.commands, self.stops, self.chunks = [], 0, []

    def publish_command(self, command, held=False):
        self.commands.append((np.array(command), held))

    def stop(self):
        self.stops += 1

    def publish_chunk(self, actions, stamp, now, blended=None):
        self.chunks.append((actions, stamp, now, blended))


def _commands(hold=False, enabled=True):
    clock = SimpleNamespace(t=1000.0)
    inputs, schedule, outputs, failures = joints_only(clock.t), ChunkSchedule(50.0, 0.0), FakeOutputs(), []
    source = CommandSource(schedule, inputs, outputs, NodeStats(), lambda: clock.t, failures.append,
                           lambda: enabled, hold)
    schedule.set_chunk(np.arange(10.0)[:, None] * np.ones((10, 2)), clock.t, clock.t)
    return source, clock, inputs, outputs, failures


def test_a_tick_publishes_the_action_for_now_and_stale_inputs_stop_it_reported_once():
    source, clock, inputs, outputs, failures = _commands()
    clock.t += 0.01
    source.tick()
    assert len(outputs.commands) == 1 and outputs.commands[0][1] is False and outputs.stops == 0
    clock.t += 1.0  # the joint states are 1 s old now
    source.tick()
    source.tick()
    assert len(outputs.commands) == 1 and outputs.stops == 2
    assert len(failures) == 1 and "joint_states: newest message is 1.0" in failures[0]  # reported once
    inputs.store(JOINT_STATES, joint_state(clock.t))
    source.tick()  # fresh again: the chunk has ended (10 actions at 50 Hz), so no command, and no new report
    assert outputs.stops == 3 and len(failures) == 1


def test_a_tick_holds_the_last_command_with_hold_and_not_after_stop():
    source, clock, inputs, outputs, failures = _commands(hold=True)
    clock.t += 0.05
    source.tick()
    clock.t += 1.0
    source.tick()  # stale: the last command again, marked held
    assert [held for _, held in outputs.commands] == [False, True]
    np.testing.assert_array_equal(outputs.commands[0][0], outputs.commands[1][0])
    source.stop()  # disabled: nothing to hold
    source.tick()
    assert len(outputs.commands) == 2 and outputs.stops == 1 and source.last_command is None


def test_a_disabled_tick_stops_and_a_pause_is_named_instead_of_the_stale_inputs():
    source, clock, inputs, outputs, failures = _commands(enabled=False)
    source.tick()
    assert outputs.commands == [] and outputs.stops == 1 and failures == []
    source, clock, inputs, outputs, failures = _commands()
    clock.t += 2.0
    source.paused(2.0)
    source.tick()  # every input stale: that is the pause, already reported
    assert len(failures) == 1 and failures[0].startswith("the node did not run for 2.00 s")


def test_the_command_period_follows_the_joint_states_rate_with_hysteresis():
    fixed = CommandPeriod(200.0, 50.0)
    assert fixed.period_s == pytest.approx(0.005) and fixed.follow(500.0) is None
    measured = CommandPeriod(0.0, 50.0)
    assert measured.period_s == pytest.approx(0.02)
    assert measured.follow(None) is None  # no joint states yet: the control rate
    assert measured.follow(500.0) == pytest.approx(0.002) and measured.period_s == pytest.approx(0.002)
    assert measured.follow(502.0) is None  # within 1 %
    assert measured.follow(400.0) == pytest.approx(0.0025)


# --- the chunk gate -----------------------------------------------------------------------------------------------
def test_the_gate_passes_a_fresh_chunk_and_names_why_it_drops_one():
    clock = SimpleNamespace(t=100.0)
    inputs = joints_only(1000.0)
    pauses = PauseWatch(MAX_AGE_S, clock=lambda: clock.t)
    gate = ChunkGate(inputs, pauses)
    assert gate.refuse(stamp=999.95, taken_at=99.9, now=1000.05) is None
    assert "ahead of the node's clock" in gate.refuse(stamp=1001.0, taken_at=99.9, now=1000.05)
    assert "its inputs went stale while it was computed: joint_states: newest message is 0.80 s old" in \
        gate.refuse(stamp=999.95, taken_at=99.9, now=1000.8)
    assert gate.refuse(stamp=999.95, taken_at=99.9, now=1000.05, span_s=0.1) is None  # its last action is due now
    assert "chunk dropped: all its actions lie in the past: its observation is stamped 0.15 s ago, and its actions " \
        "span 0.10 s" in gate.refuse(stamp=999.95, taken_at=99.9, now=1000.1, span_s=0.1)
    clock.t += 2.0
    pauses.beat(2.0, 0.02)  # the node did not run for 2 s after the run started
    assert "the node paused after its observation was taken" in gate.refuse(stamp=999.95, taken_at=99.9,
                                                                            now=1000.05)


def _flow(hold=False, blend_s=0.0):
    clock, logs = SimpleNamespace(t=1000.0), []
    inputs, schedule, outputs, stats = joints_only(clock.t), ChunkSchedule(50.0, blend_s), FakeOutputs(), NodeStats()
    problems = ProblemLog(logs.append, logs.append)
    logger = SimpleNamespace(info=logs.append, error=logs.append)
    wakes = []
    flow = ChunkFlow(schedule, ChunkGate(inputs, PauseWatch(MAX_AGE_S)), outputs, stats, problems, logger, hold,
                     lambda: clock.t, lambda: wakes.append(1), lambda: True)
    return flow, clock, schedule, outputs, stats, problems, logs, wakes


def _chunk(stamp):
    return SimpleNamespace(actions=np.ones((10, 2)), stamp=stamp, guidance_error=None, state=None,
                           timings={"total": 0.05, "denoise": 0.03})


def test_a_published_chunk_goes_out_a_refused_one_is_a_problem_that_clears_on_the_next():
    flow, clock, schedule, outputs, stats, problems, logs, wakes = _flow()
    now = time.monotonic()
    assert not flow.publish(_chunk(clock.t + 5.0), now, now, now)  # stamped ahead of the clock
    assert outputs.chunks == [] and "ahead of the node's clock" in problems.message and wakes
    now = time.monotonic()  # inputs taken 60 ms ago, prepared 56 ms ago, the run started 50 ms ago
    assert flow.publish(_chunk(clock.t - 0.01), now - 0.05, now - 0.06, now - 0.056)
    assert len(outputs.chunks) == 1 and schedule.current is not None and stats.chunks == 1
    assert outputs.chunks[0][1:3] == (clock.t - 0.01, clock.t)  # published at the node clock's now (velocity groups)
    assert problems.message == "" and any(m.startswith("first chunk: 10 actions in 50 ms") for m in logs)
    assert any(m.startswith("recovered: chunks flowing again") for m in logs)
    assert stats.recent_ms("latency") == pytest.approx([10.0]) and stats.recent_ms("denoise") == pytest.approx([30.0])
    assert stats.recent_ms("observation_wait") == pytest.approx([10.0])  # taken 10 ms before the run
    assert stats.recent_ms("prepared_wait") == pytest.approx([6.0])  # ready 6 ms before it


def test_the_groups_get_the_chunk_as_the_commands_will_follow_it():
    """A chunk published while another is followed: the outputs get it as the model gave it (~/action_chunk) and
    blended (the group trajectories): at each of its actions' times from now on, the command the schedule then gives
    (the old chunk fading into it over blend_s), and its own actions after the blend."""
    flow, clock, schedule, outputs, stats, problems, logs, wakes = _flow(blend_s=0.1)
    now = time.monotonic()
    assert flow.publish(_chunk(clock.t - 0.01), now, now, now)
    clock.t += 0.1
    second = SimpleNamespace(actions=np.full((10, 2), 3.0), stamp=clock.t - 0.01, guidance_error=None, state=None,
                             timings={"total": 0.05})
    assert flow.publish(second, now, now, now)
    actions, stamp, at, blended = outputs.chunks[-1]
    assert actions is second.actions and at == clock.t
    times = stamp + np.arange(1, 11) / 50.0
    assert np.allclose(blended[times >= at], [schedule.command(t) for t in times[times >= at]], rtol=0, atol=1e-12)
    assert np.all(blended[times < at + 0.1 - 1e-9] < 3.0) and np.all(blended[times >= at + 0.1 - 1e-9] == 3.0)


def test_a_chunk_whose_observation_was_taken_before_a_pause_is_dropped_though_its_run_started_after():
    """The flake test_the_whole_node_paused found: an observation checked fresh, then the node paused, then the
    heartbeat saw the pause's end before the engine started its run. Judged from the run's start the pause was over
    (and the inputs that arrived after it were fresh); judged from when the observation was taken it was not, and
    the chunk, its observation 2 s old, is dropped."""
    flow, clock, schedule, outputs, stats, problems, logs, wakes = _flow()
    taken_at = time.monotonic()
    assert flow.gate.pauses.beat(2.0, 0.02) == 2.0  # the command thread ran first after the pause
    run_start = time.monotonic() + 1e-3
    assert not flow.gate.pauses.paused_since(run_start)  # the run's start alone misses it
    assert not flow.publish(_chunk(clock.t - 0.01), run_start, taken_at, taken_at)
    assert outputs.chunks == [] and "the node paused after its observation was taken" in problems.message


def test_a_problem_stops_the_schedule_unless_holding_and_a_worker_failure_always_does():
    for hold in (False, True):
        flow, clock, schedule, outputs, stats, problems, logs, wakes = _flow(hold)
        schedule.set_chunk(np.ones((10, 2)), clock.t, clock.t)
        flow.fail("inference failed: RuntimeError: x")
        assert (schedule.current is None) != hold and problems.level == "error" and wakes == [1]
        flow.worker_failed("engine: RuntimeError: y; restarting it")
        assert schedule.current is None and logs[-1] == "engine: RuntimeError: y; restarting it"
        assert problems.message == "engine: RuntimeError: y; restarting it" and problems.level == "error"
        flow.worker_failed("engine: RuntimeError: y; restarting it")  # every 0.5 s while it lasts: logged once
        assert logs.count("engine: RuntimeError: y; restarting it") == 1


def test_real_time_chunking_guides_only_while_on_towards_the_chunk_being_executed():
    schedule, stats = ChunkSchedule(50.0, 0.0), NodeStats()
    rtc = RealTimeChunking(schedule, stats, 50.0, enabled=False, max_guidance=5.0)
    schedule.set_chunk(np.ones((10, 2)), 100.0, 100.0)
    stats.chunk_published({"latency": 0.05}, None)
    assert rtc.arguments(100.04) == {}  # off
    rtc.apply({"rtc.enabled": True, "rtc.max_guidance": 2.0, "blend_s": 0.3})
    args = rtc.arguments(100.04)
    assert (args["delay_steps"], args["execution_horizon"], args["max_guidance"]) == (3, 2, 2.0)
    assert args["previous"].stamp == 100.0
    assert rtc.arguments(101.0) == {}  # the chunk ended before this observation


def test_the_prompt_slot_ignores_a_repeat_and_a_long_prompt_is_shortened_for_the_log():
    slot = PromptSlot("stack the cups")
    assert not slot.set("stack the cups") and slot.set("open the drawer") and slot.get() == "open the drawer"
    assert shorten("a" * 300).endswith("... (300 characters)") and shorten("hi") == "'hi'"


# --- the engine worker --------------------------------------------------------------------------------------------
class FakePolicy:
    def prepare(self, obs):
        return SimpleNamespace(stamp=obs.stamp, state=obs.state)


def _worker(inputs, run, **hooks):
    published, failures = [], []
    defaults = dict(now=time.time, prompt=lambda: "stack the cups", enabled=lambda: True,
                    fail=lambda message, waiting=False: failures.append(message), guidance=lambda stamp: {},
                    publish=lambda chunk, **times: published.append((chunk, times)), worker_failed=failures.append,
                    alive=lambda: True)
    defaults.update(hooks)
    return EngineWorker(FakePolicy(), run, inputs, None, EngineHooks(**defaults)), published, failures


def test_the_engine_runs_each_new_observation_once_and_never_a_stale_one():
    inputs = joints_only(time.time(), WALL_AGE_S)
    worker, published, failures = _worker(inputs, lambda prepared: ("chunk", prepared.stamp))
    worker.start()
    assert wait_for(lambda: published, 10), failures  # the first observation
    for _ in range(5):
        time.sleep(0.05)
        newest = time.time()
        inputs.store(JOINT_STATES, joint_state(newest))
        worker.wake()
    assert wait_for(lambda: abs(published[-1][0][1] - newest) < 1e-6, 10), (published, newest)  # the newest ran
    stamps = [chunk[1] for chunk, _ in published]
    assert len(stamps) >= 2 and stamps == sorted(set(stamps)), stamps  # one chunk per observation, in order
    for _, times in published:  # inputs taken, then prepared, then run
        assert times["taken_at"] <= times["ready_at"] <= times["run_start"], times
    n = len(published)
    inputs.store(JOINT_STATES, joint_state(time.time() - 2 * WALL_AGE_S))  # a stale newest message
    worker.wake()
    assert wait_for(lambda: any("newest message is 20." in f for f in failures), 10), failures
    assert worker.stop(1.0)
    assert len(published) == n, published


@pytest.mark.parametrize("niceness", [0, 7])
def test_the_engine_and_preparing_threads_run_at_the_workers_niceness(niceness):
    """Both threads lower their CPU priority to ``niceness`` (yield_cpu), never below the process's own; threads
    already nicer stay as they are. 0: the process's own priority."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    seen = {}

    class Recording(FakePolicy):
        def prepare(self, obs):
            seen["preparing"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            return super().prepare(obs)

    def run(prepared):
        seen["inference"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return "chunk"

    inputs = joints_only(time.time(), WALL_AGE_S)
    worker, published, failures = _worker(inputs, run)
    worker.policy, worker.niceness = Recording(), niceness
    worker.start()
    assert wait_for(lambda: published, 10), failures
    assert worker.stop(1.0)
    assert seen == {"preparing": max(own, niceness), "inference": max(own, niceness)}, (seen, own)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # this thread untouched


def test_a_failing_engine_is_reported_and_the_worker_goes_on():
    inputs = joints_only(time.time(), WALL_AGE_S)
    calls = []

    def run(prepared):
        calls.append(prepared.stamp)
        if len(calls) == 1:
            raise RuntimeError("engine exploded")
        return "chunk"

    worker, published, failures = _worker(inputs, run)
    worker.start()
    assert wait_for(lambda: failures, 10), calls  # the first observation's inference raised
    inputs.store(JOINT_STATES, joint_state(time.time()))
    worker.wake()
    assert wait_for(lambda: published, 10), failures  # the next one ran
    assert worker.stop(1.0)
    assert failures[:1] == ["inference failed: RuntimeError: engine exploded"] and len(published) == 1


def test_a_new_prompt_gets_what_it_needs_before_its_first_inference_and_its_observation_is_dropped():
    """EngineHooks.new_prompt runs on the engine thread before the first inference with each prompt, until it says
    it took no time, and again after recheck_prompt(); when it took time (the node: it captured the prompt's graphs)
    the observation that came with the prompt is dropped, not run late, and a newer one runs."""
    inputs = joints_only(time.time(), WALL_AGE_S)
    prompt, events, prepared_with, done = ["stack the cups"], [], [], set()

    def new_prompt(text):
        took_time = text not in done and text == "unforeseen"
        done.add(text)
        events.append(("new prompt", text, took_time, threading.current_thread().name))
        return took_time

    def run(prepared):
        events.append(("run", prepared.stamp))
        return "chunk"

    worker, published, failures = _worker(inputs, run, prompt=lambda: prompt[0], new_prompt=new_prompt)
    original = worker.policy.prepare
    worker.policy.prepare = lambda obs: prepared_with.append((obs.prompt, obs.stamp)) or original(obs)
    worker.start()

    def feed(n):
        for _ in range(n):
            time.sleep(0.05)
            inputs.store(JOINT_STATES, joint_state(time.time()))
            worker.wake()
        time.sleep(0.3)

    feed(3)
    prompt[0] = "unforeseen"

    def ran_with_the_new_prompt():
        hooks = [i for i, e in enumerate(list(events)) if e[:2] == ("new prompt", "unforeseen")]
        return len(hooks) >= 2 and any(e[0] == "run" for e in events[hooks[1]:])

    deadline = time.monotonic() + 20  # a loaded machine may take a while
    while not ran_with_the_new_prompt() and time.monotonic() < deadline:
        feed(1)
    hooks = [e for e in events if e[0] == "new prompt"]
    worker.recheck_prompt()  # what the prompt needs changed (the node: a new RTC beta): the hook runs again
    deadline = time.monotonic() + 20
    while len([e for e in events if e[0] == "new prompt"]) < 4 and time.monotonic() < deadline:
        feed(1)
    assert worker.stop(1.0)
    assert failures == [], failures
    assert [e[1:3] for e in hooks] == [("stack the cups", False), ("unforeseen", True), ("unforeseen", False)], hooks
    assert [e[1:3] for e in events if e[0] == "new prompt"][3:] == [("unforeseen", False)], events
    assert {e[3] for e in hooks} == {"turbopi_inference"}
    first, second = events.index(hooks[1]), events.index(hooks[2])
    assert events[0] == hooks[0] and events[1][0] == "run" and second == first + 1, events
    dropped = next(stamp for text, stamp in prepared_with if text == "unforeseen")
    runs_after = [e[1] for e in events[second:] if e[0] == "run"]
    assert runs_after and min(runs_after) > dropped, (runs_after, dropped)


def test_a_stall_is_reported_against_recent_runs_but_not_across_a_pause():
    worker, _, _ = _worker(joints_only(time.time()), lambda prepared: "chunk")
    assert worker.stall([50.0] * 5, lambda t: False) is None  # nothing running
    worker.inference_started = time.monotonic() - 1.5
    assert worker.stall([50.0] * 5, lambda t: False).startswith("inference stalled: running for 1.5 s (more than "
                                                                "1.0 s")
    assert worker.stall([500.0] * 5, lambda t: False) is None  # 5 x the median: 2.5 s
    assert worker.stall([], lambda t: False) is None  # before a first chunk: warm-up allowed
    assert worker.stall([50.0] * 5, lambda t: True) is None  # the node paused: reported as such


# --- statistics and diagnostics -----------------------------------------------------------------------------------
def test_statistics_become_the_status_and_the_status_line():
    stats = NodeStats()
    for i in range(3):
        stats.chunk_published({"denoise": 0.040 + 0.001 * i, "total": 0.070, "latency": 0.080,
                               "engine": 0.07 + 0.01 * i, "observation_to_chunk": 0.072,
                               "observation_wait": 0.002 * i}, None)
    engine = SimpleNamespace(superseded=2, dropped_stale=1)
    values = stats.values(now=0.0, command_period_s=0.02, rtc=False, engine=engine, frames=None)
    assert values["denoise_ms"] == pytest.approx(41.0) and values["observation_wait_max_ms"] == pytest.approx(4.0)
    assert values["engine_ms"] == pytest.approx(80.0) and values["engine_max_ms"] == pytest.approx(90.0)
    assert values["command_period_target_ms"] == pytest.approx(20.0) and values["dropped_stale"] == 1.0
    assert stats.recent_ms("latency", 2) == pytest.approx([80.0, 80.0])
    problems = ProblemLog(lambda m: None, lambda m: None)
    ok = diagnostic_status(values, {"joint_states": 0.01}, problems, True, stats.chunks, "cpu")
    assert ok.level == ok.OK and ok.message.endswith("chunks/s")
    keys = {kv.key: kv.value for kv in ok.values}
    assert keys["chunks"] == "3" and keys["age_joint_states_s"] == "0.010" and keys["denoise_ms"] == "41.000"
    problems.report("camera 'base_0_rgb': newest message is 2.00 s old")
    bad = diagnostic_status(values, {}, problems, True, stats.chunks, "cpu")
    assert bad.level == bad.ERROR and "2.00 s old" in bad.message
    assert "denoise 41.0" in status_line(values, {"joint_states": 0.01}) and "joint_states 0.01s" in \
        status_line(values, {"joint_states": 0.01})


def test_warming_up_is_a_warning_until_ready_and_an_error_outranks_it():
    values = {"chunk_rate_hz": 0.0, "graph_captures": 31.0}
    problems = ProblemLog(lambda m: None, lambda m: None)
    problems.report("waiting for camera 'base_0_rgb'", waiting=True)
    warming = diagnostic_status(values, {}, problems, True, 0, "cuda:0", warming_up=True)
    keys = {kv.key: kv.value for kv in warming.values}
    assert warming.level == warming.WARN and warming.message == WARMING_UP
    assert keys["ready"] == "False" and keys["graph_captures"] == "31.000"
    ready = diagnostic_status(values, {}, problems, True, 0, "cuda:0")
    assert ready.message == "waiting for camera 'base_0_rgb'" and {kv.key: kv.value for kv in ready.values}[
        "ready"] == "True"
    problems.report("warm-up failed: RuntimeError: x")
    assert diagnostic_status(values, {}, problems, True, 0, "cpu", warming_up=True).level == warming.ERROR


# --- the warm-up --------------------------------------------------------------------------------------------------
class WarmUpPolicy:
    """What WarmUp uses of a Policy, recording the calls; ``graphs``: whether it has graphs."""

    def __init__(self, graphs: bool):
        self.config = SimpleNamespace(action_horizon=4, action_dim=8)
        self.actions = SimpleNamespace(state_to_model=lambda state: np.concatenate([state, [0.0]]))  # one more dim
        self.calls = []
        self.graph_stats = SimpleNamespace(captures=7, capture_s=0.5, captures_after_ready=0, static_bytes=1024,
                                           pool_reserved_bytes=None) if graphs else None

    def prepare(self, obs):
        self.calls.append(("prepare", obs.prompt, sorted(obs.images), len(obs.state)))
        # two image slots filled by the named camera (as an adapter may fill more)
        return SimpleNamespace(inputs=(None, np.array([[True, True, False]])), stamp=obs.stamp)

    def warm_up_graphs(self, prompt, state_dims, camera_counts, guided=False):
        self.calls.append(("graphs", prompt, state_dims, camera_counts, guided))
        return self.graph_stats

    def run(self, prepared, noise):
        self.calls.append(("run", float(np.abs(noise).max()), noise.shape))
        return SimpleNamespace(timings={"total": 0.02})


@pytest.mark.parametrize("graphs", [False, True])
def test_the_warm_up_captures_every_length_then_runs_a_blank_observation_with_zero_noise(graphs):
    policy = WarmUpPolicy(graphs)
    warm = WarmUp(policy, ["base_0_rgb"], ["a", "b", "c"], prompt=lambda: "", other_prompts=["later", ""],
                  guided=True)
    assert not warm.ready.is_set() and warm.values() == ({"graph_captures": 7.0, "graph_capture_s": 0.5,
                                                          "graph_captures_after_ready": 0.0,
                                                          "graph_static_bytes": 1024.0} if graphs else {})
    text = warm.run()
    assert warm.ready.is_set() and warm.seconds >= 0 and "warm_up_s" in warm.values()
    # every prompt's lengths (the current one, then model.warm_up_prompts, empty ones left out) in one warm-up
    assert policy.calls == [("prepare", WARMUP_PROMPT, ["base_0_rgb"], 3),
                            ("graphs", [WARMUP_PROMPT, "later"], 4, (2,), True), ("run", 0.0, (4, 8))]
    assert text.startswith("warm-up inference: 20 ms") and ("7 graphs captured in 0.5 s" in text) == graphs


def test_the_warm_up_reports_the_kernel_choices_the_gpu_measured():
    """On a GPU the split kernels measure their configs during the warm-up (model/kernel_choice.py): /diagnostics
    has how many choices and the seconds they took, and the ready line says so too; none (CPU) adds nothing."""
    from turbopi_ros.model.kernel_choice import Choice

    made = [Choice("split_attention", "B1 G1 M400 N839 D256 bfloat16", "sdpa", seconds=1.5),
            Choice("few_rows_linear", "50x1024 @ 1024x2560 bfloat16", "cublas", seconds=0.25)]
    made.append(Choice("split_attention", "B1 G1 M400 N327 D256 bfloat16", "split 16 rows, 4 splits, 4 warps",
                       loaded=True))
    warm = WarmUp(WarmUpPolicy(False), ["base_0_rgb"], ["a"], prompt=lambda: "", kernel_choices=lambda: made)
    assert warm.values() == {"kernel_choices": 3.0, "kernel_choice_s": 1.75}
    assert ", 3 kernel choices (1 loaded, the others measured in 1.8 s); warm-up took" in warm.run()
    made.clear()
    assert warm.values() == {"warm_up_s": warm.seconds} and "kernel choices" not in warm.run()


def test_a_prompt_set_after_ready_is_warned_about_when_its_lengths_have_no_graph():
    """WarmUp.unforeseen on a real tiny pi0.5 policy with graphs (static replay on CPU): the start prompt and those of
    model.warm_up_prompts have every length captured; another prompt's lengths, over every state, mostly not (the
    node logs the warning as the prompt is set); one used once has one length fewer missing. Without graphs,
    nothing to warn about."""
    from turbopi_ros.policy.loading import load_policy
    from turbopi_ros.policy.policy import Observation

    kwargs = dict(checkpoint="random", preset="tiny_pi05", device="cpu", seed=3, action_dims=3, num_steps=2)
    policy = load_policy(**kwargs)
    policy.use_graphs(static_replay_on_cpu=True)
    warm = WarmUp(policy, ["base_0_rgb"], ["a", "b", "c"], prompt=lambda: "pick", other_prompts=["place it"])
    other = "stack the cubes and then push them into the blue bin"
    assert warm.unforeseen(other) is None  # before ready: the warm-up has not read the prompt yet
    warm.run()
    assert warm.unforeseen("pick") is None and warm.unforeseen("place it") is None
    message = warm.unforeseen(other)
    count = int(message.split(": ")[1].split(" of its")[0])
    assert count == 7 and "model.warm_up_prompts" in message and "stack the cubes" in message, message
    assert "captured before its first inference" in message, message
    image = {"base_0_rgb": np.zeros((8, 8, 3), np.uint8)}
    policy.infer(Observation(images=image, state=np.zeros(3), prompt=other))
    assert f"{count - 1} of its prompt lengths" in warm.unforeseen(other)
    assert len(warm.missing_lengths(other)) == count - 1
    plain = WarmUp(load_policy(**kwargs), ["base_0_rgb"], ["a", "b", "c"], prompt=lambda: "pick")
    plain.run()
    assert plain.unforeseen(other) is None and plain.missing_lengths(other) == []
    assert plain.capture_prompt(other) is None


def test_an_unforeseen_prompt_is_captured_whole_before_its_first_inference():
    """WarmUp.capture_prompt (the engine's hook before the first inference with a prompt) on a real tiny pi0.5 policy
    with graphs (static replay on CPU): the prompt's 7 missing lengths, prefix and denoise each, in one go; then
    inferences over states that move the prompt length capture nothing, and a second call captures nothing."""
    from turbopi_ros.policy.loading import load_policy
    from turbopi_ros.policy.policy import Observation

    policy = load_policy(checkpoint="random", preset="tiny_pi05", device="cpu", seed=3, action_dims=3, num_steps=2)
    policy.use_graphs(static_replay_on_cpu=True)
    warm = WarmUp(policy, ["base_0_rgb"], ["a", "b", "c"], prompt=lambda: "pick")
    other = "stack the cubes and then push them into the blue bin"
    assert warm.capture_prompt(other) is None  # before ready: the warm-up's to do
    warm.run()
    after_warm_up = policy.graph_stats.captures
    line = warm.capture_prompt(other)
    captured = policy.graph_stats.captures - after_warm_up
    assert captured == 2 * 7 and f"captured {captured} graphs for 7 of its prompt lengths" in line, line
    assert policy.graph_stats.captures_after_ready == captured
    assert warm.missing_lengths(other) == [] and warm.unforeseen(other) is None and warm.capture_prompt(other) is None
    image = {"base_0_rgb": np.zeros((8, 8, 3), np.uint8)}
    lengths = set()
    for value in np.linspace(-1.0, 1.0, 9):  # states whose discretized tokens change the prompt's length
        state = np.array([value, -value, 0.5 * value])
        lengths.add(int(policy.prepare(Observation(images=image, state=state, prompt=other)).inputs[3].sum()))
        policy.infer(Observation(images=image, state=state, prompt=other))
    assert len(lengths) > 1, lengths
    assert policy.graph_stats.captures - after_warm_up == captured  # nothing captured while the state moved
    # real-time chunking switched on later: the guided graphs of every length, in the same way
    count = len(policy.prompt_lengths([other], 3))
    assert warm.missing_lengths(other, guided=True) == policy.prompt_lengths([other], 3)
    line = warm.capture_prompt(other, guided=True)
    assert f"captured {count} graphs for {count} of its prompt lengths" in line, line
    assert warm.missing_lengths(other, guided=True) == [] and warm.missing_lengths(other) == []  # one serves any beta


def test_the_engine_warms_up_before_it_takes_an_observation():
    inputs = joints_only(time.time(), WALL_AGE_S)
    order = []
    worker, published, failures = _worker(inputs, lambda prepared: order.append("run") or "chunk")
    worker.start(warm_up=lambda: (time.sleep(0.2), order.append("warm up")))
    worker.wake()
    assert wait_for(lambda: len(order) >= 2, 10), (order, failures)
    assert worker.stop(1.0)
    assert order[:2] == ["warm up", "run"] and failures == [], (order, failures)


def test_the_node_hook_captures_a_missing_prompt_and_a_failed_capture_is_reported_not_retried():
    """TurbopiNode._capture_prompt (the engine's new_prompt hook; WarmUp.capture_before_inferring) over a stand-in
    of its parts: nothing missing, nothing done (False); missing lengths: a wait reported, the capture logged (True);
    a capture that raises: an error naming it, and False, so the engine goes on to the inference instead of retrying
    on every observation."""
    pytest.importorskip("rclpy")
    from turbopi_ros.ros.policy_node import TurbopiNode

    def node(missing, capture):
        seen = SimpleNamespace(reports=[], failures=[], logs=[], guided=[])

        def missing_lengths(text, guided):
            seen.guided.append(guided)
            return missing
        warm_up = SimpleNamespace(missing_lengths=missing_lengths, capture_prompt=capture)
        warm_up.capture_before_inferring = lambda *a: WarmUp.capture_before_inferring(warm_up, *a)
        part = SimpleNamespace(warm_up=warm_up, rtc=SimpleNamespace(enabled=True),
                               problems=SimpleNamespace(report=lambda m, waiting: seen.reports.append((m, waiting))),
                               flow=SimpleNamespace(fail=seen.failures.append),
                               get_logger=lambda: SimpleNamespace(info=seen.logs.append))
        return part, seen

    part, seen = node([], None)
    assert TurbopiNode._capture_prompt(part, "pick") is False and seen.reports == seen.logs == []
    part, seen = node([12, 13], lambda text, guided: f"captured for {text}, guided {guided}")
    assert TurbopiNode._capture_prompt(part, "pick") is True
    assert seen.reports == [("capturing the CUDA graphs of prompt 'pick' before inferring with it", True)]
    assert seen.logs == ["captured for pick, guided True"] and seen.failures == [] and seen.guided == [True]

    def fails(text, guided):
        raise RuntimeError("CUDA out of memory")
    part, seen = node([12], fails)
    assert TurbopiNode._capture_prompt(part, "pick") is False
    assert seen.failures == ["capturing the graphs of prompt 'pick' failed: RuntimeError: CUDA out of memory"]


def test_an_injected_hang_lasts_until_the_faults_file_ends_it(tmp_path):
    """The test-only hang (faults.py) sleeps its hang_s, or less once the file no longer asks for a hang: the fault
    tests end a hang when they have seen what they wait for, however long a loaded machine took to show it."""
    import json

    from turbopi_ros.ros import faults

    path = tmp_path / "faults.json"
    infer = faults.wrap(lambda x: x + 1, str(path))
    path.write_text(json.dumps({"hang_s": 0.3}))
    t0 = time.monotonic()
    assert infer(1) == 2 and 0.3 <= time.monotonic() - t0 < 2.0  # the whole hang while the file asks for it
    path.write_text(json.dumps({"hang_s": 60.0}))
    done = []
    worker = threading.Thread(target=lambda: done.append(infer(2)), daemon=True)
    t0 = time.monotonic()
    worker.start()
    time.sleep(0.3)
    assert not done  # still hanging
    path.write_text(json.dumps({"delay_s": 0.01}))
    worker.join(timeout=10)
    assert done == [3] and time.monotonic() - t0 < 5.0


def test_an_injected_fault_marks_the_inference_it_enters(tmp_path):
    """entered_file (faults.py): the inference that reads the faults writes the file before its delay, so a test knows
    an inference is in flight (its observation taken) instead of guessing; none is written without the field."""
    import json

    from turbopi_ros.ros import faults

    path, entered = tmp_path / "faults.json", tmp_path / "entered"
    seen = []
    infer = faults.wrap(lambda x: seen.append(entered.exists()) or x + 1, str(path))
    assert infer(1) == 2 and not entered.exists()  # no faults file: nothing written
    path.write_text(json.dumps({"delay_s": 0.5, "entered_file": str(entered)}))
    done = []
    worker = threading.Thread(target=lambda: done.append(infer(2)), daemon=True)
    worker.start()
    deadline = time.monotonic() + 5
    while not entered.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert entered.exists() and not done  # marked before the delay ends
    worker.join(timeout=10)
    assert done == [3] and seen == [False, True]


def test_the_ready_line_says_what_runs_the_fused_kernels(monkeypatch):
    """With model.fused the "ready:" line names the fused ops' backend: Triton's kernels, or their torch twins, which
    on a GPU whose torch came without Triton are no faster than the plain path (and the line says so)."""
    import torch

    from turbopi_ros.model import fused
    from turbopi_ros.ros.node_status import ready_message

    def line(fused_on: bool, device: str) -> str:
        config = SimpleNamespace(model=SimpleNamespace(device=device, dtype="bfloat16", fused=fused_on),
                                 command_rate_hz=50.0, control_rate_hz=50.0, cameras=SimpleNamespace(names=["base"]),
                                 action=SimpleNamespace(joints=["j"]))
        policy = SimpleNamespace(config=SimpleNamespace(variant="pi05"), num_steps=10,
                                 model=SimpleNamespace(device=torch.device(device)))
        return ready_message(config, policy, "~/actions", "enabled")

    assert line(False, "cuda").startswith("ready: pi05 on cuda (bfloat16), 10 steps, cameras ['base']")
    assert line(True, "cpu").startswith("ready: pi05 on cpu (bfloat16), fused kernels (torch twin), 10 steps")
    if fused.triton_available():
        assert ", fused kernels (triton), 10 steps" in line(True, "cuda")
    monkeypatch.setattr(fused, "triton", None)  # a GPU whose torch wheel came without Triton
    assert (", fused kernels (torch twin: Triton is not installed, so no faster than model.fused: false), 10 steps"
            in line(True, "cuda"))


def test_on_stale_hold_does_not_jump_ahead_on_the_old_chunk_when_the_inputs_are_fresh_again():
    """on_stale: hold, a 2 s chunk moving a joint at 1 rad/s. The joint states stop for 1.5 s: after 0.5 s the
    commands hold the last one (0.6). When they are fresh again the commands must not resume the old chunk where its
    clock has got to meanwhile (1 rad further on, in one tick): a controller following ~/joint_command would jump
    there. Until a chunk computed from the fresh inputs arrives, the held command is the right one."""

    clock, logs = SimpleNamespace(t=1000.0), []
    inputs, schedule = joints_only(clock.t), ChunkSchedule(50.0, 0.1)
    sent = []
    outputs = SimpleNamespace(publish_command=lambda c, held=False: sent.append(np.array(c)), stop=lambda: None)
    logger = SimpleNamespace(info=logs.append, error=logs.append)
    flow = ChunkFlow(schedule, ChunkGate(inputs, PauseWatch(MAX_AGE_S)), outputs, NodeStats(),
                     ProblemLog(logs.append, logs.append), logger, True, lambda: clock.t, lambda: None, lambda: True)
    source = CommandSource(schedule, inputs, outputs, NodeStats(), lambda: clock.t, flow.fail, lambda: True, True)
    schedule.set_chunk(np.arange(1, 101)[:, None] / 50.0 * np.ones(2), clock.t, clock.t)  # 1 rad/s for 2 s
    for _ in range(5):  # 20 ms ticks, inputs fresh
        clock.t += 0.02
        inputs.store(JOINT_STATES, joint_state(clock.t))
        source.tick()
    assert np.allclose(sent[-1], 0.1)
    for _ in range(75):  # the joint states stop for 1.5 s: stale after 0.5 s, held from then on
        clock.t += 0.02
        source.tick()
    assert np.allclose(sent[-1], sent[-2]) and "joint_states" in logs[-1]
    held = sent[-1]
    clock.t += 0.02
    inputs.store(JOINT_STATES, joint_state(clock.t))  # fresh again; no new chunk yet
    source.tick()
    assert np.abs(sent[-1] - held).max() < 0.05, f"the command jumped from {held} to {sent[-1]} in one tick"


def test_the_operators_stop_halts_the_chunk_a_controller_still_follows_after_a_problem_stopped_the_commands():
    """action.halt_on_stop, on_stale: stop. A 1 s chunk goes out on ~/action_chunk (a joint_trajectory_controller
    follows it to its end); 0.2 s later an inference fails (or the inputs go stale): the command stream stops, the
    controller goes on with the chunk ("stale inputs stop the commands, not the chunk", docs/node.md). The operator
    then disables the node: with halt_on_stop that must send the halt that replaces the chunk being followed. It
    sent nothing: the halt looked at the command schedule, which the problem had cleared. A second stop after the halt
    sends nothing more (the controller follows the halt, not the chunk)."""
    from test_action_outputs import _outputs

    for problem in ("inference failed: RuntimeError: x", "joint_states: newest message is 0.60 s old"):
        clock, logs = SimpleNamespace(t=1000.0), []
        node, outputs = _outputs({}, halt_on_stop=True)
        schedule = ChunkSchedule(50.0, 0.1)
        logger = SimpleNamespace(info=logs.append, error=logs.append)
        flow = ChunkFlow(schedule, ChunkGate(joints_only(clock.t), PauseWatch(MAX_AGE_S)), outputs, NodeStats(),
                         ProblemLog(logs.append, logs.append), logger, False, lambda: clock.t, lambda: None,
                         lambda: True)
        chunk = SimpleNamespace(actions=np.arange(1, 51)[:, None] / 50.0 * np.ones(6), stamp=clock.t - 0.01,
                                guidance_error=None, state=None, timings={"total": 0.05})
        assert flow.publish(chunk, 0.0, 0.0, 0.0)
        clock.t += 0.2
        flow.fail(problem)  # the commands stop
        assert schedule.command(clock.t) is None
        outputs.halt(schedule, clock.t)  # ~/enable false (TurbopiNode._stop_publishing: then CommandSource.stop)
        schedule.clear()
        halts = node.sent["~/action_chunk"][1:]
        assert len(halts) == 1, f"after '{problem}', the operator's stop did not halt the chunk being followed"
        assert np.allclose(halts[0].points[0].positions, 0.335, atol=1e-9)  # the chunk (t - its stamp) at now + 0.125 s
        outputs.halt(schedule, clock.t + 0.05)  # shutdown after the disable: the controller follows the halt
        assert len(node.sent["~/action_chunk"]) == 2


@pytest.mark.parametrize("blank", [" \t\n ", "_", "\n_ "])
def test_a_prompt_that_cleans_to_nothing_warms_up_as_no_prompt(blank):
    """A start prompt or a model.warm_up_prompts entry that openpi's cleaning empties (whitespace, underscores) is no
    prompt, as "" is: the warm-up uses WARMUP_PROMPT and leaves the entry out, instead of failing with "prompt is
    empty" (no graphs captured, no warm-up inference, captures while the robot moves)."""
    from turbopi_ros.policy.loading import load_policy

    policy = load_policy(checkpoint="random", preset="tiny_pi05", device="cpu", seed=3, action_dims=3, num_steps=2)
    policy.use_graphs(static_replay_on_cpu=True)
    warm = WarmUp(policy, ["base_0_rgb"], ["a", "b", "c"], prompt=lambda: blank, other_prompts=[blank, "place it"])
    assert "graphs captured" in warm.run()
    assert warm.ready.is_set() and warm.camera_count == 1
    assert warm.missing_lengths(WARMUP_PROMPT) == [] and warm.missing_lengths("place it") == []


def test_an_observation_prepared_with_a_superseded_prompt_is_not_run():
    """Pipelined (frames prepared when taken): the observation prepared during an inference, waiting in the slot, was
    prepared with the prompt of then. A prompt set before the engine takes it supersedes it: the engine drops it and
    runs one prepared with the new prompt, rather than computing (and publishing) one more chunk of the old task."""
    inputs = joints_only(time.time(), WALL_AGE_S)
    prompt, ran, release = ["stack the cups"], [], threading.Event()

    def run(prepared):
        ran.append(prepared.prompt)
        release.wait(10)
        return "chunk"

    worker, published, failures = _worker(inputs, run, prompt=lambda: prompt[0])
    worker.policy.prepare = lambda obs: SimpleNamespace(stamp=obs.stamp, prompt=obs.prompt)
    worker.start()
    assert wait_for(lambda: ran, 10), failures  # the first inference runs (and waits for release)
    inputs.store(JOINT_STATES, joint_state(time.time()))
    worker.wake()
    assert wait_for(lambda: worker._slot.peek() is not None, 10)  # the next one prepared, waiting in the slot
    prompt[0] = "put the cups away"
    worker.wake()
    release.set()
    assert wait_for(lambda: len(ran) >= 2, 10), failures
    assert worker.stop(1.0)
    assert ran[:2] == ["stack the cups", "put the cups away"], ran
