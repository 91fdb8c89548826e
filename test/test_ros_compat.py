"""turbopi_ros.ros.ros_compat on the rclpy of this venv (CI runs this file on Kilted and on Jazzy), and a static check
that
the package uses no rclpy API that one of the supported distros (Humble, Jazzy, Kilted) lacks."""
import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from turbopi_ros.ros import ros_compat  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_distro_is_told_from_rclpy_and_is_the_one_asked_for():
    version = ros_compat.rclpy_version()
    assert version and version.split(".")[0].isdigit(), version
    distro = ros_compat.ros_distro()
    assert distro == ros_compat.DISTRO_BY_RCLPY_MAJOR[int(version.split(".")[0])]
    # scripts/test.sh exports the distro it set the venv up for: a venv holding another distro's wheels is an error
    asked = os.environ.get("TURBOPI_ROS_DISTRO")
    if asked:
        assert distro == asked, f"TURBOPI_ROS_DISTRO={asked} but this venv ({sys.prefix}) has rclpy {version}"
    assert f"ROS 2 {distro}: rclpy {version}" in ros_compat.header()


def _sigterm_after(shutdown: str) -> int:
    """Exit status of a process that inits rclpy, runs ``shutdown``, gets SIGTERM and, if it survives, exits 3 (or 4
    where rclpy's handler took the SIGTERM and shut the default context down)."""
    code = f"""
import os, signal, sys, time
import rclpy
from rclpy.context import Context
from turbopi_ros.ros import ros_compat
rclpy.init()
{shutdown}
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(2)
sys.exit(3 if rclpy.ok() else 4)
"""
    return subprocess.run([sys.executable, "-c", code], cwd=str(REPO), timeout=60).returncode


def test_try_shutdown_hands_sigterm_back():
    assert _sigterm_after("ros_compat.try_shutdown()") == -signal.SIGTERM
    assert _sigterm_after("ros_compat.try_shutdown()\nros_compat.try_shutdown()") == -signal.SIGTERM  # twice: fine


def test_rclpy_try_shutdown_is_what_the_shim_is_for():
    """rclpy 9's try_shutdown hands SIGTERM back itself; rclpy 7's leaves rclpy's handler, which swallows it (the
    context is already shut down). Should a newer rclpy 7 fix that, this fails and the shim can go."""
    major = int(ros_compat.rclpy_version().split(".")[0])
    assert _sigterm_after("rclpy.try_shutdown()") == (-signal.SIGTERM if major >= 9 else 4)


def test_try_shutdown_of_another_context_leaves_the_handlers():
    """rclpy's handler stays and takes the SIGTERM: it shuts the default context down, the process goes on (both)."""
    assert _sigterm_after("other = Context()\nrclpy.init(context=other)\nros_compat.try_shutdown(context=other)\n"
                          "assert not other.ok() and rclpy.ok()") == 4


# rclpy APIs that one of Humble (rclpy 3.3), Jazzy (7.1) and Kilted (9.1) lacks: names (imported, called, passed as
# keywords or read as attributes) and modules. Checked against the wheels (Jazzy, Kilted) and ros2/rclpy's humble
# branch; ros_compat.py is where code for one version goes.
NOT_EVERYWHERE = {
    "InitContextManager": "rclpy 9 only (`with rclpy.init()`)",
    "uninstall_handlers": "a try_shutdown keyword in rclpy 9 only: ros_compat.try_shutdown",
    "TimerInfo": "rclpy 9 only (timer callbacks taking a TimerInfo)",
    "TimerCancelledError": "rclpy 9 only",
    "MessageInfo": "rclpy.subscription.MessageInfo is rclpy 9 only",
    "ContentFilterOptions": "rclpy 9 only",
    "content_filter_options": "rclpy 9 only",
    "rosout_qos_profile": "rclpy 9 only",
    "qos_profile_rosout_default": "rclpy 9 only",
    "add_pre_set_parameters_callback": "not in Humble: add_on_set_parameters_callback",
    "add_post_set_parameters_callback": "not in Humble: add_on_set_parameters_callback",
    "enable_logger_service": "not in Humble",
    "list_parameters": "Node.list_parameters is rclpy 5.2+, not in Humble: get_parameters_by_prefix",
    "EventsExecutor": "not in Humble (rclpy.experimental)",
}
# keyword arguments only: the same word as a name or attribute of this package's own (NodeConfig.autostart) is fine
KEYWORDS_NOT_EVERYWHERE = {
    "autostart": "a create_timer keyword from Jazzy on, not in Humble",
}
MODULES_NOT_EVERYWHERE = {
    "rclpy.clock_type": "Jazzy only: import ClockType from rclpy.clock",
    "rclpy.event_handler": "not in Humble (there: rclpy.qos_event)",
    "rclpy.qos_event": "deprecated from Jazzy on (warns): rclpy.event_handler, which Humble lacks",
    "rclpy.experimental": "not in Humble",
}


