"""LatestSlot and PrepareTiming: the node's pipelining rules without the node."""
import threading
import time

import pytest

from turbopi_ros.ros.pipeline import PrepareTiming, LatestSlot


def test_a_newer_item_supersedes_one_not_yet_taken():
    slot = LatestSlot()
    assert slot.take(timeout=0.0) is None and not slot
    slot.put("old")
    slot.put("new")
    assert slot.superseded == 1 and slot
    assert slot.take(timeout=0.0) == "new"  # the old one is gone, never handed out
    assert slot.take(timeout=0.0) is None


def test_take_waits_for_an_item():
    slot = LatestSlot()
    threading.Timer(0.05, slot.put, args=("x",)).start()
    t0 = time.monotonic()
    assert slot.take(timeout=2.0) == "x" and time.monotonic() - t0 < 1.0


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


def test_prepare_just_before_the_engine_is_expected_to_finish():
    clock = Clock()
    jit = PrepareTiming(margin=1.0, extra_s=0.001, clock=clock)
    assert jit.prepare_delay() == 0.0  # nothing known: prepare at once
    for _ in range(3):  # runs of 50 ms, preparations of 5 ms
        jit.run_started()
        clock.t += 0.050
        jit.run_ended()
        jit.prepared(0.005)
    assert jit.prepare_delay() == 0.0  # the engine is idle
    jit.run_started()
    clock.t += 0.010
    assert jit.prepare_delay() == pytest.approx(0.050 - 0.010 - 0.005 - 0.001)
    assert jit.jit_point() == pytest.approx(clock.t - 0.010 + 0.050 - 0.006)
    clock.t += 0.045  # the run overruns its median
    assert jit.prepare_delay() == 0.0
    jit.run_ended()
    assert jit.jit_point() == -float("inf")  # idle: any time is due
    jit.run_started()
    jit.run_abandoned()  # claimed, then not run (its observation went stale): no duration recorded
    assert jit.jit_point() == -float("inf") and len(jit._runs) == 4


def test_during_the_first_run_the_next_preparation_is_always_due():
    """Nothing predicts the first run's end: an observation prepared during it is refreshed as inputs arrive rather
    than kept from its start (the first run, with warm-up, is the longest)."""
    clock = Clock()
    jit = PrepareTiming(margin=1.0, extra_s=0.001, clock=clock)
    jit.prepared(0.004)
    jit.run_started()
    clock.t += 0.3
    assert jit.jit_point() == pytest.approx(clock.t - 0.005) and jit.prepare_delay() == 0.0


def test_pacing_moves_the_preparation_to_the_next_allowed_start():
    clock = Clock()
    jit = PrepareTiming(margin=1.0, extra_s=0.0, clock=clock)
    jit.prepared(0.004)
    assert jit.prepare_delay(not_before=clock.t + 0.5) == pytest.approx(0.5 - 0.004)


def test_a_take_and_its_claim_are_seen_together():
    """The engine takes an observation and claims the engine (PrepareTiming.run_started) in one step under the slot's
    lock: a peek with ``also`` sees the item waiting or the claim, never an empty slot with an idle engine (the
    preparer read that as 'prepare at once', and the observation it prepared at the start of a run waited the whole
    run)."""
    slot, jit = LatestSlot(), PrepareTiming()
    jit.prepared(0.001)
    jit.run_started()
    jit.run_ended()  # one run known: a claimed engine has a finite jit point
    slot.put("observation")
    in_claim, seen = threading.Event(), []

    def slow_claim():
        in_claim.set()
        time.sleep(0.1)  # a peek arriving now must wait until the claim is done
        jit.run_started()

    taker = threading.Thread(target=lambda: slot.take(timeout=1.0, claim=slow_claim))
    taker.start()
    assert in_claim.wait(5)
    seen.append(slot.peek(also=jit.jit_point))
    taker.join()
    item, point = seen[0]
    assert item is None and point > -float("inf")  # after the take, the claim is visible
    assert slot.take(timeout=0.0, claim=lambda: pytest.fail("no item: no claim")) is None
