"""What a ros2_controllers joint_trajectory_controller accepts on its ``~/joint_trajectory`` topic and can follow,
to check the node's trajectories against. ros2_control is C++ and not on PyPI, so it cannot run here. These rules
are this project's reading of the controller's source (Humble to Kilted and Rolling alike, except where noted):
JointTrajectoryController::validate_trajectory_msg, and Trajectory::sample with deduce_from_derivatives.

Validation (a trajectory that fails one is refused, and the controller logs why):
- With allow_partial_joints_goal false (the default), the trajectory names every controller joint. Joint names are
  not empty, there is at least one point, and every name is one of the controller's joints.
- With allow_nonzero_velocity_at_trajectory_end false, the last point's velocities are all zero (|v| up to float
  epsilon). That is the default since Jazzy; Humble's default is true.
- A trajectory with a non-zero stamp must not end before the time it arrives.
- time_from_start strictly increases.
- Without allow_integration_in_goal_trajectories, every point has positions for every joint, and velocities and
  accelerations for every joint or none. With it, a point needs at least one of the three, each of them for every
  joint. Efforts are allowed only with an effort command interface (Humble: never).

Interpolation: between two points with positions and velocities, the controller follows the cubic through both
(cubic below).

Following: for points without positions (velocity-only, with allow_integration_in_goal_trajectories), the
controller deduces positions one segment at a time, each from the point before it. The first point's positions come
from the controller's own state before the trajectory, and only when its first sample comes before the first point.
The first sample comes at the controller's first update after arrival. That is the start of a trajectory stamped 0;
otherwise it is later than the stamp. A sample that lands past the first point, or that skips a segment, deduces
from a point with no positions: it reads an empty vector. The controller's update period must therefore fit in each
segment."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from ros_helpers import stamp_of, trajectory_times

FLOAT_EPSILON = float(np.finfo(np.float32).eps)  # std::numeric_limits<float>::epsilon(), as the controller uses


@dataclasses.dataclass
class Controller:
    """A joint_trajectory_controller's parameters that decide what it takes, Jazzy's defaults unless given."""
    joints: Sequence[str]
    allow_integration_in_goal_trajectories: bool = False
    allow_nonzero_velocity_at_trajectory_end: bool = False  # Humble: True
    allow_partial_joints_goal: bool = False
    has_effort_command_interface: bool = False
    update_period_s: float = 0.01  # its controller_manager's update_rate: 100 Hz


def refused(msg, c: Controller, arrival: float) -> Optional[str]:
    """Why the controller refuses the JointTrajectory ``msg`` arriving at ``arrival`` (its clock, s); None if it
    takes it."""
    names, points = list(msg.joint_names), list(msg.points)
    if not c.allow_partial_joints_goal and len(names) != len(c.joints):
        return "Joints on incoming trajectory don't match the controller joints."
    if not names:
        return "Empty joint names on incoming trajectory."
    if not points:
        return "Empty trajectory received."
    stray = [n for n in names if n not in c.joints]
    if stray:
        return f"Incoming joint {stray[0]} doesn't match the controller's joints."
    if not c.allow_nonzero_velocity_at_trajectory_end:
        moving = [n for n, v in zip(names, points[-1].velocities) if abs(v) > FLOAT_EPSILON]
        if moving:
            return f"Velocity of last trajectory point of joint {moving[0]} is not zero"
    stamp, times = stamp_of(msg), trajectory_times(msg)
    if stamp != 0.0 and stamp + times[-1] < arrival:
        return "Received trajectory with non-zero start time that ends in the past"
    for i, p in enumerate(points):
        if i > 0 and times[i] <= times[i - 1]:
            return f"Time between points {i - 1} and {i} is not strictly increasing"
        fields = {"positions": p.positions, "velocities": p.velocities, "accelerations": p.accelerations}
        if c.allow_integration_in_goal_trajectories:
            if not any(len(v) for v in fields.values()):
                return "The given trajectory has no position, velocity, or acceleration points."
            wrong = [f for f, v in fields.items() if len(v) and len(v) != len(names)]
        else:
            wrong = [f for f, v in fields.items() if len(v) != len(names) and (f == "positions" or len(v))]
        if wrong:
            return f"Mismatch between joint_names size and {wrong[0]} at point #{i}"
        if len(p.effort) and not c.has_effort_command_interface:
            return "Trajectories with effort fields are only supported for controllers using the 'effort' interface."
    return None


def unfollowable(msg, c: Controller, arrival: float) -> Optional[str]:
    """Why the controller, having taken ``msg`` at ``arrival``, would deduce positions from a point that has none
    (module docstring); None if it can follow it."""
    points = list(msg.points)
    if all(len(p.positions) for p in points):
        return None
    times, stamp = trajectory_times(msg), stamp_of(msg)
    first_sample = arrival  # its first update after arrival, at best
    start = first_sample if stamp == 0.0 else stamp
    if start + times[0] <= first_sample:
        return (f"velocity-only points, first sampled {first_sample - start - times[0]:.4f} s past the first point: "
                "deduced from a point without positions")
    if len(times) > 1 and np.min(np.diff(times)) < c.update_period_s:
        return (f"velocity-only points {np.min(np.diff(times)):.4f} s apart, under the update period "
                f"{c.update_period_s} s: a sample skips a segment")
    return None


def problem(msg, c: Controller, arrival: float) -> Optional[str]:
    """refused, then unfollowable: None when the controller takes ``msg`` and can follow it."""
    return refused(msg, c, arrival) or unfollowable(msg, c, arrival)


def cubic(p0: np.ndarray, v0: np.ndarray, p1: np.ndarray, v1: np.ndarray, duration: float, t: np.ndarray):
    """The controller's interpolation between two points with positions and velocities (no accelerations): the
    cubic through both positions with both velocities, sampled at ``t`` [m] seconds into the segment. Returns
    positions, velocities and accelerations [m, n]."""
    p0, v0, p1, v1 = (np.asarray(x, dtype=np.float64)[None] for x in (p0, v0, p1, v1))
    t = np.asarray(t, dtype=np.float64)[:, None]
    c2 = (-3.0 * p0 + 3.0 * p1 - 2.0 * v0 * duration - v1 * duration) / duration ** 2
    c3 = (2.0 * p0 - 2.0 * p1 + v0 * duration + v1 * duration) / duration ** 3
    return p0 + v0 * t + c2 * t ** 2 + c3 * t ** 3, v0 + 2.0 * c2 * t + 3.0 * c3 * t ** 2, 2.0 * c2 + 6.0 * c3 * t
