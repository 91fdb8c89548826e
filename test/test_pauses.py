"""PauseWatch: a pause of the whole node told from the command thread's heartbeat (turbopi_ros/ros/pauses.py)."""
from turbopi_ros.ros.pauses import PauseWatch


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_late_tick_ends_a_pause_and_is_seen_by_whoever_runs_after_it():
    clock = Clock()
    watch = PauseWatch(0.5, clock=clock)
    assert watch.beat(0.001, 0.02) is None
    run_start = clock.t
    clock.t += 2.0  # nothing ran for 2 s
    assert watch.paused_since(run_start)  # seen before the heartbeat: no tick for 2 s
    assert watch.beat(2.0, 0.02) == 2.0
    assert watch.paused_since(run_start)  # and after it: the pause ended after the run started
    clock.t += 0.02
    assert watch.beat(0.0, 0.02) is None
    assert not watch.paused_since(clock.t - 0.01)  # a run started after the pause


def test_ordinary_lateness_is_no_pause():
    clock = Clock()
    watch = PauseWatch(0.5, clock=clock)
    for _ in range(10):
        clock.t += 0.3
        assert watch.beat(0.28, 0.02) is None
    assert not watch.paused_since(clock.t - 1.0)


def test_a_slow_command_rate_is_no_pause():
    """At 1 Hz the heartbeat is a second apart: three periods are allowed, whatever the threshold."""
    clock = Clock()
    watch = PauseWatch(0.5, clock=clock)
    watch.beat(0.0, 1.0)
    clock.t += 1.5
    assert not watch.paused_since(clock.t - 1.0)
    assert watch.beat(0.5, 1.0) is None
    clock.t += 3.5
    assert watch.paused_since(clock.t - 1.0)


def test_disabled_never_reports():
    clock = Clock()
    watch = PauseWatch(0.5, enabled=False, clock=clock)
    clock.t += 10.0
    assert not watch.paused_since(0.0)
