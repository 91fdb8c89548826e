"""StageClock: the stage durations of one run, from marks between the stages."""
import time

import pytest
import torch

from turbopi_ros.policy.stage_clock import StageClock


def test_durations_between_marks_on_cpu():
    clock = StageClock(torch.device("cpu"))
    clock.mark()
    time.sleep(0.02)
    clock.mark()
    clock.mark()
    time.sleep(0.01)
    clock.mark()
    first, empty, last = clock.durations()
    assert first == pytest.approx(0.02, abs=0.015) and empty < 0.005 and last == pytest.approx(0.01, abs=0.015)
    assert first > last


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
