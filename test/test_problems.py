"""ProblemLog: each kind of problem logged once then throttled; waiting is a warning; recovery reported once."""
from turbopi_ros.ros.problems import ProblemLog, kind_of


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def _log():
    lines, clock = [], Clock()
    log = ProblemLog(lambda m: lines.append(("error", m)), lambda m: lines.append(("warn", m)), repeat_s=5.0,
                     clock=clock)
    return log, lines, clock


def test_a_problem_differing_only_in_numbers_is_logged_once_per_period():
    assert kind_of("camera 'a': 0.52 s old") == kind_of("camera 'a': 0.71 s old")
    log, lines, clock = _log()
    for i in range(50):
        clock.t = i * 0.02
        log.report(f"joint_states: newest message is 0.{50 + i} s old")
    assert [level for level, _ in lines] == ["error"]
    clock.t = 5.5
    log.report("joint_states: newest message is 1.20 s old")
    assert len(lines) == 2 and lines[-1] == ("error", "no chunk: joint_states: newest message is 1.20 s old")
    assert log.count == 51 and log.level == "error"


def test_waiting_is_a_warning_and_not_counted():
    log, lines, _ = _log()
    log.report("waiting for inputs: no message yet on /joint_states", waiting=True)
    assert lines == [("warn", "no chunk: waiting for inputs: no message yet on /joint_states")]
    assert log.count == 0 and log.level == "warn"
    assert log.clear() is None  # waiting ended: not a recovery


def test_clear_returns_the_real_problem_and_relogs_a_recurrence_at_once():
    log, lines, clock = _log()
    log.report("camera 'a': encoding 16UC1 not supported")
    assert log.clear() == "camera 'a': encoding 16UC1 not supported"
    assert log.level == "ok" and log.message == ""
    clock.t = 1.0  # well inside the repeat period, but the problem is new again
    log.report("camera 'a': encoding 16UC1 not supported")
    assert len(lines) == 2
