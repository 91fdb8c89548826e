"""main() for this package's nodes: init, build, spin, shut down cleanly however many signals arrive.

Signals: a terminal Ctrl-C under ``ros2 launch`` reaches the node twice (the terminal signals the whole process group,
and launch forwards its own SIGINT), and launch escalates to SIGTERM. rclpy's own handler would turn the second one
into a KeyboardInterrupt in the middle of the cleanup (killing the node with a traceback, or aborting it while the
inference thread is inside torch). So this module owns SIGINT and SIGTERM: the first one ends the spin (or, before the
node is built, e.g. during a long model load, and while a managed node configures, the process at once: _Stop and
signals_end_the_process say why), every later one is ignored while
the node shuts down (and while the interpreter finalizes); the inference thread gets a few seconds to finish its chunk
(node.destroy_node), and a thread still busy after that is abandoned by exiting without interpreter teardown (os._exit)
instead of being torn down under it.

Both nodes spin on a SingleThreadedExecutor: their callbacks only store messages, publish or answer a service (the
inference runs on the node's own worker thread). rclpy's MultiThreadedExecutor dispatches every callback through a
thread pool from a busy main loop (ros2/rclpy#1223, #1452): on a 2-core machine beside the inference it doubled
fake_robot's CPU use and stalled its 50 Hz timers for 1-2 s at a time; the single-threaded executor did neither.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import os
import signal
import sys
import threading
from typing import Iterator, Optional

SPIN_TIMEOUT_S = 0.1  # how often the spin loop looks at the stop flag
SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the signals this module owns


class _Stop:
    """Until the node is built (importing rclpy and torch, loading the model), and within
    ``signals_end_the_process`` (a managed node's configure), the first SIGINT/SIGTERM ends the process at once: one
    line on stderr, exit 0, from inside the handler. Otherwise it sets the flag that ends the spin; later ones do
    nothing.

    Why exit from the handler while building: a KeyboardInterrupt raised there lands wherever the main thread is, and
    some places cannot take one. Inside torch's import (``torch._C._c10d_init``, C++ through pybind11) it crossed
    C++ code and aborted the process (``terminate called after throwing an instance of
    'pybind11::error_already_set'``, exit -6; a fresh-clone CI run hit it at 0.5 s). In a callback whose exceptions
    Python ignores (a weakref callback of importlib's module locks) it was printed and dropped, and the load went on;
    in a library's bare ``except:`` it is swallowed the same way. No node exists yet, so there is nothing to shut
    down; os._exit leaves no interpreter teardown to go wrong either."""

    def __init__(self, name: str):
        self.name = name
        self.event = threading.Event()
        self.signum: Optional[int] = None  # the first signal
        self.exit_while: Optional[str] = "starting, before the node exists"  # what a signal now ends at once

    def __call__(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        if self.exit_while:
            _exit_at_once(self.name, signum, self.exit_while)
        self.event.set()

    def install(self) -> None:
        for sig in SIGNALS:
            signal.signal(sig, self)
        self._relay_from_other_threads()

    def _relay_from_other_threads(self) -> None:
        """The kernel hands a process's signal to any of its threads that does not block it (rclpy's, DDS's,
        torch's). Python runs the handler in the main thread only, between bytecodes: where the signal went to another
        thread while the main thread is blocked in one long call (a sleep, a file read, a graph capture), the handler
        ran when that call returned: 20 s late in a fresh-clone CI run (test_node_shutdown). CPython's C-level
        handler also writes the signal's number to the wakeup fd, in whichever thread it ran: a thread blocked on
        reading it hands the signal to this handler at once, which ends the process where a signal should
        (``exit_while``); otherwise the handler only sets the stop flag, as it does again in the main thread."""
        read_fd, self._wakeup_fd = os.pipe()
        os.set_blocking(self._wakeup_fd, False)
        signal.set_wakeup_fd(self._wakeup_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._relay, args=(read_fd,), name="signal relay", daemon=True).start()

    def _relay(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while data := pipe.read(64):  # b"": uninstall_relay() closed the other end
                for signum in data:
                    if signum in SIGNALS:  # another Python-level handler's signal is not ours
                        self(signum, None)

    def uninstall_relay(self) -> None:
        """The relay's part ends (main thread): no more wakeup writes, its thread ends."""
        signal.set_wakeup_fd(-1)
        os.close(self._wakeup_fd)

    @staticmethod
    def ignore_from_now_on() -> None:
        """SIG_IGN, not a handler that returns: CPython puts every Python-level handler back to SIG_DFL while the
        interpreter finalizes, so a signal then (the second Ctrl-C) would kill the exiting process; SIG_IGN stays."""
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


_running: Optional[_Stop] = None  # run_node's handler, while a node runs under it


def _exit_at_once(name: str, signum: int, what: str) -> None:
    """A signal where nothing needs shutting down: say so and end the process here (see _Stop)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - the main thread was inside a write to the same stream: let that go
        pass
    os.write(2, f"[INFO] [{name}]: {signal.Signals(signum).name} while {what}: exiting\n".encode())
    os._exit(0)


@contextlib.contextmanager
def signals_end_the_process(what: str) -> Iterator[None]:
    """Within the block, a SIGINT or SIGTERM ends the process at once, as before the node exists (_Stop): for a long
    step in the main thread while the node publishes nothing, which Ctrl-C should not wait for. A managed node's
    configure (the model load, the graph captures, the warm-up: tens of seconds on a GPU) is one: otherwise the spin
    ends only after it, and ``ros2 launch`` kills the node with SIGKILL 10 s after the Ctrl-C. ``what`` completes
    "SIGINT while <what>: exiting". A signal that came just before the block, before the spin could end, ends the
    process on entry. Outside run_node (the node spun by other code) it does nothing."""
    stop = _running
    if stop is None:
        yield
        return
    outer, stop.exit_while = stop.exit_while, what
    try:
        if stop.signum is not None:
            _exit_at_once(stop.name, stop.signum, what)
        yield
    finally:
        stop.exit_while = outer  # inside the build (or another such block): a signal still ends the process


def _external_shutdown(e: Exception) -> bool:
    from rclpy.executors import ExternalShutdownException

    return isinstance(e, ExternalShutdownException)


def _configuration_error(e: Exception) -> bool:
    """A node that cannot be built as configured: a bad parameter (ValueError), a missing file (OSError), rcl
    refusing the arguments (RCLError, e.g. a --params-file that does not exist or does not parse), or a Python
    package missing or too old (ImportError, e.g. torch older than model/torch_version.py's MIN_TORCH)."""
    if isinstance(e, (ValueError, OSError, ImportError)):
        return True  # before asking rclpy: the package missing may be rclpy itself
    from rclpy.impl.implementation_singleton import rclpy_implementation

    return isinstance(e, rclpy_implementation.RCLError)


def run_node(module: str, cls: str, name: str, args=None) -> None:
    """Import ``module`` (torch, rclpy: seconds), build ``cls`` from it, start it (``node.start()`` if it has one:
    threads start only once the node is whole), spin until a signal or an external shutdown, destroy it. Signals are
    handled from the first line on (one before the node is whole exits at once). Exit 0 after a signal; a configuration
    or installation that cannot work (ValueError, OSError, ImportError or an rcl error while building) is logged as
    ``cannot start: ...`` and exits 1."""
    global _running
    if _wants_help(sys.argv if args is None else args):
        print(_usage(module, name))
        return
    stop = _running = _Stop(name)
    stop.install()
    node = executor = None
    code, stopped = 0, True
    try:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        node = getattr(importlib.import_module(module), cls)()
        stop.exit_while = None
        if hasattr(node, "start"):
            node.start()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.event.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_TIMEOUT_S)
    except Exception as e:
        if stop.event.is_set() or _external_shutdown(e):
            pass  # shutting down: whatever the interrupted code raised on the way out
        elif node is None and _configuration_error(e):
            _fatal(name, f"cannot start: {_missing_params_file(args) or _one_line(e)}")
            code = 1
        else:
            raise
    finally:
        stop.event.set()
        stop.ignore_from_now_on()
        stop.uninstall_relay()
        _running = None
        if node is not None:
            stopped = node.destroy_node() is not False
        if executor is not None:  # now, while the context is valid: its __del__ at exit would destroy its signal
            try:                  # guard after rclpy's shutdown ("Exception ignored ... InvalidHandle", Jazzy)
                executor.shutdown(timeout_sec=1.0)
            except Exception:  # noqa: BLE001 - shutting down: an external shutdown may have freed it already
                pass
        if "rclpy" in sys.modules:
            from .ros_compat import shutdown_keeping_signal_handlers

            shutdown_keeping_signal_handlers()
        _freeze_what_is_left()
    # The inference thread is still inside torch: exit without tearing the interpreter down under it.
    if not stopped:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        raise SystemExit(code)


def _freeze_what_is_left() -> None:
    """Called once ROS is shut down. The interpreter's finalization then collects garbage over every object still
    alive (torch's, the model's): 0.7 s of an idle demo node's 1.2 s exit on a 2-core machine, 4 s on a loaded one,
    against the 5 s launch allows before SIGTERM. Frozen (gc.freeze), they are not traversed; atexit handlers and the
    destructors that reference counts call still run, and the memory goes with the process."""
    gc.freeze()


def _wants_help(argv) -> bool:
    """-h or --help outside the ``--ros-args ... [--]`` spans (rcl's own arguments)."""
    in_ros = False
    for arg in list(argv)[1:]:
        if arg == "--ros-args":
            in_ros = True
        elif in_ros and arg == "--":
            in_ros = False
        elif not in_ros and arg in ("-h", "--help"):
            return True
    return False


def _usage(module: str, name: str) -> str:
    """The node's usage and its parameters (the module's PARAMETERS table), for --help: nothing starts."""
    mod = importlib.import_module(module)
    lines = [f"usage: {name} [--ros-args --params-file YAML -p NAME:=VALUE ...]", "",
             (mod.__doc__ or "").split("\n\n")[0].strip()]
    table = getattr(mod, "PARAMETERS", {})
    if table:
        lines += ["", "parameters (ros2 param describe shows them too):"]
    for pname, param in table.items():
        lines.append(f"  {pname} (default {param.default!r}): {param.description}; {param.constraints()}")
    return "\n".join(lines)


def _fatal(name: str, message: str) -> None:
    try:
        import rclpy.logging

        rclpy.logging.get_logger(name).fatal(message)
    except Exception:  # noqa: BLE001 - rclpy could not even initialise its logging: plain stderr
        print(f"[FATAL] [{name}]: {message}", file=sys.stderr, flush=True)


def _missing_params_file(args) -> str:
    """'--params-file X: X does not exist' for the first such argument (rcl's own error only says it could not
    parse the arguments)."""
    argv = list(sys.argv if args is None else args)
    for flag, path in zip(argv, argv[1:]):
        if flag == "--params-file" and not os.path.isfile(path):
            return f"--params-file {path}: {path} does not exist"
    return ""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__
