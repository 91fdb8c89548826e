"""The node's inputs without the node: the newest message of each input, staleness, and the Observation built from them.

Shared by turbopi_node and offline replay, so that what replays is what would run: the same newest-message rule, the
same checks (present, stamped, fresh, not from the future, decodable, every state joint finite) and the same
conversions. Times are seconds on the caller's clock (the node's ROS clock, or a bag's recorded time).
"""
from __future__ import annotations

import functools
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .conversions import InputError, compressed_to_rgb, image_to_rgb, joint_state_to_vector, jpeg_size, stamp_to_sec
from .joint_states import JointStateSources, MergedJointState
from ..logs import get_logger
from ..policy.policy import Observation

JOINT_STATES = "joint_states"
DAY_S = 86400.0
# Images larger than this (pixels; Full HD) are accepted, with a warning once per camera and size: the model sees
# 224x224, and converting and downscaling a 4K frame costs tens of milliseconds of every observation.
LARGE_IMAGE_PIXELS = 1920 * 1080

logger = get_logger(__name__)


class WaitingForInput(InputError):
    """Not an error of the input, just none yet: reported as a warning."""


def input_name(name: str) -> str:
    return name if name == JOINT_STATES else f"camera '{name}'"


class PromptSlot:
    """The current prompt (the ``prompt`` parameter, then ~/prompt or a parameter change), read by the engine
    thread."""

    def __init__(self, text: str):
        self._lock = threading.Lock()
        self._text = str(text)

    def get(self) -> str:
        with self._lock:
            return self._text

    def set(self, text: str) -> bool:
        """Whether ``text`` is a new prompt (a repeated one is ignored)."""
        with self._lock:
            if text == self._text:
                return False
            self._text = str(text)
            return True


