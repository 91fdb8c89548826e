"""The node's robot and per-config model parameters: which openpi robot adapter the policy applies and the
model settings openpi's training configs set, checked against the rest of the configuration before the model loads.

    robot.adapter               none | aloha | droid | libero (policy/adapters.py)
    robot.adapt_to_pi           aloha: openpi's joint flips and gripper conversions (on, as every pi0_aloha trained)
    model.action_horizon        0 = the checkpoint's config.json, else the adapter's openpi config, else the preset
    model.max_token_len         likewise
    model.discrete_state_input  pi0.5 writes the discretized state into the prompt: auto | true | false

With an adapter, ``cameras.names`` may name the robot's cameras as openpi does (ALOHA's ``cam_high``, DROID's
``exterior_image_1_left``, ...) or the model slots they fill; either way each must be a slot the robot fills.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..policy.adapters import ADAPTERS, RobotAdapter, make_adapter
from ..policy.policy import IMAGE_KEYS
from .parameters import Param

if TYPE_CHECKING:
    from .node_config import NodeConfig

ROBOT_PARAMETERS: Dict[str, Param] = {
    "robot.adapter": Param("none", "openpi robot adapter applied around the model (state, cameras, actions as "
                                   "openpi's policies/*_policy.py do); none = the model's own spaces",
                           choices=ADAPTERS),
    "robot.adapt_to_pi": Param(True, "robot.adapter aloha: openpi's adapt_to_pi (joint sign flips, gripper unit "
                                     "conversions), on in every openpi ALOHA config; ignored by other adapters"),
    "model.action_horizon": Param(0, "actions per chunk; 0 = the checkpoint's config.json, else the adapter's openpi "
                                     "config, else the preset; a value contradicting config.json stops the node",
                                  min=0, max=1000),
    "model.max_token_len": Param(0, "prompt tokens (with the state, for pi0.5); 0 = the checkpoint's config.json, "
                                    "else the adapter's openpi config, else the preset", min=0, max=4096),
    "model.discrete_state_input": Param("auto", "pi0.5: write the discretized state into the prompt; auto = the "
                                                "checkpoint's config.json, else the adapter's openpi config, else "
                                                "true for pi0.5", choices=("auto", "true", "false")),
}


def adapter_of(p: Dict[str, Any]) -> Optional[RobotAdapter]:
    return make_adapter(p["robot.adapter"], bool(p["robot.adapt_to_pi"]))


def policy_kwargs(config: "NodeConfig") -> Dict[str, Any]:
    """load_policy's robot and model-setting arguments from the node's configuration (node_config.NodeConfig)."""
    return dict(robot_adapter=config.robot.adapter, adapt_to_pi=config.robot.adapt_to_pi,
                action_horizon=config.model.action_horizon, max_token_len=config.model.max_token_len,
                discrete_state_input=config.model.discrete_state_input)


def camera_slots_for(p: Dict[str, Any]) -> List[str]:
    """The model slots of ``cameras.names``: model slots as they are; with an adapter, openpi's robot camera names
    are accepted for the slots they fill, and every camera must be a slot the robot fills."""
    names = list(p["cameras.names"])
    adapter = adapter_of(p)
    if adapter is None:
        bad = [n for n in names if n not in IMAGE_KEYS]
        if bad:
            raise ValueError(f"parameter cameras.names: {bad} are not model image slots {list(IMAGE_KEYS)}")
        return names
    rename = adapter.camera_slots
    slots = [rename.get(n, n) for n in names]
    bad = [n for n, s in zip(names, slots) if s not in adapter.slots]
    if bad:
        raise ValueError(f"parameter cameras.names: {bad} with robot.adapter {adapter.name}: expected the robot's "
                         f"cameras {list(rename)} or the model slots they fill {list(adapter.slots)}")
    twice = sorted({s for s in slots if slots.count(s) > 1})
    if twice:
        raise ValueError(f"parameter cameras.names: model slots {twice} are named more than once")
    return slots


def check_robot(p: Dict[str, Any]) -> None:
    """The state and action joints fit the adapter's vectors (a ValueError naming the parameter)."""
    adapter = adapter_of(p)
    if adapter is None:
        return
    for name, want, what in (("state.joints", adapter.state_dim, "state vector"),
                             ("action.joints", adapter.action_dims, "action vector")):
        if len(p[name]) != want:
            raise ValueError(f"parameter {name} has {len(p[name])} entries: robot.adapter {adapter.name} needs "
                             f"{want} (the robot's {what})")
