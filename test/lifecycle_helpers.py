"""Helpers for the managed-node tests (test_node_lifecycle.py, test_lifecycle_launch.py) and the launch tests: a
test node's clients of /turbopi_node's lifecycle services, and turbopi.launch.py run as `ros2 launch` runs it."""
import os
import time

from ros_helpers import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCH_FILE = os.path.join(HERE, "..", "launch", "turbopi.launch.py")
# The launch in a process of its own, as `ros2 launch` runs it (see test_robot_launch.py).
RUN_LAUNCH = """
import sys
import launch
from launch.launch_description_sources import PythonLaunchDescriptionSource

service = launch.LaunchService()
service.include_launch_description(launch.actions.IncludeLaunchDescription(
    PythonLaunchDescriptionSource(sys.argv[1]), launch_arguments=[a.split(":=", 1) for a in sys.argv[2:]]))
sys.exit(service.run(shutdown_when_idle=True))
"""


class Lifecycle:
    """A test node's clients of /turbopi_node's lifecycle services."""

    def __init__(self, node):
        from lifecycle_msgs.srv import ChangeState, GetState

        self.node = node
        self.change = node.create_client(ChangeState, "/turbopi_node/change_state")
        self.get = node.create_client(GetState, "/turbopi_node/get_state")

    def ready(self, timeout: float = 60.0) -> bool:
        """Both services discovered, and the node has answered a GetState (so a first ChangeState is not sent into a
        connection DDS has only half set up)."""
        if not (self.get.wait_for_service(timeout_sec=timeout) and self.change.wait_for_service(timeout_sec=timeout)):
            return False
        self.state()
        return True

    def state(self, timeout: float = 20.0, attempt_s: float = 2.0) -> str:
        """The node's state label. GetState changes nothing, so a call that gets no answer within ``attempt_s`` is
        made again: right after discovery a request or its response can be lost while DDS is still matching the
        service's endpoints (a Jazzy CI run once waited 10 s for an answer that never came)."""
        from lifecycle_msgs.srv import GetState

        deadline = time.monotonic() + timeout
        while True:
            future = self.get.call_async(GetState.Request())
            if wait_for(future.done, timeout=attempt_s):
                return future.result().current_state.label
            self.get.remove_pending_request(future)
            assert time.monotonic() < deadline, f"no answer to GetState in {timeout:g} s"

    def set(self, transition: str, timeout: float = 120.0) -> bool:
        future = self.request(transition)
        assert wait_for(future.done, timeout=timeout), transition
        return future.result().success

    def request(self, transition: str):
        """Ask for ``transition`` without waiting: the ChangeState call's future."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        # by label, as `ros2 lifecycle set` does: "shutdown" is the one from the current state
        return self.change.call_async(ChangeState.Request(transition=Transition(label=transition)))
