"""Ctrl-C under `ros2 launch` reaches a node twice (the terminal signals the process group and launch forwards its
own SIGINT, then escalates to SIGTERM). Whenever the signals arrive - while importing, while the model loads, idle
without inputs, in the middle of inferences - the node must exit 0, without a traceback or an abort, within the time
launch gives it before SIGTERM (5 s)."""
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Iterator

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import BAD_SIGNS, DEMO_PARAMS, REPO, NodeProcess, assert_clean_exit, isolate_ros_domain, \
    make_test_node, node_params, spin_in_background, wait_for  # noqa: E402



@pytest.fixture(scope="module")
def feeder():
    """Sensor data for the cases that need inputs (the node is idle without them: waiting for inputs)."""
    isolate_ros_domain()
    rclpy.init()
    node = make_test_node(node_params())
    executor, _ = spin_in_background(node)
    yield node
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()


def _start(tmp_path, name) -> NodeProcess:
    return NodeProcess(DEMO_PARAMS, tmp_path / f"{name}.log")


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (its SigCgt mask in /proc): the node's own signal handling is
    installed (Python's defaults catch SIGINT only). A signal before that reaches a process that is still starting
    the interpreter, which no program can handle."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("delay_s", [0.0, 0.2, 0.5])
def test_signals_while_importing(tmp_path, delay_s):
    """From the first line of main() on: importing rclpy and torch takes about a second, no node exists yet."""
    node = _start(tmp_path, f"start_{delay_s}")
    assert wait_for(lambda: not node.alive() or _catches_sigterm(node.proc.pid), timeout=30, period=0.005)
    time.sleep(delay_s)
    node.assert_clean_exit(node.interrupt())
    assert "ready:" not in node.log() or delay_s > 0, node.log()


def test_signals_while_the_model_loads(tmp_path):
    node = _start(tmp_path, "loading")
    assert wait_for(lambda: "loading random weights" in node.log() or not node.alive(), timeout=60), node.log()
    assert "ready:" not in node.log(), "the model loaded too fast to interrupt it:\n" + node.log()
    node.assert_clean_exit(node.interrupt())
    assert "ready:" not in node.log()


@contextlib.contextmanager
def _build_process(tmp_path, source: str, cls: str) -> Iterator[subprocess.Popen]:
    """run_node over ``cls``, defined by ``source`` in a module of its own (its name: ``cls`` in snake case, which
    is also the node's name), with stdout and stderr on one pipe; killed on leaving if still running."""
    module = "".join("_" + c.lower() if c.isupper() else c for c in cls).lstrip("_")
    (tmp_path / f"{module}.py").write_text(source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", "from turbopi_ros.ros.spin import run_node; "
                             f"run_node('{module}', '{cls}', '{module}')"], cwd=str(REPO), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ends_at_once(proc: subprocess.Popen, first_line: str, unfinished: str, send: signal.Signals | None = None,
                  pause_s: float = 0.0) -> str:
    """Wait for ``first_line``, then (after ``pause_s``) send ``send`` if given, and check that the process exits 0
    before launch would send SIGTERM, with no bad sign and without printing ``unfinished`` (what the build prints
    if it went on); returns the rest of what it printed."""
    assert proc.stdout.readline().strip() == first_line
    time.sleep(pause_s)
    t0 = time.monotonic()
    if send is not None:
        proc.send_signal(send)
    proc.wait(timeout=60)
    out = proc.stdout.read()  # not communicate(timeout=...): it reads the pipe past what readline buffered
    assert_clean_exit(proc.returncode, out, time.monotonic() - t0)
    assert unfinished not in out, out
    return out


SLOW_BUILD = """
class SlowBuild:
    def __init__(self):
        print("building", flush=True)
        exec("for _ in range(10 ** 9): pass")  # code run by exec() of a string, as dataclasses make their methods
"""


def test_a_signal_inside_exec_code_during_the_build_exits_0(tmp_path):
    """A Ctrl-C that lands in code run by exec() of a string while the node is built (1 in ~20 during the real model
    load: torch imports modules lazily, and dataclasses exec their methods) must exit 0 too: a KeyboardInterrupt raised
    there is marked unhandled by CPython even where it is caught, and a normal exit then ends in kill(SIGINT)."""
    with _build_process(tmp_path, SLOW_BUILD, "SlowBuild") as proc:
        _ends_at_once(proc, "building", unfinished="built", send=signal.SIGINT, pause_s=0.2)


SWALLOWED_BUILD = """
import signal
import weakref


class SwallowedBuild:
    def __init__(self):
        class Held:
            pass

        held = Held()
        # the signal comes while a weakref callback runs (as importlib's module-lock cleanup does during an import):
        # the handler's KeyboardInterrupt is raised in the callback, where Python ignores exceptions
        ref = weakref.ref(held, lambda _: signal.raise_signal(signal.SIGINT))
        del held
        for _ in range(3 * 10 ** 8):  # the rest of a long build (seconds)
            pass
        print("built", flush=True)

    def destroy_node(self):
        return True
"""


def test_a_signal_that_lands_in_a_weakref_callback_during_the_build_still_interrupts_it(tmp_path):
    """A fresh-clone CI run once printed "Exception ignored in: <function _get_module_lock.<locals>.cb>" and a
    KeyboardInterrupt traceback: the Ctrl-C landed in a callback whose exceptions Python ignores, and the model load
    went on. A signal before the node is whole now ends the process inside the handler: nothing is printed, exit 0."""
    t0 = time.monotonic()
    with _build_process(tmp_path, SWALLOWED_BUILD, "SwallowedBuild") as proc:
        log, _ = proc.communicate(timeout=60)
    assert_clean_exit(proc.returncode, log, time.monotonic() - t0)
    assert "built" not in log and "Exception ignored" not in log, log


CATCH_ALL_BUILD = """
import signal
import time


class CatchAllBuild:
    def __init__(self):
        print("building", flush=True)
        try:  # the signal comes inside code that catches everything (a library's bare except, retrying)
            signal.raise_signal(signal.SIGTERM)  # runs the Python handler before it returns
        except:  # noqa: E722
            pass
        time.sleep(20)  # the rest of a long load
        print("built", flush=True)

    def destroy_node(self):
        return True
"""


def test_a_signal_during_the_build_ends_it_even_where_code_swallows_keyboard_interrupt(tmp_path):
    """A KeyboardInterrupt raised into the build is only as good as the code it lands in: a bare ``except:`` swallows
    it, and C++ code that Python called cannot always pass it on (a fresh-clone CI run aborted with "terminate called
    after throwing an instance of 'pybind11::error_already_set'" when SIGINT came while torch imported
    torch.distributed). So before the node is whole a signal ends the process from the handler: exit 0 at once, and
    the line on stderr says why (with the KeyboardInterrupt swallowed here, the build went on for 20 s)."""
    with _build_process(tmp_path, CATCH_ALL_BUILD, "CatchAllBuild") as proc:
        out = _ends_at_once(proc, "building", unfinished="built")
    assert "[catch_all_build]: SIGTERM while starting, before the node exists: exiting" in out, out


LATE_CONFIGURE = """
import os
import signal
import time

from turbopi_ros.ros.spin import signals_end_the_process


class LateConfigure:
    def start(self):  # the node is built: a signal now ends the spin, not the process
        os.kill(os.getpid(), signal.SIGTERM)
        print("signalled", flush=True)
        with signals_end_the_process("configuring"):  # as a managed node's configure, right after the signal
            time.sleep(20)
        print("configured", flush=True)

    def destroy_node(self):
        return True
"""


def test_a_signal_just_before_a_configure_ends_the_process_as_it_starts(tmp_path):
    """A managed node's configure (lifecycle_node.py) runs in a callback of the spin; a Ctrl-C that came just before
    it, when the spin could not end yet, must not wait for the whole load: signals_end_the_process sees the signal
    as it starts and ends the process (test_node_lifecycle.py covers a signal in the middle of a configure)."""
    with _build_process(tmp_path, LATE_CONFIGURE, "LateConfigure") as proc:
        out = _ends_at_once(proc, "signalled", unfinished="configured")
    assert "[late_configure]: SIGTERM while configuring: exiting" in out, out


NESTED_IN_BUILD = """
import time

from turbopi_ros.ros.spin import signals_end_the_process


class NestedInBuild:
    def __init__(self):
        with signals_end_the_process("configuring"):  # a block that ends inside the build
            pass
        print("building", flush=True)
        time.sleep(20)  # the rest of a long load
        print("built", flush=True)

    def destroy_node(self):
        return True
"""


def test_a_signal_after_such_a_block_inside_the_build_still_ends_the_process(tmp_path):
    """signals_end_the_process puts back what came before it: used inside the build, a signal after the block still
    ends the process at once as before the node exists, not only the spin 20 s later."""
    with _build_process(tmp_path, NESTED_IN_BUILD, "NestedInBuild") as proc:
        out = _ends_at_once(proc, "building", unfinished="built", send=signal.SIGTERM)
    assert "[nested_in_build]: SIGTERM while starting, before the node exists: exiting" in out, out


SIGNAL_TO_ANOTHER_THREAD = """
import signal
import threading
import time


class SignalToAnotherThread:
    def __init__(self):
        def other():
            time.sleep(0.3)
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # this thread gets it, not the main one

        threading.Thread(target=other, daemon=True).start()
        print("building", flush=True)
        time.sleep(20)  # the main thread blocked in one long call
        print("built", flush=True)

    def destroy_node(self):
        return True
"""


def test_a_signal_another_thread_receives_while_the_main_thread_blocks_ends_the_process_at_once(tmp_path):
    """The kernel may hand the process's signal to any thread (DDS's, torch's); Python runs its handler in the main
    thread only, when that is between bytecodes. A build blocked in one long call still ends at once (a fresh-clone
    CI run saw 20 s: the signal had gone to another thread while the build slept; spin._Stop's relay)."""
    with _build_process(tmp_path, SIGNAL_TO_ANOTHER_THREAD, "SignalToAnotherThread") as proc:
        out = _ends_at_once(proc, "building", unfinished="built")
    assert "[signal_to_another_thread]: SIGTERM while starting, before the node exists: exiting" in out, out


@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGINT, signal.SIGINT, signal.SIGTERM),
                                     (signal.SIGTERM, signal.SIGINT)], ids=["int-int", "int-int-term", "term-int"])
