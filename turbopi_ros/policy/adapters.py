"""Robot adapters: a robot's state, cameras and actions <-> the model's, as openpi's policies/*_policy.py do it.

numpy only, no ROS, no torch: the node and replay share them through Policy (policy.py).

    none    the state and the cameras already are the model's (the node's cameras.names are model slots), actions
            are the first N model dims: Policy as it always was
    aloha   bimanual ALOHA, state [14] = left arm 6 joints, left gripper, right arm 6 joints, right gripper.
            adapt_to_pi (openpi's default, on): joints 1, 2 (and 8, 9) are flipped in and out; the grippers go in as
            ALOHA's normalized linear position -> pi0's normalized angle, and come out as pi0's angle -> ALOHA's
            normalized gripper *joint* position (not the inverse of the way in: that is openpi's convention).
            cam_high -> base_0_rgb, cam_left_wrist -> left_wrist_0_rgb, cam_right_wrist -> right_wrist_0_rgb.
            Actions [14].
    droid   DROID Franka, state [8] = joint_position [7] + gripper_position [1]; exterior_image_1_left ->
            base_0_rgb, wrist_image_left -> left_wrist_0_rgb, the right wrist slot always absent. Actions [8]
            (joint velocities + gripper position).
    libero  LIBERO Panda, state [8] = eef position [3], axis-angle [3], gripper qpos [2]; agentview ->
            base_0_rgb, wrist -> left_wrist_0_rgb, the right wrist slot always absent. Actions [7].

An absent camera (a robot slot with no image in an observation) is a zero image with its mask off, as openpi pads the
slots a robot lacks (for pi0 and pi0.5; openpi's pi0-FAST keeps such masks on, and pi0-FAST is not served here).

Per-config model settings (``config_defaults``): openpi's training configs set the action horizon, the prompt length
and whether pi0.5 writes the discretized state into the prompt, and a converted checkpoint's config.json may not
carry them; the delta mask is part of the data config. The defaults per robot and variant are those of openpi's
configs pi0_aloha / pi05_aloha, pi0_droid / pi05_droid, pi0_libero / pi05_libero (training/config.py).

Order (openpi's Policy): adapter in -> normalize -> model -> unnormalize -> absolute actions (adding the normalized
then unnormalized state that entered the model, i.e. in model space: for ALOHA after the flip) -> adapter out.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from .transforms import make_bool_mask

ADAPTERS = ("none", "aloha", "droid", "libero")
SLOTS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")

# ALOHA <-> pi joint and gripper conventions (openpi aloha_policy.py; the constants are Interbotix / ALOHA's).
ALOHA_JOINT_FLIP = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1])
ALOHA_GRIPPERS = [6, 13]
_PUPPET_GRIPPER_POSITION = (0.01844, 0.05800)  # closed, open: ALOHA's linear gripper range (m)
_PUPPET_GRIPPER_JOINT = (-0.6213, 1.4910)  # closed, open: ALOHA's gripper joint range (rad)
_PI_GRIPPER_ANGLE = (0.5476, 1.6296)  # pi0's gripper encoder range (2405..3110 of 4096, zero at 2048) in rad
_ARM_LENGTH, _HORN_RADIUS = 0.036, 0.022


def _normalize(x, lo, hi):
    return (x - lo) / (hi - lo)


def _unnormalize(x, lo, hi):
    return x * (hi - lo) + lo


def aloha_gripper_to_pi(value: np.ndarray) -> np.ndarray:
    """ALOHA's normalized linear gripper position (0..1) -> pi0's normalized gripper angle: back to metres, the
    inverse of Interbotix's angle -> linear mapping (arcsin, clipped), then normalized over pi0's angle range."""
    linear = _unnormalize(value, *_PUPPET_GRIPPER_POSITION)
    ratio = (_HORN_RADIUS ** 2 + linear ** 2 - _ARM_LENGTH ** 2) / (2 * _HORN_RADIUS * linear)
    return _normalize(np.arcsin(np.clip(ratio, -1.0, 1.0)), *_PI_GRIPPER_ANGLE)


def aloha_gripper_from_pi(value: np.ndarray) -> np.ndarray:
    """pi0's gripper output -> ALOHA's normalized gripper joint position: shifted by pi0's angle offset, normalized
    over ALOHA's gripper joint range (the model's gripper is already in radians, so it is not rescaled)."""
    return _normalize(value + _PI_GRIPPER_ANGLE[0], *_PUPPET_GRIPPER_JOINT)


def aloha_gripper_from_pi_inverse(value: np.ndarray) -> np.ndarray:
    """The exact inverse of aloha_gripper_from_pi (ALOHA gripper joint position -> pi0's gripper output)."""
    return _unnormalize(value, *_PUPPET_GRIPPER_JOINT) - _PI_GRIPPER_ANGLE[0]


@dataclasses.dataclass(frozen=True)
class ConfigDefaults:
    """The model settings of one openpi training config (robot + variant)."""

    openpi_config: str  # the openpi config these come from
    action_horizon: int
    max_token_len: int
    discrete_state_input: bool  # pi0.5: the discretized state is written into the prompt
    delta_mask: Optional[Tuple[bool, ...]]  # None: the model outputs absolute actions


_DEFAULTS: Dict[Tuple[str, str], ConfigDefaults] = {
    ("aloha", "pi0"): ConfigDefaults("pi0_aloha", 50, 48, False, make_bool_mask(6, -1, 6, -1)),
    ("aloha", "pi05"): ConfigDefaults("pi05_aloha", 50, 200, True, make_bool_mask(6, -1, 6, -1)),
    ("droid", "pi0"): ConfigDefaults("pi0_droid", 10, 48, False, None),
    ("droid", "pi05"): ConfigDefaults("pi05_droid", 15, 200, True, None),
    # pi0_libero trains with the extra delta transform on the eef pose; pi05_libero does not
    ("libero", "pi0"): ConfigDefaults("pi0_libero", 50, 48, False, make_bool_mask(6, -1)),
    ("libero", "pi05"): ConfigDefaults("pi05_libero", 10, 200, False, None),
}


@dataclasses.dataclass(frozen=True)
class RobotAdapter:
    """One robot's conventions. ``state_in`` and ``actions_out`` are openpi's <Robot>Inputs / <Robot>Outputs on the
    state and the actions; the cameras are renamed to model slots by ``cameras`` (robot name -> slot)."""

    name: str
    state_dim: int  # the robot's state vector
    action_dims: int  # what actions_out returns per step
    cameras: Tuple[Tuple[str, str], ...]  # (openpi's robot camera name, model slot), in slot order
    state_keys: Tuple[str, ...]  # openpi's request keys that make the state, concatenated in this order
    adapt_to_pi: bool = False  # aloha only

    @property
    def slots(self) -> Tuple[str, ...]:
        """The model slots this robot can fill; the others are always absent (zero image, mask off)."""
        return tuple(slot for _, slot in self.cameras)

    @property
    def camera_slots(self) -> Dict[str, str]:
        """openpi's robot camera name -> model slot."""
        return dict(self.cameras)

    def defaults(self, variant: str) -> ConfigDefaults:
        """openpi's settings for this robot with a pi0 or pi0.5 model (module docstring)."""
        try:
            return _DEFAULTS[(self.name, variant)]
        except KeyError:
            raise ValueError(f"robot adapter '{self.name}' has no settings for model variant {variant!r} (expected "
                             "'pi0' or 'pi05')") from None

    def state_from_parts(self, parts: Mapping[str, np.ndarray]) -> np.ndarray:
        """openpi's request fields (``state_keys``; DROID: joint_position and gripper_position, a scalar gripper
        counts as one value) -> the robot's state vector, float64."""
        missing = [k for k in self.state_keys if k not in parts]
        if missing:
            raise ValueError(f"robot adapter '{self.name}': state fields {missing} missing (expected "
                             f"{list(self.state_keys)})")
        vectors = [np.atleast_1d(np.asarray(parts[k], dtype=np.float64)) for k in self.state_keys]
        return self.check_state(np.concatenate(vectors))

    def check_state(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.state_dim,):
            raise ValueError(f"robot adapter '{self.name}' expects a state of {self.state_dim} values, got shape "
                             f"{list(state.shape)}")
        return state

    def state_in(self, state: np.ndarray) -> np.ndarray:
        """The robot's state (its own units) -> the model's state space, before normalization. A new array."""
        state = self.check_state(state).copy()
        if self.adapt_to_pi:
            state = ALOHA_JOINT_FLIP * state
            state[ALOHA_GRIPPERS] = aloha_gripper_to_pi(state[ALOHA_GRIPPERS])
        return state

    def actions_out(self, actions: np.ndarray) -> np.ndarray:
        """Model-space actions [H, D >= action_dims] (unnormalized, absolute) -> the robot's [H, action_dims]."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] < self.action_dims:
            raise ValueError(f"robot adapter '{self.name}' needs actions [H, >= {self.action_dims}], got "
                             f"{list(actions.shape)}")
        actions = actions[:, : self.action_dims].copy()
        if self.adapt_to_pi:
            actions = ALOHA_JOINT_FLIP * actions
            actions[:, ALOHA_GRIPPERS] = aloha_gripper_from_pi(actions[:, ALOHA_GRIPPERS])
        return actions

    def actions_to_model(self, actions: np.ndarray) -> np.ndarray:
        """The inverse of actions_out on its dims: the robot's actions [H, action_dims] -> model space (for
        real-time chunking's target: the chunk being executed, as the model would have output it)."""
        actions = np.array(actions, dtype=np.float64, copy=True)
        if actions.ndim != 2 or actions.shape[1] != self.action_dims:
            raise ValueError(f"robot adapter '{self.name}' needs actions [H, {self.action_dims}], got "
                             f"{list(actions.shape)}")
        if self.adapt_to_pi:
            actions = ALOHA_JOINT_FLIP * actions
            actions[:, ALOHA_GRIPPERS] = aloha_gripper_from_pi_inverse(actions[:, ALOHA_GRIPPERS])
        return actions


def make_adapter(name: str, adapt_to_pi: bool = True) -> Optional[RobotAdapter]:
    """The adapter called ``name`` (one of ADAPTERS); "none" gives None (Policy's plain behaviour). adapt_to_pi
    applies to aloha only."""
    if name == "none":
        return None
    if name == "aloha":
        return RobotAdapter("aloha", 14, 14, (("cam_high", SLOTS[0]), ("cam_left_wrist", SLOTS[1]),
                                              ("cam_right_wrist", SLOTS[2])), ("state",), adapt_to_pi=bool(adapt_to_pi))
    if name == "droid":
        return RobotAdapter("droid", 8, 8, (("exterior_image_1_left", SLOTS[0]), ("wrist_image_left", SLOTS[1])),
                            ("joint_position", "gripper_position"))
    if name == "libero":
        return RobotAdapter("libero", 8, 7, (("image", SLOTS[0]), ("wrist_image", SLOTS[1])), ("state",))
    raise ValueError(f"robot adapter {name!r} is unknown: expected one of {list(ADAPTERS)}")
