"""main() for this package's nodes: init, build, spin, shut down cleanly however many signals arrive.

Signals: a terminal Ctrl-C under ``ros2 launch`` reaches the node twice (the terminal signals the whole process
group, and launch forwards its own SIGINT), and launch escalates to SIGTERM. rclpy's own handler would turn the second
one into a KeyboardInterrupt in the middle of the cleanup (killing the node with a traceback, or aborting it while the
inference thread is inside torch). So this module owns SIGINT and SIGTERM: the first one ends the spin (or interrupts
building the node, e.g. a long model load), every later one is ignored while the node shuts down (and while the
interpreter finalizes); the inference thread gets a few seconds to finish its chunk (node.destroy_node), and a thread
still busy after that is abandoned by exiting without interpreter teardown (os._exit) instead of being torn down
under it.

Both nodes spin on a SingleThreadedExecutor: their callbacks only store messages, publish or answer a service (the
inference runs on the node's own worker thread). rclpy's MultiThreadedExecutor dispatches every callback through a
thread pool from a busy main loop (ros2/rclpy#1223, #1452): on a 2-core machine beside the inference it doubled
fake_robot's CPU use and stalled its 50 Hz timers for 1-2 s at a time; the single-threaded executor did neither.
"""
from __future__ import annotations

import _thread
import importlib
import os
import signal
import sys
import threading

SPIN_TIMEOUT_S = 0.1  # how often the spin loop looks at the stop flag


class _Stop:
    """The first SIGINT/SIGTERM sets the flag (and interrupts the build, if it is still running); later ones do
    nothing.

    The KeyboardInterrupt is raised wherever the main thread is. Where that is a callback whose exceptions Python
    ignores (a weakref callback inside an import: importlib's module-lock cleanup), Python prints it as "Exception
    ignored in ..." with a traceback and the build goes on as if no signal had come. The unraisable hook catches that
    case: it prints nothing and raises the KeyboardInterrupt again a moment later, outside the callback
    (_thread.interrupt_main, from a timer thread, runs this handler once more)."""

    def __init__(self):
        self.event = threading.Event()
        self.building = True
        self.interrupted_build = False  # a signal raised KeyboardInterrupt into the build
        self._again = False  # that KeyboardInterrupt was swallowed: raise it once more
        self._unraisable = sys.unraisablehook

    def __call__(self, signum, frame) -> None:
        if self.event.is_set() and not self._again:
            return
        self._again = False
        self.event.set()
        if self.building:
            self.interrupted_build = True
            raise KeyboardInterrupt

    def unraisable(self, info) -> None:
        """sys.unraisablehook: our own KeyboardInterrupt, swallowed during the build, is raised again; anything else
        is Python's to print."""
        if isinstance(info.exc_value, KeyboardInterrupt) and self.building and self.event.is_set():
            self._again = True
            # from another thread, once this hook has returned: a signal tripped in here would land in here again
            threading.Timer(0.001, _thread.interrupt_main, (signal.SIGINT,)).start()
            return
        self._unraisable(info)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self)
        sys.unraisablehook = self.unraisable

    @staticmethod
    def ignore_from_now_on() -> None:
        """SIG_IGN, not a handler that returns: CPython puts every Python-level handler back to SIG_DFL while the
        interpreter finalizes, so a signal then (the second Ctrl-C) would kill the exiting process; SIG_IGN stays."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _external_shutdown(e: Exception) -> bool:
    from rclpy.executors import ExternalShutdownException

    return isinstance(e, ExternalShutdownException)


def _configuration_error(e: Exception) -> bool:
    """A node that cannot be built as configured: a bad parameter (ValueError), a missing file (OSError), or rcl
    refusing the arguments (RCLError, e.g. a --params-file that does not exist or does not parse)."""
    from rclpy.impl.implementation_singleton import rclpy_implementation

    return isinstance(e, (ValueError, OSError, rclpy_implementation.RCLError))


def run_node(module: str, cls: str, name: str, args=None) -> None:
    """Import ``module`` (torch, rclpy: seconds), build ``cls`` from it, start it (``node.start()`` if it has one:
    threads start only once the node is whole), spin until a signal or an external shutdown, destroy it. Signals are
    handled from the first line on. Exit 0 after a signal; a configuration that cannot work (ValueError, OSError or
    an rcl error while building) is logged as ``cannot start: ...`` and exits 1."""
    stop = _Stop()
    stop.install()
    node = None
    code = 0
    stopped = True
    try:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        node = getattr(importlib.import_module(module), cls)()
        stop.building = False
        if stop.event.is_set():
            raise KeyboardInterrupt  # the signal came between building and here
        if hasattr(node, "start"):
            node.start()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.event.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_TIMEOUT_S)
    except KeyboardInterrupt:
        pass
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
        if node is not None:
            stopped = node.destroy_node() is not False
        if "rclpy" in sys.modules:
            from .ros_compat import shutdown_keeping_signal_handlers

            shutdown_keeping_signal_handlers()
    # Exit without interpreter teardown (os._exit) where teardown could go wrong:
    # - the inference thread is still inside torch: do not tear the interpreter down under it;
    # - a signal raised KeyboardInterrupt into the build: if it landed in code run by exec() of a string (dataclasses
    #   and namedtuples make their methods so, e.g. while torch imports a module lazily during the model load),
    #   CPython marks the KeyboardInterrupt as unhandled although it was caught here, and at the end of a normal exit
    #   kills the process with SIGINT (exit -2, no traceback; about 1 Ctrl-C in 20 during the model load).
    if not stopped or stop.interrupted_build:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        raise SystemExit(code)


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
