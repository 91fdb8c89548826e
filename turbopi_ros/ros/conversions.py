"""ROS messages <-> numpy. Every failure is an InputError naming the input and what was expected."""
from __future__ import annotations

import re
from typing import Iterator, Optional, Sequence, Tuple

import cv2
import numpy as np
from builtin_interfaces.msg import Duration, Time
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model's inputs are float32
MAX_DECODE_PIXELS = 1 << 30  # OpenCV's default CV_IO_MAX_IMAGE_PIXELS: a larger header is refused (corrupt)
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


_TO_RGB = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB,
           "mono8": cv2.COLOR_GRAY2RGB}
# decode flags by reduction factor. OpenCV 4.10+ decodes straight to RGB (IMREAD_COLOR_RGB in place of the BGR bit,
# the same pixels); an older one (a ROS distribution's) decodes BGR and converts.
_RGB_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", 0)
_DECODE = {r: (flag & ~cv2.IMREAD_COLOR) | _RGB_FLAG if _RGB_FLAG else flag
           for r, flag in ((1, cv2.IMREAD_COLOR), (2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
                           (8, cv2.IMREAD_REDUCED_COLOR_8))}


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

    rgb8 comes back as a read-only view of the message's buffer (no copy; rows may be strided when ``step`` pads them);
    the other encodings are one OpenCV colour conversion (a byte shuffle, ~50x faster than numpy's strided channel
    copy, and it releases the GIL so cameras convert in parallel).

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
    arr = np.frombuffer(data, dtype=np.uint8).reshape(h, step)[:, : w * ch].reshape(h, w, ch)  # a view, no copy
    if enc == "rgb8":
        arr.flags.writeable = False  # it shares the message's memory
        return arr
    return cv2.cvtColor(arr, _TO_RGB[enc])


def compressed_to_rgb(msg, camera: str, reduce_for: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png) -> uint8 [H, W, 3] RGB, decoded straight to RGB.

    reduce_for: None decodes at full size. (height, width) says the image will only be fit into height x width by the
    policy's fast preprocessing (Policy.reduced_decode_size): a JPEG is then decoded at 1/2, 1/4 or 1/8 of its size,
    the largest reduction that keeps it at least its fitted size (policy.preprocess.reduction_factor), which skips
    most of the decoder's work (its inverse DCT computes the smaller image directly).

    A JPEG without its end-of-image marker is refused even where it decodes: it was cut short, and OpenCV 4 (Humble's)
    decodes that into a partly grey image with only a warning. So are a JPEG whose scan a stray marker breaks off
    (jpeg_broken_scan: the rest decodes grey, whatever the OpenCV) and one too short for the size its header claims
    (jpeg_min_bytes: decoded at that size, grey)."""
    buf = np.frombuffer(msg.data, dtype=np.uint8)  # the message's buffer, no copy
    factor = 1
    if reduce_for is not None:
        size = jpeg_size(buf)
        if size is not None and size[0] * size[1] <= MAX_DECODE_PIXELS:  # else refused at full size, as exact is
            from ..policy.preprocess import reduction_factor

            factor = reduction_factor(size[0], size[1], reduce_for[0], reduce_for[1])
    _refuse_short_jpeg(buf, camera)
    if bytes(buf[:8]) == _PNG_SIGNATURE and buf.size > 24 and buf[24] == 16:  # IHDR's bit depth
        raise InputError(f"camera '{camera}': compressed image ({msg.format or 'no format'}) is a 16-bit PNG, not "
                         f"supported (expected jpeg, or png of 8 bits per channel: {', '.join(SUPPORTED_ENCODINGS)})")
    try:
        img = cv2.imdecode(buf, _DECODE[factor]) if buf.size else None
    except cv2.error:  # OpenCV asserts on some headers, e.g. a size over its limit (CV_IO_MAX_IMAGE_PIXELS)
        img = None
    if img is None:
        size = jpeg_size(buf)
        claims = f"; its header claims {size[1]}x{size[0]}" if size else ""
        raise InputError(f"camera '{camera}': compressed image ({msg.format or 'no format'}, {buf.size} bytes) "
                         f"could not be decoded (expected jpeg or png){claims}")
    if bytes(buf[:2]) == b"\xff\xd8":
        _refuse_broken_jpeg(bytes(buf), camera)
    return img if _RGB_FLAG else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _refuse_short_jpeg(buf: np.ndarray, camera: str) -> None:
    """A JPEG too short for the size its header claims has a corrupt header: OpenCV decodes it, at that size (seconds
    and gigabytes for a few hundred bytes claiming 30000x30000), into a grey image with only a warning on stderr."""
    least, size = jpeg_min_bytes(buf), jpeg_size(buf)
    if least is not None and buf.size < least and size[0] * size[1] <= MAX_DECODE_PIXELS:  # else OpenCV refuses it
        height, width = size
        raise InputError(f"camera '{camera}': JPEG data ({buf.size} bytes) is too short for the {width}x{height} image "
                         f"its header claims (at least {least} bytes): corrupt (expected a whole jpeg or png)")


def _refuse_broken_jpeg(data: bytes, camera: str) -> None:
    """A JPEG that OpenCV decoded anyway, with only a warning on stderr, but whose data ends early: the rest of the
    image is grey."""
    if jpeg_cut_short(data):
        raise InputError(f"camera '{camera}': JPEG data ({len(data)} bytes) has no end-of-image marker: the image was "
                         "cut short (expected a whole jpeg or png)")
    broken = jpeg_broken_scan(data)
    if broken is not None:
        raise InputError(f"camera '{camera}': JPEG data ({len(data)} bytes) is corrupt: its scan is broken off at byte "
                         f"{broken[0]} by marker FF{broken[1]:02X} (expected its end-of-image marker FFD9)")


# JPEG frame headers (start of frame: baseline, progressive, lossless, arithmetic...): they hold the image size.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_HUFFMAN_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2))  # DCT, Huffman-coded: baseline, extended, progressive
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jpeg_segments(data) -> Iterator[Tuple[int, int]]:
    """(offset, marker) of each of a JPEG's markers after its start-of-image, walked by their lengths up to its first
    start of scan (FF DA, the last one yielded: entropy-coded data follows); ends early at bytes that are no marker.
    ``data``: bytes or a memoryview of them (each indexes to ints). An offset leaves at least 4 bytes from it."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        yield i, marker
        if marker == 0xDA:
            return
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        else:
            i += 2 + ((data[i + 2] << 8) | data[i + 3])


def _jpeg_frame_header(data) -> Optional[Tuple[memoryview, int]]:
    """(the bytes, the offset of the frame header's marker) of a JPEG; None if ``data`` is not one or has none."""
    b = memoryview(np.ascontiguousarray(data, dtype=np.uint8)).cast("B")
    if len(b) < 4 or b[0] != 0xFF or b[1] != 0xD8:
        return None
    for i, marker in _jpeg_segments(b):
        if marker in _SOF_MARKERS:
            return (b, i) if i + 9 <= len(b) else None
    return None


def jpeg_size(data) -> Optional[Tuple[int, int]]:
    """(height, width) read from a JPEG's frame header, without decoding; None if ``data`` is not a JPEG."""
    found = _jpeg_frame_header(data)
    if found is None:
        return None
    b, i = found
    return (b[i + 5] << 8) | b[i + 6], (b[i + 7] << 8) | b[i + 8]


def jpeg_min_bytes(data) -> Optional[int]:
    """The fewest bytes a Huffman-coded JPEG (baseline, extended or progressive) of the size its frame header claims
    can take: every 8x8 block of every component costs at least one bit (the code of its DC value), and a component
    has at least one block per MCU. None where that is not known (not such a JPEG, the header cut short)."""
    found = _jpeg_frame_header(data)
    if found is None or found[0][found[1] + 1] not in _HUFFMAN_SOF_MARKERS:
        return None
    b, i = found
    components = b[i + 9] if i + 10 <= len(b) else 0
    if components == 0 or i + 10 + 3 * components > len(b):
        return None
    sampling = [b[i + 11 + 3 * k] for k in range(components)]
    h_max, v_max = max(s >> 4 for s in sampling) or 1, max(s & 15 for s in sampling) or 1
    height, width = (b[i + 5] << 8) | b[i + 6], (b[i + 7] << 8) | b[i + 8]
    mcus = -(-width // (8 * h_max)) * -(-height // (8 * v_max))
    return mcus * components // 8


def jpeg_cut_short(data: bytes) -> bool:
    """Whether JPEG ``data`` has no end-of-image marker (FF D9) after its first scan: it was cut short. FF D9 cannot
    occur inside the entropy-coded data (an FF there is followed by 00), and an embedded thumbnail's markers lie inside
    an APP segment, which the walk to the first scan skips whole. Bytes after the marker (a driver's padding, appended
    metadata) are ignored, as decoders ignore them."""
    for i, marker in _jpeg_segments(data):
        if marker == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", i) < 0
    return b"\xff\xd9" not in data[-64:]  # no scan found by the walk: at least the end must hold the marker


_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # in a scan's data FF is followed by 00 (a data byte) or RSTn


def jpeg_broken_scan(data: bytes) -> Optional[Tuple[int, int]]:
    """(offset, marker) of a marker that breaks off the scan of a sequential Huffman JPEG (baseline or extended) whose
    first scan holds every component: such a JPEG has that one scan, so the marker after it must be the end of the
    image (or DNL). Anything else (a stream's next frame begun inside this one, corrupt bytes) makes the decoder stop
    there and fill the rest grey. None where the scan ends as it should, or the JPEG is not of that kind."""
    sof, components = None, 0
    for i, marker in _jpeg_segments(data):
        if marker in _SOF_MARKERS and i + 10 <= len(data):
            sof, components = marker, data[i + 9]
        elif marker == 0xDA and i + 5 <= len(data):  # start of scan
            if sof not in (0xC0, 0xC1) or data[i + 4] != components:
                return None
            end = _SCAN_END.search(data, i + 2 + ((data[i + 2] << 8) | data[i + 3]))
            if end is None or data[end.start() + 1] in (0xD9, 0xDC):  # end of image, DNL
                return None
            return end.start(), data[end.start() + 1]
    return None


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
    huge = [f"'{j}'={v:g}" for j, v in zip(joints, values) if abs(v) > FLOAT32_MAX]
    if huge:  # finite here, inf in the model's float32 input
        raise InputError(f"joint_states: position {', '.join(huge)} beyond float32's range (the model's input: at most "
                         f"{FLOAT32_MAX:.4g}); state must be finite")
    return values


def trajectory_velocities(positions: np.ndarray, dt: float) -> np.ndarray:
    """The velocity at each of H points dt apart [H, n]: central differences, second-order one-sided at the first
    point, and zero at the last, where a trajectory ends at rest (a joint_trajectory_controller refuses one that ends
    moving by default since Jazzy). A joint_trajectory_controller interpolates between points with cubics through
    these positions and velocities. Central differences are exact for a quadratic path, so the cubics follow a smooth
    path. The forward difference of the segment after each point would make each cubic's velocity dip and rise within
    its segment: on a 1 Hz sine at 50 Hz, 25x the velocity error and an acceleration ripple 3x the path's peak
    (test_conversions.py)."""
    positions = np.asarray(positions, dtype=np.float64)
    vel = np.zeros_like(positions)
    if len(positions) >= 3:
        vel[:-1] = np.gradient(positions, dt, axis=0, edge_order=2)[:-1]
    elif len(positions) == 2:
        vel[0] = (positions[1] - positions[0]) / dt
    return vel


def chunk_to_trajectory(actions: np.ndarray, joint_names: Sequence[str], stamp: float, control_rate_hz: float,
                        frame_id: str = "") -> JointTrajectory:
    """Actions [H, n] -> JointTrajectory: point k at time_from_start (k + 1) / rate after the observation stamp
    (action k is the target of control step k + 1), with velocities (trajectory_velocities)."""
    actions = np.asarray(actions, dtype=np.float64)
    H, n = actions.shape
    if n != len(joint_names):
        raise ValueError(f"{n} action dims for {len(joint_names)} joint names")
    dt = 1.0 / control_rate_hz
    vel = trajectory_velocities(actions, dt)
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
