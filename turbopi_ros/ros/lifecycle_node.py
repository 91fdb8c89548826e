"""turbopi_node as a managed (lifecycle) node: ``turbopi_node --managed`` (``turbopi.launch.py managed:=true``).

The plain node (TurbopiNode) builds everything and runs at start. The managed one starts unconfigured, with only its
lifecycle services, and follows the transitions (``ros2 lifecycle set /turbopi_node configure``, ...):

    configure   declare and check the parameters, load the model, set up inputs and outputs, warm up (warm_up.py: the
                graph captures, one inference on a blank observation with its own zero noise: the seeded noise of the
                chunks is untouched); a failure (a bad parameter, a missing checkpoint) is logged with its reason,
                everything built so far is freed and the transition returns FAILURE (back to unconfigured)
    activate    start the workers (first time) and publish: chunks and commands
    deactivate  no more chunks or commands from the end of the transition on (a velocity group gets its zero
                command within it); inputs keep being received
    cleanup     stop the workers, free the model and every subscription, publisher, timer and service configure made
    shutdown    from any state: as cleanup; the node is then finalized
    error       as cleanup, back to unconfigured

Parameters keep the values they were declared with across cleanup and configure (they are read-only: restart the
process to change them). While inactive, ``~/enable`` refuses to enable; while active it pauses and resumes as in the
plain node (``autostart`` does not apply: activating is the start). Ctrl-C ends the process with 0 from any state;
during configure (the model load and the warm-up: tens of seconds on a GPU) at once, with one line, as before the
plain node exists (spin.signals_end_the_process): nothing is published then, and ``ros2 launch`` would otherwise
kill the node with SIGKILL before configure returned. Another transition in progress finishes first (they are short).
"""
from __future__ import annotations

import gc
from typing import List

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_srvs.srv import SetBool

from .node_params import PARAMETERS
from .parameters import on_parameters_set
from .policy_node import TurbopiNode
from .problems import failure
from .ros_compat import refuse_unavailable_transitions, remove_parameter_callbacks
from .spin import signals_end_the_process

CONFIGURING = "configuring (loading the model, warming up; nothing is published)"
INACTIVE = "inactive: activate the node to publish (ros2 lifecycle set <node> activate)"


class ManagedTurbopiNode(TurbopiNode, LifecycleNode):
    def __init__(self, **kwargs):
        LifecycleNode.__init__(self, "turbopi_node", **kwargs)  # not TurbopiNode's: nothing is built before configure
        refuse_unavailable_transitions(self)  # Humble and Jazzy: not an exception out of the spin
        self._make_gates()  # a deactivation takes both, as ~/enable false does
        self._active = False
        self._configured_attrs: List[str] = []
        self._made = self._entities()  # the lifecycle's and parameters' own: a shutdown before configure keeps them
        self._param_callbacks: list = []
        self._threads_started = False

    # --- transitions --------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        before_attrs = set(vars(self))
        self._made = self._entities()
        remove_parameter_callbacks(self, self._param_callbacks)  # the unconfigured node's checks: _build adds its own
        self._param_callbacks = []
        try:
            with signals_end_the_process(CONFIGURING):  # Ctrl-C does not wait for the load and the warm-up
                self._build()
                self._enabled = False  # inactive: nothing is published until activate
                self.get_logger().info(self.warm_up.run())  # before activate: the engine does not warm up again
            self.get_logger().info(self._ready_message)
        except Exception as e:  # noqa: BLE001 - any failure is the transition's, reported with its reason
            self.get_logger().error(failure("configure", e))
            self._configured_attrs = sorted(set(vars(self)) - before_attrs)
            self._teardown()
            return TransitionCallbackReturn.FAILURE
        self._configured_attrs = sorted(set(vars(self)) - before_attrs)
        self.get_logger().info("configured: model loaded and warmed up (activate to publish)")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if not self._threads_started:
            TurbopiNode.start(self)
            self._threads_started = True
        with self._command_gate, self._chunk_gate:
            self._active = self._enabled = True
        self.engine.wake()
        self.get_logger().info("active: publishing chunks and commands")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._quiesce()
        self.get_logger().info("inactive: no chunks, no commands")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self.get_logger().info("cleaned up: model freed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._quiesce()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._quiesce()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    # --- what the plain node does, gated by the state -------------------------------------------------------------
    def start(self) -> None:
        """spin.py starts the plain node's workers at once; here activate does."""

    def _start_state(self) -> str:
        return "inactive until activated"

    def _disabled_message(self) -> str:
        return TurbopiNode._disabled_message(self) if self._active else INACTIVE

    def _publishing(self) -> bool:
        return self._active and self._enabled

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        if request.data and not self._active:
            response.success = False
            response.message = "inactive: activate the node first (ros2 lifecycle set <node> activate)"
            return response
        return TurbopiNode._on_enable(self, request, response)

    def declare_parameter(self, name, value=None, descriptor=None, ignore_override=False):
        """A parameter declared by an earlier configure keeps its value (read-only parameters cannot be undeclared)."""
        if self.has_parameter(name):
            return self.get_parameter(name)
        return super().declare_parameter(name, value, descriptor, ignore_override)

    # --- helpers ------------------------------------------------------------------------------------------------
    def _entities(self) -> dict:
        return {kind: set(getattr(self, kind)) for kind in ("publishers", "subscriptions", "timers", "services",
                                                            "clients")}

    def _quiesce(self) -> None:
        """No chunk or command after this returns; a velocity group's stream ends with its zero command."""
        if not hasattr(self, "commands"):  # not configured
            self._active = False
            return
        with self._command_gate, self._chunk_gate:
            self._active = self._enabled = False
            self._stop_publishing()

    def _teardown(self) -> None:
        """Free what configure made: workers, model, ROS entities, parameter callbacks, attributes."""
        self._active = False
        self._release()
        remove_parameter_callbacks(self, self._param_callbacks)
        # the parameters stay declared for the next configure: a run-time one set meanwhile is still checked as it is
        # set (and applied by that configure)
        self._param_callbacks = on_parameters_set(self, PARAMETERS)
        for kind, destroy in (("publishers", self.destroy_publisher), ("subscriptions", self.destroy_subscription),
                              ("timers", self.destroy_timer), ("services", self.destroy_service),
                              ("clients", self.destroy_client)):
            for entity in [e for e in getattr(self, kind) if e not in self._made.get(kind, set())]:
                destroy(entity)
        uses_cuda = getattr(getattr(self, "policy", None), "device", None)
        for name in self._configured_attrs:
            if hasattr(self, name):
                delattr(self, name)
        self._configured_attrs = []
        self._threads_started = False
        gc.collect()
        if uses_cuda is not None and uses_cuda.type == "cuda":
            import torch

            torch.cuda.empty_cache()
