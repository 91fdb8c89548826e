"""Bad (and unusual) messages at the conversion level, where the node-level tests (test_node_bad_input.py) cannot reach
or would be slow: a raw 4K frame (the transport needs a larger shared-memory segment to carry it between processes),
a truncated JPEG that the decoder still decodes (OpenCV 4, Humble's, does), a corrupt JPEG header, 16-bit PNGs, JPEGs
with trailing bytes, extreme aspect ratios in the fast preprocessing, and the JointState checks; the engine worker's
report of what OpenCV refuses."""
import io
import logging
import time
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest

pytest.importorskip("sensor_msgs")

from sensor_msgs.msg import CompressedImage, JointState  # noqa: E402

from turbopi_ros.policy.preprocess import CameraBatch, fast_resize_to_fit  # noqa: E402
from turbopi_ros.policy.transforms import resize_to_fit  # noqa: E402
from turbopi_ros.ros.conversions import (InputError, compressed_to_rgb, image_to_rgb, joint_state_to_vector,  # noqa: E402
                                     rgb_to_compressed, rgb_to_image, sec_to_stamp)
from turbopi_ros.ros.engine_worker import EngineHooks, EngineWorker  # noqa: E402
from turbopi_ros.tools.fake_robot import pattern  # noqa: E402
from turbopi_ros.ros.inputs import JOINT_STATES, InputBuffer  # noqa: E402
from ros_helpers import jpeg_claiming, wait_for  # noqa: E402

JOINTS = ["a", "b", "c"]


def _stamped(msg, t=100.0):
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)
    return msg


def test_raw_4k_frame_is_used_and_warned_about_once(caplog):
    buffer = InputBuffer(["base_0_rgb"], {"base_0_rgb": "/cam", JOINT_STATES: "/js"}, JOINTS, max_age_s=0.5)
    rgb = pattern(3840, 2160, 0.0, 0)
    buffer.store("base_0_rgb", _stamped(rgb_to_image(rgb, "bgr8")))
    buffer.store(JOINT_STATES, _stamped(JointState(name=JOINTS, position=[0.0, 1.0, 2.0])))
    with caplog.at_level(logging.WARNING, logger="turbopi_ros.ros.inputs"):
        for _ in range(3):
            obs = buffer.observation(buffer.snapshot(), "go", now=100.1)
    assert np.array_equal(obs.images["base_0_rgb"](), rgb)  # the conversion runs later, on the camera threads
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["camera 'base_0_rgb': 3840x2160 images are used, but each costs tens of ms to convert and "
                        "downscale to the model's input (224x224); publish them smaller (e.g. image_proc's resize) to "
                        "save it"]
    buffer.store("base_0_rgb", _stamped(rgb_to_image(pattern(640, 480, 0.0, 0))))
    with caplog.at_level(logging.WARNING, logger="turbopi_ros.ros.inputs"):
        buffer.observation(buffer.snapshot(), "go", now=100.1)
    assert len(caplog.records) == 1  # a normal size says nothing


def test_truncated_jpeg_is_refused_even_where_it_decodes(monkeypatch):
    msg = rgb_to_compressed(pattern(160, 120, 0.0, 0), "jpeg")
    assert compressed_to_rgb(msg, "wrist").shape == (120, 160, 3)
    msg.data = bytes(msg.data)[:-600]
    with pytest.raises(InputError, match=r"camera 'wrist': compressed image \(jpeg, \d+ bytes\) could not be decoded"):
        compressed_to_rgb(msg, "wrist")  # OpenCV 5 refuses it itself
    import cv2  # OpenCV 4 returns the top of the image and a grey rest, with a warning on stderr only

    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: np.full((120, 160, 3), 128, np.uint8))
    with pytest.raises(InputError, match=r"camera 'wrist': JPEG data \(\d+ bytes\) has no end-of-image marker: the "
                                         r"image was cut short"):
        compressed_to_rgb(msg, "wrist")
    png = rgb_to_compressed(pattern(160, 120, 0.0, 0), "png")
    assert compressed_to_rgb(png, "wrist").shape == (120, 160, 3)  # the marker check is for JPEG only


def test_encoding_names_are_exact():
    msg = rgb_to_image(pattern(8, 4, 0.0, 0), "bgr8")
    msg.encoding = "BGR8"
    with pytest.raises(InputError, match=r"encoding BGR8 not supported \(rgb8, bgr8, rgba8, bgra8, mono8\) \(ROS "
                                         r"encodings are lowercase: 'bgr8'\)"):
        image_to_rgb(msg, "cam")
    msg.encoding = "yuv422"
    with pytest.raises(InputError, match=r"encoding yuv422 not supported \(rgb8, bgr8, rgba8, bgra8, mono8\)$"):
        image_to_rgb(msg, "cam")


