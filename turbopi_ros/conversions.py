"""ROS messages <-> numpy. Every failure is an InputError naming the input and what was expected."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class InputError(ValueError):
    """Bad input from a topic: the node logs it, reports it on /diagnostics and computes nothing from it."""


def stamp_to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _sec_nanosec(t: float):
    sec = int(np.floor(t))
    return sec, min(int(round((t - sec) * 1e9)), 999_999_999)


def sec_to_stamp(t: float) -> Time:
    sec, nanosec = _sec_nanosec(t)
    return Time(sec=sec, nanosec=nanosec)


def sec_to_duration(t: float) -> Duration:
    sec, nanosec = _sec_nanosec(t)
    return Duration(sec=sec, nanosec=nanosec)


def image_to_rgb(msg, camera: str) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> uint8 [H, W, 3] RGB.

    Encodings are matched exactly: ROS's names (sensor_msgs/image_encodings.hpp) are lowercase, and cv_bridge, RViz and
    image_transport refuse 'RGB8' as well, so a driver that sends it is refused with the spelling to use."""
    enc = msg.encoding
    if enc not in _CHANNELS:
        lower = f" (ROS encodings are lowercase: '{enc.lower()}')" if enc.lower() in _CHANNELS else ""
        raise InputError(f"camera '{camera}': encoding {enc or '(empty)'} not supported "
                         f"({', '.join(SUPPORTED_ENCODINGS)}){lower}")
    h, w, ch = int(msg.height), int(msg.width), _CHANNELS[enc]
    if h <= 0 or w <= 0:
        raise InputError(f"camera '{camera}': image is {w}x{h}, expected a non-empty image")
    step = int(msg.step)
    if step < w * ch:
        raise InputError(f"camera '{camera}': step {step} is less than width {w} x {ch} bytes per pixel ({enc})")
    data = msg.data
    if len(data) != step * h:
        raise InputError(f"camera '{camera}': {len(data)} bytes of data, expected step x height = {step} x {h} = "
                         f"{step * h} ({w}x{h} {enc})")
    arr = np.frombuffer(data, dtype=np.uint8).reshape(h, step)[:, : w * ch].reshape(h, w, ch)  # no copy yet
    if enc == "rgb8":
        return arr.copy()
    if enc == "bgr8":
        return arr[:, :, ::-1].copy()
    if enc == "rgba8":
        return arr[:, :, :3].copy()
    if enc == "bgra8":
        return arr[:, :, 2::-1].copy()
    return np.repeat(arr, 3, axis=2)


def compressed_to_rgb(msg, camera: str) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png) -> uint8 [H, W, 3] RGB. A JPEG without its end-of-image marker is
    refused even where it decodes: it was cut short, and OpenCV 4 (Humble's) decodes that into a partly grey image with
    only a warning."""
    import cv2

    data = bytes(msg.data)
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise InputError(f"camera '{camera}': compressed image ({msg.format or 'no format'}, {buf.size} bytes) "
                         "could not be decoded (expected jpeg or png)")
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:  # FF D9 only occurs as the marker (FF is stuffed)
        raise InputError(f"camera '{camera}': JPEG data ({len(data)} bytes) has no end-of-image marker: the image was "
                         "cut short (expected a whole jpeg or png)")
    return img[:, :, ::-1].copy()


def rgb_to_image(rgb: np.ndarray, encoding: str = "rgb8"):
    """uint8 [H, W, 3] RGB -> sensor_msgs/Image in the given encoding (for the fake robot and tests)."""
    from sensor_msgs.msg import Image

    if encoding not in _CHANNELS:
        raise ValueError(f"encoding {encoding} not supported ({', '.join(SUPPORTED_ENCODINGS)})")
    if encoding == "bgr8":
        arr = rgb[:, :, ::-1]
    elif encoding == "rgba8":
        arr = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif encoding == "bgra8":
        arr = np.concatenate([rgb[:, :, ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif encoding == "mono8":
        arr = rgb.mean(axis=2, keepdims=True).astype(np.uint8)
    else:
        arr = rgb
    arr = np.ascontiguousarray(arr)
    msg = Image()
    msg.height, msg.width = arr.shape[:2]
    msg.encoding = encoding
    msg.step = arr.shape[1] * arr.shape[2]
    msg.data = arr.tobytes()
    return msg


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90):
    import cv2
    from sensor_msgs.msg import CompressedImage

    ext = ".png" if fmt == "png" else ".jpg"
    ok, buf = cv2.imencode(ext, rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else [])
    if not ok:
        raise ValueError(f"could not encode a {fmt} image")
    msg = CompressedImage()
    msg.format = fmt
    msg.data = buf.tobytes()
    return msg


def joint_state_to_vector(msg, joints: Sequence[str]) -> np.ndarray:
    """sensor_msgs/JointState -> positions in ``joints`` order (extra joints ignored). Names must be unique: which of
    two positions of one joint is meant cannot be known."""
    names = list(msg.name)
    if not names:
        raise InputError(f"joint_states: JointState has no joint names (expected names and positions for "
                         f"state.joints {list(joints)})")
    if len(msg.position) != len(names):
        raise InputError(f"joint_states: {len(names)} names but {len(msg.position)} positions (expected one position "
                         "per name)")
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"joint_states: duplicate joint names {twice} in JointState (expected each joint once)")
    missing = [j for j in joints if j not in index]
    if missing:
        raise InputError(f"joint_states: joints {missing} of state.joints missing from JointState "
                         f"(it has {names})")
    values = np.array([msg.position[index[j]] for j in joints], dtype=np.float64)
    bad = [f"'{j}'={v}" for j, v in zip(joints, values) if not np.isfinite(v)]
    if bad:
        raise InputError(f"joint_states: non-finite position {', '.join(bad)}; state must be finite")
    return values


def chunk_to_trajectory(actions: np.ndarray, joint_names: Sequence[str], stamp: float, control_rate_hz: float,
                        frame_id: str = "") -> JointTrajectory:
    """Actions [H, n] -> JointTrajectory: point k at time_from_start (k + 1) / rate after the observation stamp
    (action k is the target of control step k + 1), velocities by finite differences, zero at the last point."""
    actions = np.asarray(actions, dtype=np.float64)
    H, n = actions.shape
    if n != len(joint_names):
        raise ValueError(f"{n} action dims for {len(joint_names)} joint names")
    dt = 1.0 / control_rate_hz
    vel = np.zeros_like(actions)
    if H > 1:
        vel[:-1] = (actions[1:] - actions[:-1]) / dt
    msg = JointTrajectory()
    msg.header.stamp = sec_to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.joint_names = list(joint_names)
    for k in range(H):
        p = JointTrajectoryPoint()
        p.positions = actions[k].tolist()
        p.velocities = vel[k].tolist()
        p.time_from_start = sec_to_duration((k + 1) * dt)
        msg.points.append(p)
    return msg
