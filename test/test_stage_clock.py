"""StageClock: the stage durations of one run, from marks between the stages."""
import time

import pytest
import torch

from turbopi_ros.policy.stage_clock import StageClock


def test_durations_between_marks_on_cpu():
    """Each duration lies between the sleep it holds and the host times taken around its two marks: bounds that a
    loaded machine (a sleep that oversleeps, a preempted mark) cannot break, but a clock that pairs the wrong marks
    or measures something else does."""
    clock, now = StageClock(torch.device("cpu")), time.perf_counter
    a0 = now()
    clock.mark()
    time.sleep(0.02)
    b1 = now()
    clock.mark()
    clock.mark()
    a2 = now()
    time.sleep(0.01)
    clock.mark()
    a3 = now()
    first, empty, last = clock.durations()
    assert 0.02 <= first <= a2 - a0, (first, a2 - a0)
    assert 0.0 <= empty <= a2 - b1, (empty, a2 - b1)
    assert 0.01 <= last <= a3 - b1, (last, a3 - b1)


def test_one_mark_is_no_duration():
    clock = StageClock(torch.device("cpu"))
    clock.mark()
    with pytest.raises(ValueError, match="at least two marks"):
        clock.durations()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA events need a CUDA device")
def test_cuda_marks_are_events_timed_on_the_device():
    clock = StageClock(torch.device("cuda"))
    x = torch.randn(2048, 2048, device="cuda")
    clock.mark()
    for _ in range(20):
        x = x @ x / 2048
    clock.mark()
    assert isinstance(clock._marks[0], torch.cuda.Event)
    (matmuls,) = clock.durations()
    assert matmuls > 0


def test_marks_of_a_model_on_a_second_gpu_are_recorded_on_that_gpu(monkeypatch):
    """model.device cuda:N (N > 0): the marks are events in that GPU's stream, not in the current GPU's (cuda:0 unless
    set), where the stages' kernels never run and every duration would read about 0."""
    from fake_cuda_devices import FakeCuda

    FakeCuda(monkeypatch, current=0)
    clock = StageClock(torch.device("cuda:1"))
    clock.mark()
    clock.mark()
    assert [event.device for event in clock._marks] == [1, 1]