@pytest.mark.parametrize("names, positions, message", [
    (["a", "b", "a", "c"], [0.0, 1.0, 2.0, 3.0], r"duplicate joint names \['a'\] in JointState \(expected each joint "
                                                   r"once\)"),
    ([], [], r"JointState has no joint names \(expected names and positions for state.joints \['a', 'b', 'c'\]\)"),
    (["a", "b", "c"], [0.0, float("inf"), float("-inf")], r"non-finite position 'b'=inf, 'c'=-inf; state must be "
                                                          r"finite"),
    (["a", "b", "c"], [0.0, 1.0], r"3 names but 2 positions \(expected one position per name\)"),
], ids=["duplicate", "no names", "inf", "lengths"])
def test_bad_joint_states(names, positions, message):
    with pytest.raises(InputError, match="joint_states: " + message):
        joint_state_to_vector(JointState(name=names, position=positions), JOINTS)


def test_duplicates_outside_the_state_joints_are_refused_too():
    """Which of two positions a joint has cannot be known, whether or not the model uses it: a driver bug to fix."""
    with pytest.raises(InputError, match=r"duplicate joint names \['x'\]"):
        joint_state_to_vector(JointState(name=["a", "b", "c", "x", "x"], position=[0.0] * 5), JOINTS)



def test_joint_position_beyond_float32_is_refused_naming_the_joint():
    """Finite as a float64 but infinite in the model's float32 input (a driver's uninitialised double): pi0.5, whose
    state goes into the prompt as bins, published a chunk from it; pi0 failed naming no input."""
    with pytest.raises(InputError, match=r"joint_states: position 'b'=1e\+39 beyond float32's range"):
        joint_state_to_vector(JointState(name=JOINTS, position=[0.0, 1e39, 0.0]), JOINTS)


@pytest.mark.parametrize("preset", ["tiny", "tiny_pi05"])
def test_the_policy_refuses_a_state_that_overflows_its_float32_input(preset):
    from turbopi_ros.policy.loading import load_policy
    from turbopi_ros.policy.policy import Observation, ObservationError

    policy = load_policy(checkpoint="random", preset=preset, action_dims=3)
    obs = Observation(images={"base_0_rgb": np.zeros((48, 64, 3), np.uint8)}, state=np.array([0.0, 1e300, 0.0]),
                      prompt="go", stamp=1.0)
    with pytest.raises(ObservationError, match=r"state values at \[1\] are beyond float32's range"):
        policy.infer(obs)


@pytest.mark.parametrize("reduce_for", [None, (224, 224)], ids=["exact", "fast"])
def test_jpeg_header_beyond_opencvs_pixel_limit_is_refused(reduce_for):
    """OpenCV asserts (cv2.error, not a ValueError) on a header over its 2^30 pixels; the fast mode's 1/8 decode
    passed that check and decoded the corrupt image, mostly grey."""
    msg = CompressedImage(format="jpeg", data=jpeg_claiming(65000, 65000))
    with pytest.raises(InputError, match=r"camera 'wrist': compressed image \(jpeg, \d+ bytes\) could not be decoded "
                                         r"\(expected jpeg or png\); its header claims 65000x65000"):
        compressed_to_rgb(msg, "wrist", reduce_for)


@pytest.mark.parametrize("reduce_for", [None, (224, 224)], ids=["exact", "fast"])
def test_jpeg_header_claiming_more_blocks_than_its_data_can_hold_is_refused(reduce_for):
    """A corrupt frame header under OpenCV's pixel limit: a few hundred bytes claiming 8000x8000 were decoded (192 MB,
    seconds; 30000x30000 took 52 s and 5 GB) into a grey image that was used. Every 8x8 block of every component
    takes at least one bit of Huffman code, so the data cannot hold the image its header claims."""
    data = jpeg_claiming(8000, 8000)
    msg = CompressedImage(format="jpeg", data=data)
    with pytest.raises(InputError, match=rf"camera 'wrist': JPEG data \({len(data)} bytes\) is too short for the "
                                         r"8000x8000 image its header claims \(at least \d+ bytes\): corrupt"):
        compressed_to_rgb(msg, "wrist", reduce_for)
    small = jpeg_claiming(16, 16)  # the same data, its true size
    assert compressed_to_rgb(CompressedImage(format="jpeg", data=small), "wrist", reduce_for).shape == (16, 16, 3)


def test_a_complete_jpeg_with_trailing_bytes_is_used():
    """Decoders ignore bytes after the end-of-image marker (drivers that pad their buffers, appended metadata); a JPEG
    cut short and then padded is still refused."""
    rgb = pattern(160, 120, 0.0, 0)
    msg = rgb_to_compressed(rgb, "jpeg")
    whole = compressed_to_rgb(msg, "wrist")
    msg.data = bytes(msg.data) + bytes(256)
    assert np.array_equal(compressed_to_rgb(msg, "wrist"), whole)
    msg.data = bytes(rgb_to_compressed(rgb, "jpeg").data)[:-600] + bytes(256)
    with pytest.raises(InputError, match="camera 'wrist'"):
        compressed_to_rgb(msg, "wrist")


