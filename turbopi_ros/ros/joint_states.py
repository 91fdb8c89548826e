"""Joint states from a topic that several publishers share, each with a part of the joints (an arm's driver and a
gripper's, both on /joint_states), merged per joint as robot_state_publisher and MoveIt merge them.

Each set of joint names on the topic is one source; its newest message is kept. A message that holds every state
joint is used as it is (one publisher: the common case, nothing merged). Otherwise each state joint's position comes
from the newest message that holds it, and the merged state is stamped with the oldest message it took a position
from, so a source that stopped makes the state stale (max_observation_age_s) rather than old. A malformed message (no
names, names and positions of different lengths, a name twice) is no source: it is passed on as it is, so the
conversion refuses it, naming what is wrong; a state joint that no source holds is reported as missing from the
newest message. The joint-states rate (CommandPeriod's measured rate) is measured on one source only: of those heard
from in the last QUIET messages, the one that holds the most state joints, since two publishers' interleaved stamps
are no robot's period.
"""
from __future__ import annotations

import collections
from types import SimpleNamespace
from typing import Dict, List, Sequence, Tuple

MAX_SOURCES = 8  # joint-name sets kept (the least recently heard from is forgotten first)
QUIET = 20  # a source not heard from in this many messages (of any source) no longer sets the rate


class JointStateSources:
    def __init__(self, state_joints: Sequence[str]):
        self.state_joints = list(state_joints)
        self._wanted = set(self.state_joints)
        self._newest: "collections.OrderedDict[Tuple[str, ...], object]" = collections.OrderedDict()  # oldest first
        self._rate_source: Tuple[str, ...] = ()
        self._count = 0  # messages stored
        self._heard: Dict[Tuple[str, ...], int] = {}  # source -> the count at its newest message

    def add(self, msg) -> Tuple[object, bool]:
        """Store ``msg``. Returns the joint state to use now (``msg`` itself, or the merge of the sources) and
        whether ``msg`` counts for the joint-states rate."""
        names = tuple(msg.name)
        if not names or len(msg.position) != len(names) or len(set(names)) != len(names):
            return msg, names == self._rate_source  # refused as it is by the conversion, naming what is wrong
        self._newest.pop(names, None)
        self._newest[names] = msg
        while len(self._newest) > MAX_SOURCES:
            self._heard.pop(self._newest.popitem(last=False)[0], None)
        self._count += 1
        self._heard[names] = self._count
        counts = names == self._rate_source_now()
        if len(self._newest) == 1 or self._wanted.issubset(names):
            return msg, counts
        return self._merged(msg), counts

    def _rate_source_now(self) -> Tuple[str, ...]:
        """The source the rate is measured on: of those heard from lately, the one with the most state joints (the one
        it was, on a tie); a source that stopped (a driver switched to another joint set) hands over to the next."""
        recent = [n for n, count in self._heard.items() if self._count - count < QUIET]
        held = {n: len(self._wanted.intersection(n)) for n in recent}
        most = max(held.values())
        if held.get(self._rate_source) != most:
            self._rate_source = next(n for n in recent if held[n] == most)
        return self._rate_source

    def _merged(self, newest):
        positions, used = {}, []
        for names, msg in reversed(self._newest.items()):  # newest first
            take = [j for j in self.state_joints if j in names and j not in positions]
            if not take:
                continue
            index = {n: i for i, n in enumerate(names)}
            positions.update((j, msg.position[index[j]]) for j in take)
            used.append((msg, take))
            if len(positions) == len(self._wanted):
                break
        if len(positions) < len(self._wanted):
            return newest  # reported as missing joints, naming what the newest message holds
        oldest, oldest_joints = min(used, key=lambda u: (u[0].header.stamp.sec, u[0].header.stamp.nanosec))
        return MergedJointState(name=list(self.state_joints), position=[positions[j] for j in self.state_joints],
                                header=oldest.header, sources=len(used), oldest_joints=oldest_joints)


class MergedJointState(SimpleNamespace):
    """The state joints' newest positions from several sources: ``header`` is the oldest source's, ``oldest_joints``
    the state joints whose positions came from it (for the staleness message), ``sources`` how many were merged."""
    name: List[str]
    position: List[float]
    sources: int
    oldest_joints: List[str]