def test_signals_while_idle_without_inputs(tmp_path, feeder, signals):
    node = _start(tmp_path, "idle")
    assert wait_for(lambda: "ready:" in node.log() or not node.alive(), timeout=60), node.log()
    time.sleep(0.3)
    node.assert_clean_exit(node.interrupt(signals))


@pytest.mark.parametrize("after_s", [0.0, 0.13, 0.37])
def test_signals_in_the_middle_of_inferences(tmp_path, feeder, after_s):
    """Inference runs back to back, so any moment is (nearly always) inside one; offsets vary the phase."""
    feeder.chunks.clear()
    node = _start(tmp_path, f"busy_{after_s}")
    assert wait_for(lambda: feeder.count(feeder.chunks) >= 2 or not node.alive(), timeout=60), node.log()
    time.sleep(after_s)
    node.assert_clean_exit(node.interrupt())


def test_signals_while_the_engine_hangs(tmp_path, feeder):
    """An inference that does not return (injected: 30 s) is abandoned, not waited for: exit 0 within the time
    launch allows, without tearing the interpreter down under the busy thread."""
    import json

    from turbopi_ros.ros.faults import ENV

    faults = tmp_path / "faults.json"
    feeder.chunks.clear()
    node = NodeProcess(DEMO_PARAMS, tmp_path / "hang.log", env={ENV: str(faults)})
    assert wait_for(lambda: feeder.count(feeder.chunks) >= 2 or not node.alive(), timeout=60), node.log()
    faults.write_text(json.dumps({"hang_s": 30}))
    time.sleep(1.0)  # the next inference is now inside the hang
    node.assert_clean_exit(node.interrupt())


