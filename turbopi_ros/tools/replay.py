"""turbopi-replay: run the policy over a recorded rosbag2 / MCAP bag, as the node would have run on that robot.

    turbopi-replay BAG --params-file YAML [--out DIR] [--start S] [--duration D] [--period S] [--limit N]
                       [--at-recorded-chunks]

The params file is the node's own, read and checked as the node does (params_file.py), and the policy is built by
the node's policy_from_config. The bag's messages go, in recorded order, into the node's InputBuffer: observations
are built by its newest-message rule, staleness and bad-input checks and conversions, at instants of bag time (the
recorded arrival times, ``now`` of the staleness checks), and each chunk through the node's chunk gate once it is
done (the instant plus its inference time). An instant that yields no chunk is a skip, counted by its reason (the
node's own message, numbers masked). Outputs in DIR: chunks.mcap, report.json and PNGs (replay_report.py).

Instants: every ``--period`` seconds of bag time; by default as often as the node would infer: back to back, or every
inference_period_s, i.e. max(inference_period_s, median total latency of this replay's inferences so far) after each
chunk, and at the next recorded message after a skip (the node tries again when new data arrives).
``--at-recorded-chunks`` observes instead where the recorded node did: at the stamps of the chunks it published on
/turbopi_node/action_chunk (see _candidates), which reproduces them bit for bit with the same checkpoint, seed and
device (CPU), and shows what another checkpoint does at exactly those moments. A recorded chunk whose inputs are not
all in the bag (the recording began after the node received them, or ended before the newest was written) is not
compared: the report lists it and why (why_not_rebuildable).
"""
from __future__ import annotations

import argparse
import itertools
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..ros import params_file
from .bags import COMPRESSED, IMAGE, JOINT_STATE, TRAJECTORY, deserialize, open_bag
from .processes import CHUNK_TOPIC
from ..ros.chunk_gate import in_the_past, went_stale
from ..ros.conversions import InputError, sec_to_stamp, stamp_to_sec
from ..ros.inputs import JOINT_STATES, InputBuffer, WaitingForInput
from ..ros.node_config import NodeConfig
from ..policy.jump_limit import JumpLimit
from ..policy.policy import ActionChunk, ObservationError


@dataclass
class Replayed:
    """What a replay produced: its chunks, its skips, and the recorded joint states it went past."""
    chunks: List[ActionChunk] = field(default_factory=list)
    skips: Dict[str, dict] = field(default_factory=dict)  # masked reason -> {"count", "kind", "first_at_s", "example"}
    joint_states: List[Tuple[int, object]] = field(default_factory=list)  # (arrival ns, rosbags JointState)
    joint_states_topic: str = "/joint_states"  # where they were recorded (the node's resolved joint_states.topic)
    instants: int = 0
    recorded: List[dict] = field(default_factory=list)  # --at-recorded-chunks: one entry per recorded chunk
    noise_offset: Optional[int] = None  # --at-recorded-chunks: chunks the node published before the recording began
    not_rebuilt: List[dict] = field(default_factory=list)  # --at-recorded-chunks: chunks whose inputs the bag lacks


def resolved(topic: str, node: str = params_file.NODE_FQN) -> str:
    """A topic name as the node of fully qualified name ``node`` resolves it, as the bag has it: a relative name
    (``joint_states``) is under the node's namespace (``/`` in the root, ``/robot1/`` for ``/robot1/turbopi_node``),
    a private one (``~/image``) under the node's name."""
    if topic.startswith("/"):
        return topic
    if topic.startswith("~"):
        return node + topic[1:]
    return node.rsplit("/", 1)[0] + "/" + topic


def checked_node_name(node: str) -> str:
    """``--node``: a fully qualified node name, ``/turbopi_node`` or ``/robot1/turbopi_node``."""
    if not re.fullmatch(r"(/[A-Za-z_]\w*)+", node, flags=re.ASCII):
        raise ValueError(f"--node {node!r}: expected the node's fully qualified name, as `ros2 node list` shows it "
                         "(/turbopi_node, /robot1/turbopi_node)")
    return node


