"""Action groups: a chunk's joints split into the parts of a robot that are commanded separately (numpy, no ROS).

A robot is often driven by several controllers: ALOHA's two arms and two grippers, DROID's arm (joint velocities)
and gripper (a position). A group names the action joints it commands and whether the model's values for them are
positions or velocities:

    position   the values are targets, passed on as they are
    velocity   the values are joint velocities (DROID's joint_velocity action space); ``integrate`` turns them into
               position targets from the joints' current positions, for controllers that take positions

``check_groups`` validates a configuration against the action joints (every group joint known, none in two groups,
no empty group, a known kind); ``split`` cuts a chunk [H, N] into the groups' [H, n_g] blocks by joint name.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

KINDS = ("position", "velocity")


@dataclasses.dataclass(frozen=True)
class ActionGroup:
    name: str
    joints: Tuple[str, ...]  # action joint names, in the order the group's commands list them
    kind: str = "position"


def check_groups(groups: Sequence[ActionGroup], action_joints: Sequence[str]) -> Tuple[ActionGroup, ...]:
    """The groups, validated against the chunk's action joints; a ValueError naming the first problem found per
    group (all problems together)."""
    action_joints = list(action_joints)
    problems = []
    if len(set(action_joints)) != len(action_joints):
        dup = sorted({j for j in action_joints if action_joints.count(j) > 1})
        problems.append(f"action joints {dup} are listed more than once")
    owner: Dict[str, str] = {}
    names = set()
    for g in groups:
        if not g.name or g.name in names:
            problems.append(f"group name {g.name!r} is empty or used twice")
        names.add(g.name)
        if g.kind not in KINDS:
            problems.append(f"group {g.name!r}: kind {g.kind!r} is not one of {list(KINDS)}")
        if not g.joints:
            problems.append(f"group {g.name!r} has no joints")
        unknown = [j for j in g.joints if j not in action_joints]
        if unknown:
            problems.append(f"group {g.name!r}: joints {unknown} are not action joints {action_joints}")
        for j in g.joints:
            if j in owner:
                problems.append(f"joint {j!r} is in groups {owner[j]!r} and {g.name!r}")
            owner.setdefault(j, g.name)
    if problems:
        raise ValueError("action groups: " + "; ".join(problems))
    return tuple(groups)


def split(actions: np.ndarray, action_joints: Sequence[str],
          groups: Sequence[ActionGroup]) -> Dict[str, np.ndarray]:
    """A chunk [H, N] (columns named by ``action_joints``) -> {group name: [H, len(group.joints)]}, each group's
    columns in its own joint order (copies)."""
    actions = np.asarray(actions, dtype=np.float64)
    action_joints = list(action_joints)
    if actions.ndim != 2 or actions.shape[1] != len(action_joints):
        raise ValueError(f"actions must be [H, {len(action_joints)}] (one column per action joint), got "
                         f"{list(actions.shape)}")
    check_groups(groups, action_joints)
    index = {j: i for i, j in enumerate(action_joints)}
    return {g.name: actions[:, [index[j] for j in g.joints]] for g in groups}


def integrate(velocities: np.ndarray, start: np.ndarray, rate_hz: float, lower: Optional[np.ndarray] = None,
              upper: Optional[np.ndarray] = None) -> np.ndarray:
    """Joint velocities [H, n] from a chunk at ``rate_hz`` -> position targets [H, n]: action k is held for one
    period 1 / rate_hz and its target is where the joint is at the period's end (forward Euler from ``start``, the
    joints' positions at the observation): start + (v_0 + ... + v_k) / rate_hz. Targets are clamped to
    [lower, upper] where given, and the integration goes on from the clamped value (a joint at its limit does not
    build up travel beyond it)."""
    v = np.asarray(velocities, dtype=np.float64)
    q = np.asarray(start, dtype=np.float64)
    if v.ndim != 2 or q.shape != (v.shape[1],):
        raise ValueError(f"velocities must be [H, n] and start [n], got {list(v.shape)} and {list(q.shape)}")
    if not (isinstance(rate_hz, (int, float)) and math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"rate_hz must be a positive number, got {rate_hz!r}")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(q))):
        raise ValueError("velocities and start must be finite")
    lo = np.full(q.shape, -np.inf) if lower is None else np.asarray(lower, dtype=np.float64)
    hi = np.full(q.shape, np.inf) if upper is None else np.asarray(upper, dtype=np.float64)
    if lo.shape != q.shape or hi.shape != q.shape or np.any(lo > hi):
        raise ValueError(f"lower and upper must be [{q.shape[0]}] with lower <= upper")
    if lower is None and upper is None:
        return q + np.cumsum(v, axis=0) / rate_hz
    out = np.empty_like(v)
    for k in range(v.shape[0]):
        q = np.clip(q + v[k] / rate_hz, lo, hi)
        out[k] = q
    return out


def groups_from_mapping(config: Mapping[str, Mapping[str, object]]) -> Tuple[ActionGroup, ...]:
    """{name: {"joints": [...], "kind": "position" | "velocity"}} (e.g. from a parameter file) -> ActionGroups, in
    the mapping's order; check_groups validates them against the action joints."""
    groups = []
    for name, spec in config.items():
        if not isinstance(spec, Mapping):
            raise ValueError(f"action group {name!r}: expected {{joints: [...], kind: ...}}, got "
                             f"{type(spec).__name__}")
        unknown = sorted(set(spec) - {"joints", "kind"})
        if unknown:
            raise ValueError(f"action group {name!r}: unknown keys {unknown} (expected joints, kind)")
        joints = spec.get("joints", ())
        if isinstance(joints, str) or not all(isinstance(j, str) for j in joints):
            raise ValueError(f"action group {name!r}: joints must be a list of joint names, got {joints!r}")
        groups.append(ActionGroup(str(name), tuple(joints), str(spec.get("kind", "position"))))
    return tuple(groups)
