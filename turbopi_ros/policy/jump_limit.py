"""The largest jump a chunk may ask of the robot (``action.max_jump``): how far its first action may lie from the
position the robot was observed at.

The first action is the target of the control step right after the observation, so on a working setup it lies within
one step's motion of the observed position (plus the tracking error of the robot's controller). Far from it, something
does not match the robot: the checkpoint, its norm stats, the robot adapter, the joint order or the units (degrees
against radians), or the policy went astray. A position controller given that target jumps towards it; such a chunk
is better not acted on, with an error that names the joint, the distance and the limit.

Per action joint; a joint is compared with the state joint of the same name (its observed position, in the robot's
units, as joint_states gave it). 0 leaves a joint unchecked: one not among the state joints, a velocity-valued one, or
one whose action and state are in different units (openpi's ALOHA gripper: a joint position out, a linear one in).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np


class JumpLimit:
    def __init__(self, action_joints: Sequence[str], state_joints: Sequence[str], max_jump: Sequence[float]):
        """``max_jump``: [] (no check) or one limit >= 0 per action joint (0: that joint unchecked). A ValueError
        names the parameter and what is wrong."""
        self.action_joints, state_joints = list(action_joints), list(state_joints)
        limits = [float(v) for v in max_jump]
        if limits and len(limits) != len(self.action_joints):
            raise ValueError(f"parameter action.max_jump has {len(limits)} entries for {len(self.action_joints)} "
                             "action.joints: one per action joint (0: that joint unchecked), or leave it []")
        bad = [j for j, v in zip(self.action_joints, limits) if not v >= 0.0]
        if bad:
            raise ValueError(f"parameter action.max_jump: {bad} have a negative or NaN limit (0 leaves a joint "
                             "unchecked)")
        unknown = [j for j, v in zip(self.action_joints, limits) if v > 0.0 and j not in state_joints]
        if unknown:
            raise ValueError(f"parameter action.max_jump: {unknown} are not in state.joints {state_joints}, so their "
                             "observed positions are unknown: give them 0 (unchecked)")
        checked = [i for i, v in enumerate(limits) if v > 0.0]
        self.columns = np.array(checked, dtype=np.int64)  # action columns checked
        self.state_index = np.array([state_joints.index(self.action_joints[i]) for i in checked], dtype=np.int64)
        self.limits = np.array([limits[i] for i in checked], dtype=np.float64)

    @property
    def active(self) -> bool:
        return len(self.columns) > 0

    def checked_joints(self) -> List[str]:
        return [self.action_joints[i] for i in self.columns]

    def problem(self, actions: np.ndarray, state: Optional[np.ndarray]) -> Optional[str]:
        """Why the chunk ``actions`` [H, N] (action.joints order) of an observation whose state was ``state`` (state.
        joints order) must not be acted on: its first action jumps further than the limit on some joint; None when it
        does not, or nothing is checked."""
        if not self.active:
            return None
        if state is None:
            raise ValueError("action.max_jump: the chunk carries no observed state to compare its first action with")
        first = np.asarray(actions, dtype=np.float64)[0, self.columns]
        observed = np.asarray(state, dtype=np.float64)[self.state_index]
        jump = np.abs(first - observed)
        over = np.flatnonzero(~(jump <= self.limits))  # NaN counts as over
        if not len(over):
            return None
        parts = [f"{self.action_joints[self.columns[k]]} {first[k]:.4g} from the observed {observed[k]:.4g} (a jump of "
                 f"{jump[k]:.4g}, action.max_jump {self.limits[k]:.4g})" for k in over]
        return ("chunk dropped: its first action jumps too far from where the robot was observed: " + "; ".join(parts)
                + ". The checkpoint, its norm stats, the robot adapter, the joint order or the units may not match "
                "the robot")
