"""turbopi_node's configuration, typed: NodeConfig, a frozen dataclass built once from the checked parameter values
(node_params.PARAMETERS: the node declares them, params_file.py reads them from a YAML file). Its attribute paths are
the parameter names (``config.model.checkpoint`` is ``model.checkpoint``, ``config.control_rate_hz`` is
``control_rate_hz``); lists become tuples, and the derived values are filled in once: ``cameras.names`` are model
slots (an adapter's robot camera names renamed), ``cameras.compressed`` has one entry per camera. The node, the
managed node, turbopi-replay and the recorder read it; the action groups' parameters (declared once
``action.groups`` is read) stay with action_outputs.py."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Tuple

from .action_outputs import declare_groups
from .node_params import PARAMETERS, check_lengths, check_model
from .parameters import declare_parameters, ignored_parameters
from .robot_params import camera_slots_for, check_robot


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    checkpoint: str
    preset: str
    device: str
    dtype: str
    num_steps: int
    seed: int
    tokenizer: str
    norm_stats: str
    cuda_graph: bool
    fused: bool
    few_rows_matmul: bool
    pdl: bool
    compile: bool
    cache_dir: str
    warm_up_prompts: Tuple[str, ...]  # captured before ready besides the start prompt
    num_threads: int
    action_horizon: int
    max_token_len: int
    discrete_state_input: str  # auto, true or false


@dataclasses.dataclass(frozen=True)
class RobotSettings:
    adapter: str
    adapt_to_pi: bool


@dataclasses.dataclass(frozen=True)
class CameraSettings:
    names: Tuple[str, ...]  # model slots
    topics: Tuple[str, ...]
    compressed: Tuple[bool, ...]  # one per camera
    preprocess: str
    prepare_on_arrival: bool


@dataclasses.dataclass(frozen=True)
class JointStatesSettings:
    topic: str


@dataclasses.dataclass(frozen=True)
class StateSettings:
    joints: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ActionSettings:
    joints: Tuple[str, ...]
    lower_limits: Tuple[float, ...]
    upper_limits: Tuple[float, ...]
    delta_mask: Tuple[bool, ...]  # () = all absolute
    max_jump: Tuple[float, ...]  # () = no check; 0 = that joint unchecked (policy/jump_limit.py)
    groups: Tuple[str, ...]
    halt_on_stop: bool  # the operator's stop also stops a trajectory being followed (ActionOutputs.halt)
    halt_time_s: float  # over this long


@dataclasses.dataclass(frozen=True)
class RtcSettings:
    enabled: bool
    max_guidance: float


SECTIONS = {"model": ModelSettings, "robot": RobotSettings, "cameras": CameraSettings,
            "joint_states": JointStatesSettings, "state": StateSettings, "action": ActionSettings,
            "rtc": RtcSettings}


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    model: ModelSettings
    robot: RobotSettings
    cameras: CameraSettings
    joint_states: JointStatesSettings
    state: StateSettings
    action: ActionSettings
    rtc: RtcSettings
    prompt: str
    control_rate_hz: float
    command_rate_hz: float
    inference_period_s: float
    blend_s: float
    max_observation_age_s: float
    on_stale: str
    worker_niceness: int
    autostart: bool
    status_log_period_s: float

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> "NodeConfig":
        """The configuration of the checked values ``p`` of every PARAMETERS entry (parameters.declare_parameters,
        params_file.load), after the checks across them (lengths, the robot adapter, the cameras): a ValueError
        names the parameter."""
        missing = sorted(set(PARAMETERS) - set(p))
        if missing:
            raise ValueError(f"parameters {missing} have no value")
        values: Dict[str, Any] = {name: p[name] for name in PARAMETERS}
        check_model(values)
        check_lengths(values)
        check_robot(values)
        values["cameras.names"] = camera_slots_for(values)
        values["cameras.compressed"] = list(values["cameras.compressed"]) or [False] * len(values["cameras.names"])
        sections: Dict[str, Dict[str, Any]] = {name: {} for name in SECTIONS}
        top: Dict[str, Any] = {}
        for name, value in values.items():
            value = tuple(value) if isinstance(value, list) else value
            head, _, rest = name.partition(".")
            if rest and head in sections:
                sections[head][rest] = value
            else:
                top[name] = value
        return cls(**{name: SECTIONS[name](**fields) for name, fields in sections.items()}, **top)

    def value(self, name: str) -> Any:
        """The value of the parameter ``name`` (a dotted PARAMETERS name)."""
        if name not in PARAMETERS:
            raise KeyError(f"{name!r} is not a turbopi_node parameter")
        value: Any = self
        for part in name.split(".", 1) if name.split(".", 1)[0] in SECTIONS else [name]:
            value = getattr(value, part)
        return value


def declare_node_parameters(node) -> tuple:
    """Declare turbopi_node's parameters and its action groups' on ``node``; warn of any given that it does not
    declare (before the model loads: the first thing in the log). Returns (the checked NodeConfig, the groups)."""
    p = declare_parameters(node, PARAMETERS)
    config = NodeConfig.from_params(p)  # checked across parameters; typed from here on
    groups = declare_groups(node, p, config.action.joints)
    ignored = ignored_parameters(node, PARAMETERS)
    if ignored:
        node.get_logger().warning(ignored)
    return config, groups