def test_a_jpeg_cut_short_and_followed_by_the_next_frame_is_refused():
    """A stream framing error: the first half of a frame, then the whole next one. Its end-of-image marker is there
    (the next frame's), so it passed the cut-short check, and OpenCV decoded it with the bottom half grey, only
    warning on stderr. A sequential JPEG has one scan, so the first marker after it must be the end of the image."""
    first = bytes(rgb_to_compressed(pattern(320, 240, 0.0, 0), "jpeg").data)
    second = bytes(rgb_to_compressed(pattern(320, 240, 0.5, 1), "jpeg").data)
    msg = CompressedImage(format="jpeg", data=first[:len(first) // 2] + second)
    with pytest.raises(InputError, match=r"camera 'wrist': JPEG data \(\d+ bytes\) is corrupt: its scan is broken "
                                         r"off at byte \d+ by marker FFD8 \(expected its end-of-image marker FFD9\)"):
        compressed_to_rgb(msg, "wrist")
    for data in (first, first + bytes(64), first + second):  # whole frames, padding after one, a frame after one
        assert compressed_to_rgb(CompressedImage(format="jpeg", data=data), "wrist").shape == (240, 320, 3)
    progressive = io.BytesIO()
    PIL.Image.fromarray(pattern(320, 240, 0.0, 0)).save(progressive, "JPEG", progressive=True)
    msg = CompressedImage(format="jpeg", data=progressive.getvalue())
    assert compressed_to_rgb(msg, "wrist").shape == (240, 320, 3)


def test_a_16_bit_png_is_refused_as_its_raw_twin_is():
    """A raw 16UC1 image is refused; the same image through image_transport's png was decoded to 8 bits and used."""
    import cv2

    depth = (np.arange(120 * 160, dtype=np.uint32).reshape(120, 160) * 3 % 65536).astype(np.uint16)
    ok, buf = cv2.imencode(".png", depth)
    assert ok
    msg = CompressedImage(format="16UC1; png compressed ", data=buf.tobytes())
    with pytest.raises(InputError, match=r"camera 'depth': .* is a 16-bit PNG, not supported"):
        compressed_to_rgb(msg, "depth")


@pytest.mark.parametrize("shape", [(4, 2000, 3), (2000, 4, 3), (7, 1800, 3)])
def test_fast_resize_of_an_extreme_aspect_ratio_fits_it_as_exact_does(shape):
    """The fast mode reduced a 4 x 2000 image by 8 first, leaving no whole block, and OpenCV asserted."""
    image = pattern(shape[1], shape[0], 0.0, 0)
    fast, exact = fast_resize_to_fit(image, 224, 224), resize_to_fit(image, 224, 224)
    assert fast.shape[2] == 3 and np.abs(np.subtract(fast.shape[:2], exact.shape[:2])).max() <= 1, (fast.shape,
                                                                                                  exact.shape)


def _engine_on(msg, preprocess="exact"):
    """An EngineWorker over a real InputBuffer holding ``msg`` as its camera, with a policy stand-in whose prepare
    converts and preprocesses the images as Policy.prepare does (CameraBatch); returns (worker, problems reported,
    worker failures, chunks published)."""
    batch = CameraBatch(["base_0_rgb"], 224, preprocess, threads=1)

    class Policy:
        def prepare(self, obs):
            batch(obs.images)
            return SimpleNamespace(stamp=obs.stamp, state=obs.state)

    now = time.time()
    inputs = InputBuffer(["base_0_rgb"], {"base_0_rgb": "/cam", JOINT_STATES: "/js"}, JOINTS, 10.0,
                         reduce_for=batch.reduced_decode_size)
    msg.header.stamp = sec_to_stamp(now)
    inputs.store("base_0_rgb", msg)
    joints = JointState(name=JOINTS, position=[0.0, 0.1, 0.2])
    joints.header.stamp = sec_to_stamp(now)
    inputs.store(JOINT_STATES, joints)
    problems, failures, published = [], [], []
    hooks = EngineHooks(now=time.time, prompt=lambda: "go", enabled=lambda: True,
                        fail=lambda message, waiting=False: problems.append(message), guidance=lambda stamp: {},
                        publish=lambda chunk, **times: published.append(chunk), worker_failed=failures.append,
                        alive=lambda: True)
    return EngineWorker(Policy(), lambda prepared: "chunk", inputs, None, hooks), problems, failures, published


@pytest.mark.parametrize("case", ["corrupt jpeg header", "wide raw image, fast"])
def test_the_engine_reports_what_opencv_refused_as_bad_input(case):
    """OpenCV's errors are no ValueError: the engine worker took them for its own failure and restarted every 0.5 s,
    logging the assertion, with nothing on /diagnostics naming the camera. Now a corrupt header is bad input naming
    the camera, and a valid wide image is used."""
    if case == "corrupt jpeg header":
        worker, problems, failures, published = _engine_on(CompressedImage(format="jpeg",
                                                                           data=jpeg_claiming(65000, 65000)))
    else:
        worker, problems, failures, published = _engine_on(rgb_to_image(pattern(2000, 4, 0.0, 0)), "fast")
    worker.start()
    try:
        assert wait_for(lambda: problems or failures or published, 10)
        time.sleep(0.2)
    finally:
        worker.stop(1.0)
    assert failures == [], failures
    if case == "corrupt jpeg header":
        assert problems and "camera 'base_0_rgb': compressed image" in problems[0] and published == [], problems
    else:
        assert problems == [] and published, problems