def input_topics(config: NodeConfig, node: str = params_file.NODE_FQN) -> Dict[str, Tuple[str, str]]:
    """input name -> (topic, message type) of the subscriptions of the node ``node`` under the configuration
    ``config`` (one per camera: two cameras may share a topic, as two subscriptions of the node do)."""
    cameras = config.cameras
    topics = {name: (resolved(t, node), COMPRESSED if c else IMAGE)
              for name, t, c in zip(cameras.names, cameras.topics, cameras.compressed)}
    topics[JOINT_STATES] = (resolved(config.joint_states.topic, node), JOINT_STATE)
    return topics


def check_bag_topics(reader, wanted: Dict[str, Tuple[str, str]], bag: Path) -> None:
    """Every topic the node subscribes to is in the bag, with the type it subscribes with (a topic recorded with
    several types is read in that one, as the node's subscription matches that one's publishers), and has messages:
    rosbag2 lists the topics it subscribed to, published on or not."""
    types: Dict[str, List[str]] = {}
    counts: Dict[Tuple[str, str], int] = {}
    for c in reader.connections:
        if (c.topic, c.msgtype) not in counts:
            types.setdefault(c.topic, []).append(c.msgtype)
        counts[c.topic, c.msgtype] = counts.get((c.topic, c.msgtype), 0) + c.msgcount
    # per-topic counts: the bag's metadata or MCAP statistics (where a writer left them out, they do not add up)
    counted = sum(counts.values()) == reader.message_count
    for name, (topic, msgtype) in wanted.items():
        what = "joint_states.topic" if name == JOINT_STATES else f"camera '{name}' (cameras.topics)"
        if topic not in types:
            raise ValueError(f"bag {bag} has no topic {topic} ({what} in the params file, {msgtype}); its topics: "
                             + (", ".join(f"{t} ({' | '.join(m)})" for t, m in sorted(types.items())) or "none"))
        if msgtype not in types[topic]:
            hint = " (check cameras.compressed)" if msgtype in (IMAGE, COMPRESSED) else ""
            raise ValueError(f"bag {bag}: topic {topic} ({what}) is {' | '.join(types[topic])}, the node subscribes "
                             f"to it as {msgtype}{hint}")
        if counted and not counts[topic, msgtype]:
            raise ValueError(f"bag {bag} has no message on {topic} ({what} in the params file, {msgtype}): the topic "
                             "was recorded, but nothing was published on it")


def skip_reason(message: str) -> str:
    """A skip's message with its measured numbers masked, so that skips for the same reason count together."""
    return re.sub(r"-?\d+\.\d+", "#", message)