def shorten(text: str, limit: int = 200) -> str:
    """repr of ``text`` for a log line, cut to ``limit`` characters with its length said."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


class InputBuffer:
    """Thread-safe newest-message store for the cameras and the joint states, and the checks on a snapshot of it."""

    def __init__(self, cameras: Sequence[str], topics: Dict[str, str], state_joints: Sequence[str],
                 max_age_s: float, use_sim_time_hint: bool = False, reduce_for: Optional[Tuple[int, int]] = None):
        self.cameras = list(cameras)
        self.inputs = self.cameras + [JOINT_STATES]
        self.topics = dict(topics)  # input name -> topic, for messages
        self.state_joints = list(state_joints)
        self.max_age_s = float(max_age_s)
        self.use_sim_time_hint = use_sim_time_hint
        self.reduce_for = reduce_for  # compressed images may be decoded at reduced size (the policy's fast mode)
        self._lock = threading.Lock()
        self._latest: Dict[str, object] = {}
        self._joint_sources = JointStateSources(self.state_joints)  # publishers sharing the joint-states topic
        self._large_warned: Dict[str, tuple] = {}  # camera -> the image size warned about

    def store(self, name: str, msg) -> bool:
        """Keep ``msg`` as input ``name``'s newest; a joint state merged with the other publishers' on the topic, if
        any (joint_states.py). Returns whether it counts for the joint-states rate (one publisher's messages do)."""
        counts = True
        with self._lock:
            if name == JOINT_STATES:
                msg, counts = self._joint_sources.add(msg)
            self._latest[name] = msg
        return counts

    def snapshot(self) -> Dict[str, object]:
        with self._lock:
            return dict(self._latest)

    def ages(self, snapshot: Dict[str, object], now: float) -> Dict[str, float]:
        return {n: now - stamp_to_sec(m.header.stamp) for n, m in snapshot.items() if not _unstamped(m)}

    def stale(self, snapshot: Dict[str, object], now: float) -> str:
        """'' if every input in the snapshot is fresh, else a message naming the worst one: unstamped, stamped ahead
        of the clock by more than max_age_s, or older than max_age_s."""
        unstamped = [n for n in self.inputs if n in snapshot and _unstamped(snapshot[n])]
        if unstamped:
            clock = " (use_sim_time)" if self.use_sim_time_hint else ""
            return (f"{input_name(unstamped[0])}: header.stamp is zero (expected the sensor time, on the node's "
                    f"clock{clock})")
        ages = self.ages(snapshot, now)
        ahead = {n: -a for n, a in ages.items() if a < -self.max_age_s}
        if ahead:
            first = max(ahead, key=ahead.get)
            return (f"{input_name(first)}: header.stamp is {ahead[first]:.2f} s ahead of the node's clock (more than "
                    f"max_observation_age_s {self.max_age_s:g}): the clocks differ; sync them, or check use_sim_time")
        stale = {n: a for n, a in ages.items() if a > self.max_age_s}
        if not stale:
            return ""
        worst = max(stale, key=stale.get)
        also = f"; also stale: {sorted(set(stale) - {worst})}" if len(stale) > 1 else ""
        hint = " (over a day: do the clocks differ? check use_sim_time)" if stale[worst] > DAY_S else ""
        merged = snapshot.get(worst)
        if isinstance(merged, MergedJointState):  # the topic's messages hold different joints (joint_states.py)
            return (f"{input_name(worst)}: joints {merged.oldest_joints} last came {stale[worst]:.2f} s ago "
                    f"(max_observation_age_s {self.max_age_s:g}; the messages on the topic hold different joints, "
                    f"and each joint's newest position is used)" + hint + also)
        return (f"{input_name(worst)}: newest message is {stale[worst]:.2f} s old (max_observation_age_s "
                f"{self.max_age_s:g})" + hint + also)

    def newest_stamp(self, snapshot: Dict[str, object]) -> Optional[float]:
        """The stamp of the newest input in the snapshot (an observation's stamp); None while one is missing."""
        if self.missing(snapshot):
            return None
        return max(stamp_to_sec(snapshot[n].header.stamp) for n in self.inputs)

    def missing(self, snapshot: Dict[str, object]) -> List[str]:
        return [n for n in self.inputs if n not in snapshot]

    def waiting_message(self, missing: Sequence[str]) -> str:
        return "waiting for inputs: no message yet on " + ", ".join(
            f"{self.topics.get(n, n)} ({input_name(n)})" for n in missing)

    def observation(self, snapshot: Dict[str, object], prompt: str, now: float,
                    image_source: Optional[Callable[[str, object], Callable[[], object]]] = None) -> Observation:
        """The Observation of a snapshot, or an InputError (WaitingForInput while an input has never arrived) that
        names the input and what was expected. Its images are conversions still to run (zero-argument callables:
        Policy.prepare runs them on its camera threads, and raises their InputError); ``image_source(name, msg)``
        gives another callable per camera instead (the node's frames.FramePreparer.source: frames prepared as they
        arrived)."""
        missing = self.missing(snapshot)
        if missing:
            raise WaitingForInput(self.waiting_message(missing))
        stale = self.stale(snapshot, now)
        if stale:
            raise InputError(stale)
        if not prompt or not prompt.strip():
            raise InputError("prompt is empty: set the 'prompt' parameter or publish on ~/prompt")
        source = image_source or self.converted
        images = {name: source(name, snapshot[name]) for name in self.cameras}
        self._warn_large(snapshot)
        state = joint_state_to_vector(snapshot[JOINT_STATES], self.state_joints)
        return Observation(images=images, state=state, prompt=prompt, stamp=self.newest_stamp(snapshot))

    def converted(self, name: str, msg) -> Callable[[], object]:
        """A zero-argument callable converting camera ``name``'s ``msg`` to uint8 RGB (decoded reduced where the
        policy's fast mode allows)."""
        return functools.partial(to_rgb, msg, name, self.reduce_for)

    def _warn_large(self, snapshot: Dict[str, object]) -> None:
        """Warn once per camera and size about images over Full HD (their size from the message fields, or a JPEG's
        header: the conversions themselves run later, on the policy's camera threads)."""
        for name in self.cameras:
            size = image_size(snapshot[name])
            if size is None:
                continue
            h, w = size
            if h * w > LARGE_IMAGE_PIXELS and self._large_warned.get(name) != (w, h):
                self._large_warned[name] = (w, h)
                logger.warning("%s: %dx%d images are used, but each costs tens of ms to convert and downscale to the "
                               "model's input (224x224); publish them smaller (e.g. image_proc's resize) to save it",
                               input_name(name), w, h)


def image_size(msg) -> Optional[Tuple[int, int]]:
    """(height, width) of an Image, or of a JPEG CompressedImage from its header; None if unknown without decoding."""
    if hasattr(msg, "format"):
        return jpeg_size(msg.data)
    return int(msg.height), int(msg.width)


def to_rgb(msg, name: str, reduce_for: Optional[Tuple[int, int]] = None):
    """sensor_msgs/Image or CompressedImage -> uint8 [H, W, 3] RGB (CompressedImage has a ``format`` field)."""
    return compressed_to_rgb(msg, name, reduce_for) if hasattr(msg, "format") else image_to_rgb(msg, name)


def _unstamped(msg) -> bool:
    return msg.header.stamp.sec == 0 and msg.header.stamp.nanosec == 0