def test_fake_robot_shuts_down_cleanly(tmp_path):
    import os
    import sys

    log_path = tmp_path / "fake_robot.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "turbopi_ros.tools.fake_robot", "--ros-args", "--params-file",
                                 str(DEMO_PARAMS)], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        time.sleep(3.0)
        for _ in range(2):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        code = proc.wait(timeout=30)
    text = log_path.read_text()
    assert code == 0 and not any(s in text for s in BAD_SIGNS), text


BIG_HEAP = """
import gc
import time

from rclpy.node import Node

HEAP = []  # alive until the interpreter finalizes, as the modules of torch and of a model are


class BigHeap(Node):
    def __init__(self):
        super().__init__("big_heap")
        HEAP.extend([i] for i in range(6_000_000))  # objects the garbage collector tracks
        t0 = time.perf_counter()
        gc.collect()
        print(f"collected in {time.perf_counter() - t0:.3f} s", flush=True)
"""


def test_the_exit_does_not_collect_garbage_over_what_is_left(tmp_path):
    """After a clean shutdown the interpreter's finalization ran full garbage collections over every object still
    alive: on the demo node 0.7 s of a 1.2 s exit on an idle 2-core machine, 4 s on a loaded one, near the 5 s launch
    allows. spin.run_node freezes them (gc.freeze) once ROS is shut down. With 6 million tracked objects the exit took
    4-5 times one collection's time before (1.4-1.7 s for 0.36-0.40 s), half of it since (0.18-0.22 s)."""
    with _build_process(tmp_path, BIG_HEAP, "BigHeap") as proc:
        line = proc.stdout.readline().strip()
        assert line.startswith("collected in "), line + proc.stdout.read()
        collect_s = float(line.split()[2])
        time.sleep(0.5)  # spinning
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        elapsed = time.monotonic() - t0
        out = proc.stdout.read()
    assert_clean_exit(proc.returncode, out, elapsed)
    assert elapsed < 2.0 * collect_s, f"exit {elapsed:.2f} s, one collection {collect_s:.2f} s:\n{out}"