class Replayer:
    """Feeds a bag's messages to the node's InputBuffer and runs the policy at instants of bag time."""

    def __init__(self, config: NodeConfig, policy, node: str = params_file.NODE_FQN):
        self.config, self.policy, self.node = config, policy, node
        self.topics = input_topics(config, node)  # input name -> (topic, type)
        self._inputs_of: Dict[Tuple[str, str], List[str]] = {}  # (topic, type) -> the inputs it feeds
        for name, key in self.topics.items():
            self._inputs_of.setdefault(key, []).append(name)
        # decoded as the node decodes them: a JPEG reduced where the policy's fast preprocessing allows (policy_node)
        self.inputs = InputBuffer(list(config.cameras.names), {name: t for name, (t, _) in self.topics.items()},
                                  list(config.state.joints), config.max_observation_age_s,
                                  reduce_for=policy.reduced_decode_size)
        self.prompt = config.prompt
        self.jump = JumpLimit(config.action.joints, config.state.joints, config.action.max_jump)
        self.result = Replayed(joint_states_topic=self.topics[JOINT_STATES][0])
        self._last_key: Optional[tuple] = None  # (newest input stamp, prompt) of the last chunk's observation
        self._pending: List[tuple] = []  # (chunk, done ns, instant ns) of the chunks not settled yet (settle)
        self._t0_ns = 0

    # --- one instant ------------------------------------------------------------------------------------------------
    def skip(self, t_ns: int, message: str, kind: str) -> None:
        entry = self.result.skips.setdefault(skip_reason(message), {
            "count": 0, "kind": kind, "first_at_s": round((t_ns - self._t0_ns) * 1e-9, 6), "example": message})
        entry["count"] += 1

    def observe(self, t_ns: int) -> Optional[ActionChunk]:
        """The node's worker at ``now`` = t_ns: the newest inputs, unless none is stamped later than the last chunk's
        observation, checked and converted by InputBuffer, inferred by the policy, passed by the node's chunk gate.
        None (and a counted skip) where the node would not act."""
        self.result.instants += 1
        snapshot = self.inputs.snapshot()
        # the node's name of an observation (engine_worker.py): a message that brings no newer stamp is no new one
        key = (self.inputs.newest_stamp(snapshot), self.prompt)
        if key == self._last_key:
            self.skip(t_ns, "no new input since the last chunk", "unchanged")
            return None
        try:
            chunk = self.policy.infer(self.inputs.observation(snapshot, self.prompt, t_ns * 1e-9))
        except WaitingForInput as e:
            self.skip(t_ns, str(e), "waiting")
            return None
        except (InputError, ObservationError, ValueError) as e:  # what the node reports as bad input
            self.skip(t_ns, str(e), "input")
            return None
        self._last_key = key
        # the node's ChunkGate drops it (its actions all due when it is done, or action.max_jump) and waits for new
        # input; it is done this inference's time after the instant
        done = t_ns * 1e-9 + chunk.timings["total"]
        dropped = (in_the_past(chunk.stamp, done, len(chunk.actions) / self.config.control_rate_hz)
                   or self.jump.problem(chunk.actions, chunk.state))
        if dropped:
            self.skip(t_ns, dropped, "dropped")
            return None
        self.result.chunks.append(chunk)
        self._pending.append((chunk, t_ns + int(round(chunk.timings["total"] * 1e9)), t_ns))
        self._pending.sort(key=lambda pending: pending[1])  # by when they are done
        return chunk

    def settle(self, next_arrival_ns: Optional[int]) -> None:
        """The chunks observed whose every message that arrived before they were done is stored (the next one arrives
        at ``next_arrival_ns``, later; None: no more are read): the node's chunk gate drops one where the newest
        inputs went stale while it was computed."""
        while self._pending and (next_arrival_ns is None or next_arrival_ns > self._pending[0][1]):
            chunk, done_ns, t_ns = self._pending.pop(0)
            stale = went_stale(self.inputs, done_ns * 1e-9)
            if stale:
                self.result.chunks = [c for c in self.result.chunks if c is not chunk]
                self.skip(t_ns, stale, "dropped")

    # --- a bag ------------------------------------------------------------------------------------------------------
    def stream(self, reader, end_ns: int):
        """(arrival ns, (topic, type), rosbags message) of the node's inputs from the bag's beginning (the newest
        messages before the first instant count) to end_ns, in recorded order."""
        connections = [c for c in reader.connections if (c.topic, c.msgtype) in self._inputs_of]
        for conn, t_ns, raw in reader.messages(connections=connections, stop=end_ns):
            yield t_ns, (conn.topic, conn.msgtype), deserialize(reader.typestore, raw, conn.msgtype)

    def store(self, t_ns: int, key: Tuple[str, str], msg, start_ns: int) -> List[str]:
        """A message of (topic, type) ``key`` arrives, as in the node's subscription callbacks: one per input it feeds
        (joint states also go into the result). Returns those inputs."""
        names = self._inputs_of[key]
        for name in names:
            self.inputs.store(name, msg)
            if name == JOINT_STATES and t_ns >= start_ns:
                self.result.joint_states.append((t_ns, msg))
        return names

    def run(self, reader, start_ns: int, end_ns: int, period_s: Optional[float], limit: int = 0,
            progress=lambda t_s: None) -> Replayed:
        """Instants from start_ns to end_ns: every period_s, or (None) as the node paces itself (module docstring).
        An instant at T sees the messages that arrived at or before T."""
        self._t0_ns = start_ns
        pacing = self.config.inference_period_s
        next_ns: Optional[int] = start_ns
        k = 0
        for t_ns, topic, msg in itertools.chain(self.stream(reader, end_ns), [(end_ns, None, None)]):
            self.settle(t_ns)
            while next_ns is not None and next_ns < min(t_ns, end_ns):
                chunk = self.observe(next_ns)
                self.settle(t_ns)
                if limit and len(self.result.chunks) >= limit:
                    self.settle(None)
                    if len(self.result.chunks) >= limit:
                        return self.result
                if period_s is not None:
                    k += 1
                    next_ns = start_ns + int(round(k * period_s * 1e9))
                elif chunk is None:
                    next_ns = None  # try again on new data, as the node does
                else:
                    latency = float(np.median([c.timings["total"] for c in self.result.chunks]))
                    next_ns += max(int(round(max(pacing, latency) * 1e9)), 1)
            if msg is None:
                break
            self.store(t_ns, topic, msg, start_ns)
            if t_ns >= start_ns:
                progress((t_ns - start_ns) * 1e-9)
            if next_ns is None and t_ns >= start_ns:
                next_ns = t_ns
        self.settle(None)
        return self.result

    # --- at the recorded node's instants ------------------------------------------------------------------------------
    def run_at_recorded_chunks(self, reader, start_ns: int, end_ns: int, limit: int = 0,
                               progress=lambda t_s: None) -> Replayed:
        """One observation per chunk the recorded node published (RecordedChunks), in its order, so that the policy's
        noise generator advances as the node's did: recorded chunks stamped before a window's start_ns only draw
        their noise. From the bag's start (start_ns at or before its first message), every recorded chunk is in: the
        first chunks may be stamped before the bag's start time (the recorder's arrival time of its first message,
        later than that message's stamp), their inputs in the bag all the same. A chunk whose inputs are not all in
        the bag (why_not_rebuildable) is not compared: it is listed, with why, in ``not_rebuilt``, and draws its
        noise. A chunk is resolved once the bag is SETTLE_S past its stamp: by then every message stamped before it
        has arrived, whatever the order the recorder got the topics in."""
        self._t0_ns = start_ns
        whole_bag = start_ns <= reader.start_time
        recorded = RecordedChunks(reader, self.config, self.node)
        history: Dict[str, List[Tuple[int, int, object]]] = {n: [] for n in self.inputs.inputs}  # (stamp, arrival, msg)
        first_stamps: Dict[str, int] = {}  # input -> stamp of its first message in the bag
        settle_ns = int(SETTLE_S * 1e9)
        for t_ns, topic, msg in itertools.chain(self.stream(reader, 2**63 - 1), [(2**63 - 1, None, None)]):
            while recorded.pending() and (msg is None or recorded.next_stamp_ns() + settle_ns < t_ns):
                index = recorded.index()
                stamp_ns, actions = recorded.pop()
                if stamp_ns >= end_ns:
                    return self.result
                if stamp_ns < start_ns and not whole_bag:
                    self.policy.model.sample_noise(1, generator=self.policy.generator)  # before the window
                    continue
                why = why_not_rebuildable(history, first_stamps, stamp_ns, self._names(), ended=msg is None)
                if why is not None:
                    self.policy.model.sample_noise(1, generator=self.policy.generator)  # the node drew it
                    self.result.not_rebuilt.append({"index": index, "stamp_ns": stamp_ns, "kind": why[0],
                                                    "why": why[1]})
                    continue
                self._reproduce(stamp_ns, actions, _candidates(history, stamp_ns), first=not self.result.recorded)
                if limit and len(self.result.chunks) >= limit:
                    return self.result
            if msg is None or (t_ns >= end_ns and not recorded.pending()):
                break
            names = self.store(t_ns, topic, msg, start_ns)  # (the joint states after the last chunk still count)
            if t_ns >= start_ns:
                progress((t_ns - start_ns) * 1e-9)
            if recorded.pending():
                stamp = _stamp_ns(stamp_to_sec(msg.header.stamp))
                for name in names:
                    first_stamps.setdefault(name, stamp)
                    history[name] = _usable(history[name] + [(stamp, t_ns, msg)], recorded.next_stamp_ns())
        return self.result

    def _names(self) -> Dict[str, str]:
        """input name -> its topic."""
        return {name: topic for name, (topic, _) in self.topics.items()}

    def _reproduce(self, stamp_ns: int, actions: np.ndarray, candidates, first: bool = False) -> None:
        """Observe on the first of ``candidates`` (see _candidates: not empty) that reproduces the recorded chunk,
        each tried from the same generator state; else keep the first (the likeliest). For the bag's ``first`` chunk,
        when none reproduces it, the noise of up to MAX_NOISE_OFFSET earlier chunks is skipped (a recording that began
        after the node's first chunks: _noise_offset); so it is for a later one that the chunk before it reproduced
        (the node computed chunks in between and dropped them: their noise was drawn, chunk_gate.py)."""
        generator = self.policy.generator
        self.result.instants += 1
        before = generator.get_state()
        tries, errors = [], []
        for now_ns, snapshot in candidates:
            generator.set_state(before)
            try:
                chunk = self.policy.infer(self.inputs.observation(snapshot, self.prompt, now_ns * 1e-9))
            except (InputError, ObservationError, ValueError) as e:
                errors.append(str(e))
                continue
            tries.append((chunk, generator.get_state()))
            if np.array_equal(chunk.actions, actions):
                break
        if not tries:
            generator.set_state(before)
            self.policy.model.sample_noise(1, generator=generator)  # the node drew it
            self.skip(stamp_ns, errors[0], "recorded")
            self.result.recorded.append({"stamp_ns": stamp_ns, "reproduced": False, "tries": 0})
            return
        matched = [t for t in tries if np.array_equal(t[0].actions, actions)]
        skipped = 0
        # not reproduced: the recording began after the node's first chunks (the bag's first), or, while the replay
        # is in step with the node, the node computed chunks since the last one that it dropped (chunk_gate.py)
        in_step = bool(self.result.recorded) and self.result.recorded[-1]["reproduced"]
        if first or (in_step and not matched):
            found = self._noise_offset(candidates, actions, before) if not matched else (0, None)
            skipped = found[0] if found else 0
            if first:
                self.result.noise_offset = found[0] if found else None
            if found and found[1] is not None:
                matched = tries = [found[1]]
        chunk, after = (matched or tries[:1])[0]
        generator.set_state(after)
        self.result.chunks.append(chunk)
        same_shape = chunk.actions.shape == actions.shape
        self.result.recorded.append({
            "stamp_ns": stamp_ns, "reproduced": bool(matched), "tries": len(tries),
            "dropped_before": 0 if first else skipped,
            "max_abs_diff": float(np.max(np.abs(chunk.actions - actions))) if same_shape else None})

    def _noise_offset(self, candidates, actions: np.ndarray, before):
        """(k, (chunk, generator state after it)) where one of the ``candidates`` observations (_candidates, likeliest
        first) reproduces a recorded chunk once the noise of k earlier chunks (1 <= k <= MAX_NOISE_OFFSET) is skipped:
        the node computed k chunks that the recording missed (it began after the node's first chunk, or the node
        dropped them). The smallest k wins, then the likeliest candidate: the node may have observed another snapshot
        than the likeliest (a message still on its way), so every one is tried. None if none does (another
        checkpoint, seed, device...); the generator is then back at ``before``."""
        generator = self.policy.generator
        observations = []
        for now_ns, snapshot in candidates:
            try:
                observations.append(self.inputs.observation(snapshot, self.prompt, now_ns * 1e-9))
            except (InputError, ObservationError, ValueError):
                continue
        generator.set_state(before)
        for k in range(1, MAX_NOISE_OFFSET + 1):
            self.policy.model.sample_noise(1, generator=generator)
            skipped = generator.get_state()
            for observation in observations:
                generator.set_state(skipped)
                chunk = self.policy.infer(observation)
                if np.array_equal(chunk.actions, actions):
                    return k, (chunk, generator.get_state())
            generator.set_state(skipped)
        generator.set_state(before)
        return None


