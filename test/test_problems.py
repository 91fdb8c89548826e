"""ProblemLog: each kind of problem logged once then throttled; waiting is a warning; recovery reported once."""
import pytest

from turbopi_ros.ros.problems import ProblemLog, failure, kind_of


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


def test_a_fused_kernels_triton_error_says_what_failed_and_what_to_do():
    """A Triton too old for the GPU (Triton 3.6's ptxas on a Jetson Thor, as turbopi-kernel-targets saw it): the
    failure names the error, the Triton version and model.fused, and leaves out Triton's temporary file names, so the
    same failure is one kind of problem each time it repeats."""
    errors = pytest.importorskip("triton.runtime.errors")
    import triton

    def ptxas(tmp):
        return errors.PTXASError(
            f"Internal Triton PTX codegen error\n`ptxas` stderr:\nptxas-blackwell fatal   : Value 'sm_110a' is not "
            f"defined for option 'gpu-name'\n\nRepro command: /site-packages/triton/backends/nvidia/bin/"
            f"ptxas-blackwell -lineinfo -v --gpu-name=sm_110a /tmp/{tmp}.ptx -o /tmp/{tmp}.ptx.o\n")

    first = failure("inference", ptxas("tmp_5x5qtti"))
    assert first.startswith(f"inference failed: PTXASError in Triton {triton.__version__}: PTXAS error: Internal "
                            "Triton PTX codegen error `ptxas` stderr: ptxas-blackwell fatal : Value 'sm_110a' is not "
                            "defined for option 'gpu-name'"), first
    assert "set model.fused: false" in first and "Repro" not in first and "/tmp" not in first, first
    try:  # raised from inside another error (a custom op, a graph capture): still the kernel's failure
        try:
            raise ptxas("tmpk10qrn0y")
        except errors.PTXASError as e:
            raise RuntimeError("capture failed") from e
    except RuntimeError as e:
        wrapped = failure("warm-up", e)
    assert wrapped == "warm-up" + first[len("inference"):]
    assert kind_of(first) == kind_of(failure("inference", ptxas("tmpdiww6qam")))
    assert failure("inference", RuntimeError("engine\n  exploded")) == "inference failed: RuntimeError: engine exploded"