def portability_problems(path: Path, root: Path = REPO) -> list:
    problems = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        names, modules = [], []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.keyword) and node.arg:
            names = [node.arg]
            if node.arg in KEYWORDS_NOT_EVERYWHERE:
                problems.append(f"{path.relative_to(root)}:{node.value.lineno}: {node.arg}: "
                                f"{KEYWORDS_NOT_EVERYWHERE[node.arg]}")
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.withitem):
            call = node.context_expr
            if isinstance(call, ast.Call) and getattr(call.func, "attr", getattr(call.func, "id", None)) == "init":
                names = ["InitContextManager"]  # `with rclpy.init():`
        line = getattr(node, "lineno", getattr(getattr(node, "context_expr", None), "lineno", "?"))
        problems += [f"{path.relative_to(root)}:{line}: {n}: {NOT_EVERYWHERE[n]}" for n in names if n in NOT_EVERYWHERE]
        problems += [f"{path.relative_to(root)}:{line}: {m}: {MODULES_NOT_EVERYWHERE[m]}" for m in modules
                     if m in MODULES_NOT_EVERYWHERE]
    return problems


def test_the_package_uses_only_rclpy_apis_every_distro_has():
    files = [p for d in ("turbopi_ros", "launch", "test") for p in sorted((REPO / d).rglob("*.py"))]
    exempt = {REPO / "turbopi_ros" / "ros" / "ros_compat.py", Path(__file__).resolve()}
    assert all(p.is_file() for p in exempt), exempt  # an exemption that names no file would exempt nothing
    problems = [msg for p in files if p not in exempt for msg in portability_problems(p)]
    assert not problems, "\n".join(problems)


def test_the_portability_check_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import rclpy\nfrom rclpy.clock_type import ClockType\n"
                   "with rclpy.init():\n    pass\n"
                   "def f(node, cb):\n    node.create_timer(1.0, cb, autostart=False)\n"
                   "    node.add_post_set_parameters_callback(cb)\n")
    found = "\n".join(portability_problems(bad, root=tmp_path))
    for what in ("rclpy.clock_type", "InitContextManager", "autostart", "add_post_set_parameters_callback"):
        assert what in found, (what, found)
    fine = tmp_path / "fine.py"
    fine.write_text("class Config:\n    autostart: bool = True\n\ndef f(config):\n    return config.autostart\n")
    assert portability_problems(fine, root=tmp_path) == []


@pytest.fixture
def as_rclpy_7(monkeypatch):
    """rclpy 3 (Humble) and 7 (Jazzy) lifecycle nodes: a ChangeState naming (by id) a transition the current state
    does not have raises rcl's RCLError out of the service callback (rclpy 8+ logs it and answers success=False)."""
    from rclpy.impl.implementation_singleton import rclpy_implementation
    from rclpy.lifecycle import LifecycleNodeMixin

    change_state = LifecycleNodeMixin._LifecycleNodeMixin__change_state

    def raising(self, transition_id):
        if transition_id not in [t[0] for t in self._state_machine.available_transitions]:
            raise rclpy_implementation.RCLError("Failed to trigger lifecycle state machine transition: Transition is "
                                                "not registered.")
        return change_state(self, transition_id)
    monkeypatch.setattr(LifecycleNodeMixin, "_LifecycleNodeMixin__change_state", raising)


def test_a_transition_the_state_does_not_have_is_refused_not_raised(as_rclpy_7):
    """The managed node asked (by id: launch_ros's ChangeState event, a lifecycle manager, ``ros2 service call``) to
    activate while unconfigured answers success=False and stays unconfigured, on every rclpy: on Humble and Jazzy the
    RCLError went out of the executor's spin and ended the node process."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.context import Context

    from turbopi_ros.ros.lifecycle_node import ManagedTurbopiNode

    context = Context()
    rclpy.init(context=context)
    node = ManagedTurbopiNode(context=context)
    try:
        answer = node._service_change_state.callback  # what the executor calls with each request
        for transition in (Transition(id=Transition.TRANSITION_ACTIVATE), Transition(label="activate")):
            assert answer(ChangeState.Request(transition=transition), ChangeState.Response()).success is False
        assert node._state_machine.current_state[1] == "unconfigured"
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