SETTLE_S = 0.5  # how far past a recorded chunk's stamp the bag is read before it is resolved
MAX_NOISE_OFFSET = 20  # chunks the node may have published before the recording began (searched for on the first)
MAX_CANDIDATES = 8


def _candidates(history: Dict[str, List[Tuple[int, int, object]]], stamp_ns: int):
    """The snapshots the recorded node may have observed for a chunk stamped stamp_ns, likeliest first, as
    (now ns, snapshot). Its snapshot held, for each input, the newest message it had received; all were stamped at
    or before stamp_ns and one exactly at it. That is the newest message stamped at or before stamp_ns, or, where
    that one was still on its way to the node (a camera frame and a joint state a few ms apart; the node's worker
    does not wait), the one before it. The bag's order across topics is the recorder's, not the node's, so this goes
    by stamps. ``now`` is the latest arrival among the messages (the node's clock was at least there)."""
    options = []
    for name, messages in history.items():
        before = sorted((m for m in messages if m[0] <= stamp_ns), key=lambda m: m[0])[-2:][::-1]
        if not before:
            return []
        options.append((name, before))
    combos = [c for c in itertools.product(*[range(len(o)) for _, o in options])
              if any(options[i][1][k][0] == stamp_ns for i, k in enumerate(c))]
    combos.sort(key=sum)  # fewest messages in flight first
    out = []
    for combo in combos[:MAX_CANDIDATES]:
        chosen = {name: opts[k] for (name, opts), k in zip(options, combo)}
        out.append((max(m[1] for m in chosen.values()), {name: m[2] for name, m in chosen.items()}))
    return out


