"""worker_niceness: the node's heavy threads (preparing, inference, one per camera, and the threads they start) run at
that CPU priority, the rest of the node (the executor, the command stream) at the process's own. Read from
/proc/<pid>/task/*/stat of the running node (Linux)."""
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from ros_helpers import node_session  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread priorities are read from /proc")


def thread_niceness(pid: int) -> dict:
    """{thread id: niceness} of the process ``pid`` (field 19 of /proc/<pid>/task/<tid>/stat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        out[int(task.name)] = int(fields[16])  # fields[0] is field 3 (state)
    return out


def test_the_heavy_threads_run_at_worker_niceness_and_the_rest_at_the_nodes_own(tmp_path):
    with node_session(tmp_path, min_chunks=2, overrides={"worker_niceness": 5}) as (feeder, node):
        niceness = thread_niceness(node.proc.pid)
        own = niceness[node.proc.pid]  # the main thread's: the process's own (0 unless started niced)
        worker = max(own, 5)  # a thread is never made less nice than the process started it
        heavy = [tid for tid, n in niceness.items() if n == worker]
        # the inference thread and a thread per camera (cameras.prepare_on_arrival): 2 cameras in the demo YAML
        assert len(heavy) >= 3, niceness
        assert set(niceness.values()) == {own, worker}, niceness  # nothing at the default 10, nothing else
