"""FramePreparer: camera frames prepared on their own threads as they arrive; result(name, msg) is always what
preparing that very frame gives, prepared once where it can be, and its errors come out of result()."""
import threading
import time

import pytest

from turbopi_ros.ros.frames import FramePreparer


class Frame:
    """A message stand-in: FramePreparer tells frames apart by identity, as the node's messages are."""

    def __init__(self, value):
        self.value = value


class Recorder:
    """prepare(name, msg): records each call and its thread; blocks while ``gate`` is clear; raises for value < 0."""

    def __init__(self):
        self.calls = []
        self.threads = set()
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, name, msg):
        self.calls.append((name, msg.value))
        self.threads.add(threading.current_thread().name)
        self.started.set()
        assert self.gate.wait(10)
        if msg.value < 0:
            raise ValueError(f"{name}: frame {msg.value} does not decode")
        return (name, msg.value * 10)


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def frames():
    made = []

    def make(prepare, **kwargs):
        preparer = FramePreparer(["base", "wrist"], prepare, **kwargs)
        made.append(preparer)
        return preparer

    yield make
    for preparer in made:
        preparer.close()


def test_a_frame_is_prepared_on_its_cameras_thread_once(frames):
    prepare, seen = Recorder(), []
    preparer = frames(prepare, thread_init=lambda: seen.append(threading.current_thread().name))
    preparer.start()
    base, wrist = Frame(1), Frame(2)
    preparer.submit("base", base)
    preparer.submit("wrist", wrist)
    assert _wait(lambda: preparer.prepared == 2)
    assert preparer.result("base", base) == ("base", 10) and preparer.source("wrist", wrist) == ("wrist", 20)
    assert preparer.result("base", base) == ("base", 10)
    assert sorted(prepare.calls) == [("base", 1), ("wrist", 2)]  # once each, though asked for three times
    assert prepare.threads == {"turbopi_frames_base", "turbopi_frames_wrist"} == set(seen)
    assert preparer.late == 0 and preparer.median_ms() is not None


def test_the_newest_frame_replaces_one_still_waiting_and_a_replaced_frame_is_prepared_when_asked(frames):
    prepare = Recorder()
    preparer = frames(prepare)
    preparer.start()
    first, second, third = Frame(1), Frame(2), Frame(3)
    prepare.gate.clear()
    preparer.submit("base", first)
    assert prepare.started.wait(5)  # the camera's thread is busy with the first frame
    preparer.submit("base", second)
    preparer.submit("base", third)  # replaces the second, which never started
    assert preparer.skipped == 1
    prepare.gate.set()
    assert _wait(lambda: preparer.prepared == 2)
    assert [v for _, v in prepare.calls] == [1, 3]
    # an observation that took the second frame still gets exactly it, prepared in the asking thread
    assert preparer.result("base", second) == ("base", 20)
    assert preparer.late == 1 and [v for _, v in prepare.calls] == [1, 3, 2]


def test_result_waits_for_the_frame_being_prepared_instead_of_preparing_it_twice(frames):
    prepare = Recorder()
    preparer = frames(prepare)
    preparer.start()
    frame = Frame(4)
    prepare.gate.clear()
    preparer.submit("wrist", frame)
    assert prepare.started.wait(5)
    threading.Timer(0.2, prepare.gate.set).start()
    t0 = time.monotonic()
    assert preparer.result("wrist", frame) == ("wrist", 40)
    assert time.monotonic() - t0 >= 0.15  # it waited for the camera's thread
    assert prepare.calls == [("wrist", 4)] and preparer.late == 0


def test_a_frame_taken_before_its_thread_got_to_it_is_prepared_by_the_taker(frames):
    prepare = Recorder()
    preparer = frames(prepare)  # not started: no camera thread prepares anything
    frame = Frame(5)
    preparer.submit("base", frame)
    source = preparer.source("base", frame)  # not ready: a callable that prepares it
    assert callable(source) and prepare.calls == []
    assert source() == ("base", 50)
    assert preparer.late == 1 and prepare.calls == [("base", 5)]
    assert preparer.result("base", frame) == ("base", 50) and prepare.calls == [("base", 5)]  # kept


def test_an_error_comes_out_where_the_frame_is_used(frames):
    prepare = Recorder()
    preparer = frames(prepare)
    preparer.start()
    bad, good = Frame(-1), Frame(6)
    preparer.submit("base", bad)
    assert _wait(lambda: preparer.prepared == 1)
    with pytest.raises(ValueError, match="base: frame -1 does not decode"):
        preparer.result("base", bad)
    with pytest.raises(ValueError, match="does not decode"):  # asked again: the same error, not prepared again
        preparer.source("base", bad)()
    assert prepare.calls == [("base", -1)]
    preparer.submit("base", good)  # the camera recovers
    assert _wait(lambda: preparer.prepared == 2)
    assert preparer.result("base", good) == ("base", 60)
    with pytest.raises(ValueError, match="does not decode"):  # inline too
        preparer.result("wrist", Frame(-2))


def test_close_ends_the_camera_threads():
    preparer = FramePreparer(["base"], Recorder())
    preparer.start()
    preparer.close()
    assert not any(t.is_alive() for t in preparer._threads)
    assert preparer.result("base", Frame(7)) == ("base", 70)  # still usable, in the caller's thread
