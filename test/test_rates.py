"""EventRate: rates from event times, count-based and by median interval."""
import numpy as np
import pytest

from turbopi_ros.ros.rates import EventRate


def test_rate_over_the_window_and_idle():
    r = EventRate(window=11)
    for i in range(30):
        r.add(i * 0.02)
    assert r.rate(now=0.6, idle_s=1.0) == pytest.approx(50.0)
    assert r.rate(now=5.0, idle_s=1.0) == 0.0  # nothing for 4 s
    assert EventRate().rate(0.0, 1.0) == 0.0


def test_median_rate_ignores_jitter_and_bursts_and_is_clamped():
    rng = np.random.default_rng(0)
    r = EventRate(window=100)
    t = 0.0
    for i in range(100):
        t += 0.01 + rng.normal(0, 0.0005) + (0.05 if i % 20 == 0 else 0.0)  # 100 Hz with jitter and late messages
        r.add(t)
    assert r.median_rate(now=t, idle_s=1.0) == pytest.approx(100.0, rel=0.02)
    fast = EventRate()
    for i in range(10):
        fast.add(i * 1e-4)
    assert fast.median_rate(now=1e-3, idle_s=1.0) == 1000.0
    assert fast.median_rate(now=10.0, idle_s=1.0) is None


def test_the_joint_states_rate_is_the_robots_own_from_their_stamps():
    """A busy node takes joint states late and in bunches, and its depth-1 queue replaces some before it takes them:
    the arrival times then say a slower, irregular rate. The stamps of those taken still say the robot's 500 Hz. With
    stamps that never change (a driver repeating its last measurement) the arrival times are what is left."""
    pytest.importorskip("diagnostic_msgs")
    from turbopi_ros.ros.node_status import NodeStats

    rng = np.random.default_rng(1)
    stats, frozen = NodeStats(), NodeStats()
    received = 0.0
    for i in range(400):
        stamp = i * 0.002
        if rng.random() < 0.3:
            continue  # replaced in the queue before the node took it
        received = max(received, stamp) + rng.exponential(0.001)
        stats.joint_state(received, stamp)
        frozen.joint_state(received, 0.5)
    by_arrival = stats.joint_times.median_rate(received, idle_s=2.0)
    assert by_arrival < 450.0  # what the node measured before it read the stamps
    assert stats.joint_rate(received) == pytest.approx(500.0, rel=0.01)
    assert frozen.joint_rate(received) == pytest.approx(by_arrival)
    assert stats.joint_rate(received + 2.5) is None  # none for 2.5 s: no rate, whatever the stamps say