BEFORE_RECORDING, MISSING = "input before the recording", "input missing from the bag"


def why_not_rebuildable(history: Dict[str, List[Tuple[int, int, object]]], first_stamps: Dict[str, int],
                        stamp_ns: int, topics: Dict[str, str], ended: bool = False) -> Optional[Tuple[str, str]]:
    """None where the bag has the inputs of a recorded chunk stamped stamp_ns (_candidates finds a snapshot), else
    (kind, why): BEFORE_RECORDING, an input has no message stamped at or before the chunk's stamp in the bag (its
    first message there is later: the node received the one it observed before the recording of that topic began),
    or MISSING, every input has one but none is stamped at the chunk's stamp, which is the stamp of the newest input
    the node observed (not recorded; ``ended``: the bag ended before it was read, which the text says where an input
    has no message after the chunk's stamp). ``history``: input -> its (stamp, arrival, message) so far (_usable),
    ``first_stamps``: input -> the stamp of its first message in the bag, ``topics``: input -> topic."""
    if _candidates(history, stamp_ns):
        return None

    def label(name: str) -> str:
        return "joint states" if name == JOINT_STATES else f"camera '{name}'"

    at = f"{stamp_ns * 1e-9:.6f} s"
    early = [name for name, messages in history.items() if not any(m[0] <= stamp_ns for m in messages)]
    if early:
        parts = [f"{label(n)} ({topics[n]}): " + (f"its first message in the bag is stamped "
                                                   f"{(first_stamps[n] - stamp_ns) * 1e-9:.6f} s after the chunk"
                                                   if n in first_stamps else "no message in the bag")
                 for n in early]
        return BEFORE_RECORDING, (f"the chunk's inputs (stamped at or before {at}) are not all in the bag: "
                                  + "; ".join(parts) + ": the node received them before the recording began")
    newest = {n: max(m[0] for m in messages if m[0] <= stamp_ns) for n, messages in history.items()}
    why = (f"no input message in the bag is stamped at the chunk's stamp {at} (the newest before it: "
           + ", ".join(f"{label(n)} {(stamp_ns - t) * 1e-9:.6f} s" for n, t in newest.items())
           + "): the newest message the node observed is missing from the bag")
    after = [n for n, messages in history.items() if not any(m[0] > stamp_ns for m in messages)]
    if ended and after:
        why += (" (the recording ended before it: no " + ", ".join(label(n) for n in after)
                + " message stamped after the chunk is in the bag)")
    return MISSING, why


def _usable(messages: List[Tuple[int, int, object]], stamp_ns: int) -> List[Tuple[int, int, object]]:
    """An input's messages that chunks stamped from stamp_ns on can use: the two newest stamped at or before it, and
    the later ones."""
    older = sorted((m for m in messages if m[0] <= stamp_ns), key=lambda m: m[0])[-2:]
    return older + [m for m in messages if m[0] > stamp_ns]


def _stamp_ns(stamp: float) -> int:
    """A stamp in seconds as the node publishes it (header.stamp of the chunk), in integer nanoseconds."""
    t = sec_to_stamp(stamp)
    return t.sec * 1_000_000_000 + t.nanosec


class RecordedChunks:
    """The chunks a recorded turbopi_node published on /turbopi_node/action_chunk, in publication order: (observation
    stamp in ns, actions [H, N])."""

    def __init__(self, reader, config: NodeConfig, node: str = params_file.NODE_FQN):
        # the node in a namespace (the params file's /** matches any) publishes on /<namespace>/turbopi_node/...
        connections = [c for c in reader.connections if c.msgtype == TRAJECTORY
                       and c.topic.endswith(CHUNK_TOPIC)]
        own = [c for c in reader.connections if c.msgtype == TRAJECTORY and c.topic == f"{node}/action_chunk"]
        connections = own or connections  # --node: that node's chunks among several nodes
        if len({c.topic for c in connections}) > 1:
            raise ValueError(f"--at-recorded-chunks: the bag has the chunks of several nodes: "
                             f"{sorted({c.topic for c in connections})}; name the node to replay with --node")
        if not connections:
            raise ValueError(f"--at-recorded-chunks: the bag has no {CHUNK_TOPIC} ({TRAJECTORY}): record the node's "
                             "chunks too (turbopi-demo --record does)")
        self.chunks = []
        for conn, _, raw in reader.messages(connections=connections):
            msg = deserialize(reader.typestore, raw, conn.msgtype)
            if tuple(msg.joint_names) != config.action.joints:
                raise ValueError(f"recorded chunks are for joints {list(msg.joint_names)}, the params file's "
                                 f"action.joints are {list(config.action.joints)}")
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            if stamp == 0:  # a halt (action.halt_on_stop), not a chunk: chunks carry their observation's stamp
                continue
            self.chunks.append((stamp, np.array([pt.positions for pt in msg.points], dtype=np.float64)))
        self._next = 0

    def pending(self) -> bool:
        return self._next < len(self.chunks)

    def index(self) -> int:
        """The position of the next chunk among the recorded ones (0: the bag's first)."""
        return self._next

    def next_stamp_ns(self) -> int:
        return self.chunks[self._next][0]

    def pop(self):
        self._next += 1
        return self.chunks[self._next - 1]


# --- command line --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turbopi-replay", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the policy over a recorded rosbag2 / MCAP bag as turbopi_node would have (same\n"
                    "parameters, same input checks and conversions), write the chunks back and compare them\n"
                    "with what the robot did (docs/replay.md).",
        epilog="example:\n  turbopi-demo --duration 15 --record demo.mcap\n  turbopi-replay demo.mcap --params-file "
               "config/demo_tiny.yaml --out replay/\n  (then open replay/report.json, replay/*.png, or "
               "replay/chunks.mcap in Foxglove)")
    parser.add_argument("bag", type=Path, help="rosbag2 directory (sqlite3 or MCAP storage) or a single .mcap file")
    parser.add_argument("--params-file", type=Path, required=True, metavar="YAML",
                        help="the node's parameters YAML (/**/turbopi_node: ros__parameters: ...)")
    parser.add_argument("--node", default=params_file.NODE_FQN, metavar="NAME",
                        help="the recorded node's fully qualified name (default /turbopi_node; /robot1/turbopi_node "
                             "for -r __ns:=/robot1): the params file's sections for it, its relative topic names "
                             "under its namespace, its chunks")
    parser.add_argument("--out", type=Path, default=Path("replay"), metavar="DIR",
                        help="output directory (default: ./replay)")
    parser.add_argument("--start", type=float, default=0.0, metavar="S",
                        help="seconds into the bag to start at (default 0)")
    parser.add_argument("--duration", type=float, default=0.0, metavar="D",
                        help="seconds of bag to replay (default: to the end)")
    parser.add_argument("--period", type=float, default=None, metavar="S",
                        help="seconds of bag time between observations; default: as often as the node would infer, "
                             "i.e. max(inference_period_s, the median total latency of this replay's inferences so "
                             "far) after each chunk, and at the next recorded message after a skip")
    parser.add_argument("--limit", type=int, default=0, metavar="N",
                        help="stop after this many chunks (default: no limit)")
    parser.add_argument("--at-recorded-chunks", action="store_true",
                        help=f"observe where the recorded node did: at the stamps of its chunks on {CHUNK_TOPIC} "
                             "(reproduces them bit for bit with the same checkpoint, seed and device on CPU)")
    return parser


def _check_options(start_s: float, duration_s: float, period_s: Optional[float], limit: int,
                   at_recorded_chunks: bool) -> None:
    if period_s is not None and period_s <= 0:
        raise ValueError(f"--period {period_s:g}: expected seconds > 0")
    if start_s < 0 or duration_s < 0 or limit < 0:
        raise ValueError("--start, --duration and --limit must not be negative")
    if period_s is not None and at_recorded_chunks:
        raise ValueError("--period and --at-recorded-chunks: choose one (the recorded chunks set the instants)")


def replay(bag: Path, params_path: Path, out: Path, start_s: float = 0.0, duration_s: float = 0.0,
           period_s: Optional[float] = None, limit: int = 0, at_recorded_chunks: bool = False,
           show_progress: Optional[bool] = None, node: str = params_file.NODE_FQN) -> dict:
    """Replay ``bag`` of the node ``node`` (its fully qualified name) and write the outputs into ``out``; returns the
    report."""
    from tqdm import tqdm

    from . import replay_report as report
    from ..ros.node_params import policy_from_config

    _check_options(start_s, duration_s, period_s, limit, at_recorded_chunks)
    config = params_file.load(params_path, checked_node_name(node))
    for name in params_file.unknown(params_path, node):
        print(f"turbopi-replay: warning: {params_path} sets '{name}', which turbopi_node does not declare (ignored)",
              file=sys.stderr)
    if config.rtc.enabled:
        print("turbopi-replay: warning: rtc.enabled is set; replay infers every chunk on its own (real-time chunking "
              "is not replayed)", file=sys.stderr)
    out = Path(out)
    if out.exists() and not out.is_dir():  # found before the replay, not when its outputs are written
        raise ValueError(f"--out {out} is a file: expected a directory (created if missing)")
    if (out / report.CHUNKS_BAG).exists():
        raise ValueError(f"{out / report.CHUNKS_BAG} exists already: choose another --out")
    reader = open_bag(bag)
    try:
        check_bag_topics(reader, input_topics(config, node), bag)
        if config.model.num_threads > 0:
            import torch

            torch.set_num_threads(config.model.num_threads)
        policy = policy_from_config(config)
        start_ns = reader.start_time + int(round(start_s * 1e9))
        end_ns = reader.end_time + 1 if duration_s <= 0 else min(start_ns + int(round(duration_s * 1e9)),
                                                                 reader.end_time + 1)
        if start_ns >= end_ns:
            raise ValueError(f"--start {start_s:g} s is past the end of the bag ({reader.duration * 1e-9:.3f} s long)")
        replayer = Replayer(config, policy, node)
        window_s = (end_ns - start_ns) * 1e-9
        t_wall = time.monotonic()
        with tqdm(total=round(window_s, 3), unit="s", desc="replay",
                  disable=None if show_progress is None else not show_progress,  # None: only on a terminal
                  bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s of bag [{elapsed}<{remaining}{postfix}]") as bar:
            def progress(t_s: float) -> None:
                bar.update(max(0.0, min(t_s, window_s) - bar.n))
                bar.set_postfix(chunks=len(replayer.result.chunks), refresh=False)

            if at_recorded_chunks:
                result = replayer.run_at_recorded_chunks(reader, start_ns, end_ns, limit, progress)
            else:
                result = replayer.run(reader, start_ns, end_ns, period_s, limit, progress)
        info = {"bag": str(bag), "params_file": str(params_path), "start_ns": start_ns, "end_ns": end_ns,
                "bag_start_ns": reader.start_time, "wall_s": time.monotonic() - t_wall,
                "mode": "at recorded chunks" if at_recorded_chunks else
                ("period" if period_s is not None else "as the node paces itself"), "period_s": period_s}
    finally:
        reader.close()
    return report.write(out, config, policy, result, info)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = replay(args.bag, args.params_file, args.out, args.start, args.duration, args.period, args.limit,
                         args.at_recorded_chunks, node=args.node)
    except ValueError as e:
        print(f"turbopi-replay: {e}", file=sys.stderr)
        return 2
    from .replay_report import summary_lines

    print("\n".join(summary_lines(summary, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
