"""Camera preprocessing: the cameras converted and resized on the thread pool give exactly the serial path's model
inputs (and, in the exact mode, what the code before the pool computed: numpy conversions, openpi's resize_with_pad,
image_to_model); errors raised on a pool thread come out as serially; fast mode; prepare + run = infer."""
import threading

import numpy as np
import pytest
import torch

from turbopi_ros.model.checkpoint import random_model
from turbopi_ros.model.config import ModelConfig
from turbopi_ros.policy.policy import STAGES, Observation, ObservationError, Policy
from turbopi_ros.policy.preprocess import CameraBatch, fast_resize_to_fit, first_pass, reduction_factor, usable_cpus
from turbopi_ros.policy.tokenizer import ByteTokenizer
from turbopi_ros.policy.transforms import fit_size, image_to_model, resize_to_fit, resize_with_pad

KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
# odd sizes, non-4:3, portrait, smaller than the model image, exactly the model image, a wide strip
SIZES = [(480, 640), (241, 323), (100, 227), (640, 360), (97, 131), (224, 224), (60, 500)]


@pytest.fixture(scope="module")
def model():
    return random_model(ModelConfig.preset("tiny"), seed=1)


def _policy(model, **kwargs):
    tok = ByteTokenizer(model.config.vlm.vocab_size, model.config.max_token_len)
    return Policy(model, tokenizer=tok, seed=7, **kwargs)


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    smooth = np.stack([x * 255 // max(w, 1), y * 255 // max(h, 1), (x + y) % 256], axis=-1)
    return np.clip(smooth + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def _obs(images, **kw):
    return Observation(images=images, state=np.array([0.1, -0.2, 0.3]), prompt="pick up the cup", stamp=3.5, **kw)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a[:5], b[:5])) and np.array_equal(a[5], b[5])


# --- exact: parallel == serial == one camera at a time ---------------------------------------------------------------
def _before(msg, compressed):
    """The conversions as they were before OpenCV took them over: numpy channel copies, BGR decode then reversal."""
    import cv2

    if compressed:
        return cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    ch = {"mono8": 1, "rgba8": 4, "bgra8": 4}.get(msg.encoding, 3)
    arr = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, : msg.width * ch]
    arr = arr.reshape(msg.height, msg.width, ch)
    return {"rgb8": arr, "bgr8": arr[:, :, ::-1], "rgba8": arr[:, :, :3], "bgra8": arr[:, :, 2::-1],
            "mono8": np.repeat(arr, 3, axis=2)}[msg.encoding].copy()


@pytest.mark.parametrize("kind", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "jpeg", "png"])
def test_parallel_cameras_are_bit_identical_to_serial_and_to_before(model, kind):
    pytest.importorskip("sensor_msgs")
    from turbopi_ros.ros.conversions import compressed_to_rgb, image_to_rgb, rgb_to_compressed, rgb_to_image

    compressed = kind in ("jpeg", "png")
    serial, parallel = _policy(model, preprocess_threads=1), _policy(model, preprocess_threads=3)
    for n, (size_a, size_b, size_c) in enumerate(zip(SIZES, SIZES[2:] + SIZES[:2], SIZES[4:] + SIZES[:4])):
        frames = [_image(*size, seed=10 * n + i) for i, size in enumerate((size_a, size_b, size_c))]
        msgs = [rgb_to_compressed(f, kind) if compressed else rgb_to_image(f, kind) for f in frames]
        if kind == "rgb8" and n == 1:  # rows padded in step
            m, f = msgs[0], frames[0]
            rows = np.frombuffer(m.data, np.uint8).reshape(f.shape[0], -1)
            m.data = np.concatenate([rows, np.full((f.shape[0], 5), 9, np.uint8)], axis=1).tobytes()
            m.step += 5
        convert = compressed_to_rgb if compressed else image_to_rgb
        images = {k: (lambda m=m, k=k: convert(m, k)) for k, m in zip(KEYS, msgs)}
        a, b = serial.preprocess(_obs(images)), parallel.preprocess(_obs(images))
        assert _same(a, b), (kind, n)
        before = np.stack([image_to_model(resize_with_pad(_before(m, compressed), 224, 224)) for m in msgs])
        np.testing.assert_array_equal(b[0][0].permute(0, 2, 3, 1).numpy(), before)
        assert b[1].tolist() == [[True, True, True]]


@pytest.mark.parametrize("kind", ["rgb8", "bgr8", "mono8", "jpeg", "png"])
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_cameras_prepared_one_by_one_give_the_batchs_inputs_bit_for_bit(model, kind, mode):
    """Policy.prepare_image (each camera on its own, as the node's frames arrive) then prepare on the ModelImages
    (or callables returning them): the same model inputs as preparing the messages together, serially and on the
    pool."""
    pytest.importorskip("sensor_msgs")
    from turbopi_ros.ros.conversions import compressed_to_rgb, image_to_rgb, rgb_to_compressed, rgb_to_image

    compressed = kind in ("jpeg", "png")
    convert = compressed_to_rgb if compressed else image_to_rgb
    serial = _policy(model, preprocess_threads=1, preprocess_mode=mode)
    parallel = _policy(model, preprocess_threads=3, preprocess_mode=mode)
    for n in range(0, len(SIZES), 2):
        sizes = (SIZES + SIZES)[n:n + 3]
        msgs = [(rgb_to_compressed if compressed else rgb_to_image)(_image(*size, seed=n + i), kind)
                for i, size in enumerate(sizes)]
        sources = {k: (lambda m=m, k=k: convert(m, k)) for k, m in zip(KEYS, msgs)}
        ready = {k: serial.prepare_image(k, source) for k, source in sources.items()}
        together = serial.preprocess(_obs(sources))
        assert _same(together, serial.preprocess(_obs(ready))), (kind, mode, sizes)
        assert _same(together, parallel.preprocess(_obs(ready))), (kind, mode, sizes)
        assert _same(together, parallel.preprocess(_obs({k: (lambda r=r: r) for k, r in ready.items()}))), sizes
        assert _same(together, parallel.preprocess(_obs(dict(sources, left_wrist_0_rgb=ready["left_wrist_0_rgb"]))))


def test_a_prepared_image_of_the_wrong_size_or_slot_is_refused(model):
    from turbopi_ros.policy.preprocess import ModelImage

    policy = _policy(model)
    wrong = r"camera 'base_0_rgb': a preprocessed image must be float32 \[224, 224, 3\], got float32 \[112, 112, 3\]"
    with pytest.raises(ObservationError, match=wrong):
        policy.prepare(_obs({"base_0_rgb": ModelImage(np.zeros((112, 112, 3), np.float32))}))
    with pytest.raises(ObservationError, match=r"camera 'top' is not a model image slot"):
        policy.prepare_image("top", _image(48, 64, seed=2))


def test_absent_cameras_arrays_and_callables_mixed(model):
    img = _image(120, 160, seed=1)
    serial, parallel = _policy(model, preprocess_threads=1), _policy(model, preprocess_threads=3)
    obs = _obs({"base_0_rgb": img, "right_wrist_0_rgb": lambda: img[::-1], "left_wrist_0_rgb": None})
    a, b = serial.preprocess(obs), parallel.preprocess(obs)
    assert _same(a, b) and b[1].tolist() == [[True, False, True]]
    assert (b[0][0, 1] == -1).all()
    np.testing.assert_array_equal(b[0][0, 2].permute(1, 2, 0).numpy(),
                                  image_to_model(resize_with_pad(np.ascontiguousarray(img[::-1]), 224, 224)))


def test_cameras_run_on_the_pool_threads(model):
    seen, barrier = {}, threading.Barrier(3, timeout=10)

    def camera(key):
        def convert():
            seen[key] = threading.current_thread().name
            barrier.wait()  # all three at once: only possible if they run in parallel
            return _image(48, 64, seed=len(key))
        return convert

    _policy(model, preprocess_threads=3).preprocess(_obs({k: camera(k) for k in KEYS}))
    assert len(set(seen.values())) == 3 and sum(n.startswith("turbopi-camera") for n in seen.values()) == 2


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_banded_resize_is_pillows_resize(threads):
    """The parallel exact path cuts Pillow's first pass in bands: the pixels are the plain call's, downscaling and
    upscaling, odd sizes, bands of unequal size, horizontal pass first (rows) and vertical first (columns)."""
    sizes = SIZES + [(1000, 50), (130, 2000), (720, 1280), (129, 129), (200, 150), (128, 300), (333, 333),
                     (2000, 130), (900, 300), (1500, 400)]
    serial, parallel = CameraBatch(KEYS, 224, threads=1), CameraBatch(KEYS, 224, threads=threads)
    for n in range(0, len(sizes), 3):
        images = {k: _image(*size, seed=n + j) for j, (k, size) in enumerate(zip(KEYS, sizes[n:n + 3]))}
        a, b = serial(images), parallel(images)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), sizes[n:n + 3]
    parallel.close()


def test_first_pass_is_pillows_order():
    from PIL import Image

    img = _image(900, 300, seed=3)
    plain = np.asarray(Image.fromarray(img).resize((74, 223), resample=Image.BILINEAR)).astype(int)
    h_first = Image.fromarray(img).resize((74, 900), resample=Image.BILINEAR).resize((74, 223), resample=Image.BILINEAR)
    v_first = Image.fromarray(img).resize((300, 223), resample=Image.BILINEAR)
    v_first = v_first.resize((74, 223), resample=Image.BILINEAR)
    expected = "horizontal" if np.array_equal(np.asarray(h_first), plain) else "vertical"
    assert np.array_equal(np.asarray(h_first if expected == "horizontal" else v_first), plain)
    assert first_pass(900, 300, 223, 74) == expected
    assert first_pass(480, 640, 168, 224) == "horizontal"  # the common camera


def test_default_threads_one_per_camera_at_most_one_per_core(model):
    assert _policy(model).cameras.threads == min(3, usable_cpus())
    assert CameraBatch(KEYS[:1], 224).threads == 1


# --- errors -----------------------------------------------------------------------------------------------------------
def _raises(policy, images):
    with pytest.raises(ValueError) as info:
        policy.preprocess(_obs(images))
    return type(info.value), str(info.value)


def test_errors_on_pool_threads_propagate_as_serially(model):
    pytest.importorskip("sensor_msgs")
    from turbopi_ros.ros.conversions import InputError, image_to_rgb, rgb_to_image

    bad = rgb_to_image(_image(10, 12, seed=0), "rgb8")
    bad.encoding = "16UC1"
    good = _image(30, 40, seed=1)
    cases = [
        {"base_0_rgb": good, "left_wrist_0_rgb": lambda: image_to_rgb(bad, "left_wrist_0_rgb"),
         "right_wrist_0_rgb": good},
        # two failures: the first slot's error, whichever thread finishes first
        {"base_0_rgb": good, "left_wrist_0_rgb": good.astype(np.float32),
         "right_wrist_0_rgb": lambda: image_to_rgb(bad, "right_wrist_0_rgb")},
        {"base_0_rgb": np.zeros((0, 5, 3), np.uint8), "left_wrist_0_rgb": good},
        {"base_0_rgb": good, "right_wrist_0_rgb": lambda: [[1, 2, 3]]},
    ]
    expected = [(InputError, "camera 'left_wrist_0_rgb': encoding 16UC1 not supported"),
                (ObservationError, "camera 'left_wrist_0_rgb': expected uint8 [H, W, 3] RGB, got float32 [30, 40, 3]"),
                (ObservationError, "camera 'base_0_rgb': empty image [0, 5, 3]"),
                (ObservationError, "camera 'right_wrist_0_rgb': expected uint8 [H, W, 3] RGB, got list")]
    serial, parallel = _policy(model, preprocess_threads=1), _policy(model, preprocess_threads=2)
    for images, (kind, message) in zip(cases, expected):
        got = _raises(parallel, images)
        assert got == _raises(serial, images) and got[0] is kind and got[1].startswith(message), got
    assert _same(serial.preprocess(_obs({"base_0_rgb": good})), parallel.preprocess(_obs({"base_0_rgb": good})))


def test_configuration_errors(model):
    with pytest.raises(ValueError, match=r"preprocess mode 'quick' is not one of \['exact', 'fast'\]"):
        _policy(model, preprocess_mode="quick")
    with pytest.raises(ValueError, match="preprocess threads must be at least 1, got 0"):
        _policy(model, preprocess_threads=0)


# --- transforms used by the pool --------------------------------------------------------------------------------------
def test_image_to_model_in_place_is_openpis_formula_for_every_value():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    expected = values.astype(np.float32) / 255.0 * 2.0 - 1.0
    batch = np.full((2, 20, 20, 3), 7.0, dtype=np.float32)
    out = image_to_model(values, out=batch[1, 2:18, 3:19])
    assert out.base is not None and np.array_equal(batch[1, 2:18, 3:19], expected)
    assert np.array_equal(image_to_model(values), expected)
    assert (batch[0] == 7).all() and (batch[1, :2] == 7).all()  # nothing outside the window
    with pytest.raises(ValueError, match="out must be float32"):
        image_to_model(values, out=np.zeros((16, 16, 3), np.float64))


@pytest.mark.parametrize("shape", [(480, 640), (100, 227), (224, 224), (224, 100)])
def test_resize_to_fit_is_resize_with_pad_without_the_padding(shape):
    img = _image(*shape, seed=4)
    fitted = resize_to_fit(img, 224, 224)
    new_h, new_w = fit_size(*shape, 224, 224)
    top, left = (224 - new_h) // 2, (224 - new_w) // 2
    assert fitted.shape == (new_h, new_w, 3)
    np.testing.assert_array_equal(resize_with_pad(img, 224, 224)[top:top + new_h, left:left + new_w], fitted)


# --- fast mode --------------------------------------------------------------------------------------------------------
def test_reduction_factor_keeps_at_least_the_fitted_size():
    assert reduction_factor(480, 640, 224, 224) == 2
    assert reduction_factor(720, 1280, 224, 224) == 4
    assert reduction_factor(2160, 3840, 224, 224) == 8 and reduction_factor(9000, 9000, 224, 224) == 8
    assert reduction_factor(300, 400, 224, 224) == 1 and reduction_factor(100, 100, 224, 224) == 1
    for h, w in SIZES + [(1080, 1920), (447, 449), (448, 448)]:
        r = reduction_factor(h, w, 224, 224)
        fit_h, fit_w = fit_size(h, w, 224, 224)
        assert r == 1 or (h // r >= fit_h and w // r >= fit_w), (h, w, r)


@pytest.mark.parametrize("shape", SIZES)
def test_fast_resize_is_close_to_exact(shape):
    img = _image(*shape, seed=2)
    fast, exact = fast_resize_to_fit(img, 224, 224).astype(int), resize_to_fit(img, 224, 224).astype(int)
    assert fast.shape[2] == 3 and abs(fast.shape[0] - exact.shape[0]) <= 1 and abs(fast.shape[1] - exact.shape[1]) <= 1
    h, w = min(fast.shape[0], exact.shape[0]), min(fast.shape[1], exact.shape[1])
    assert np.abs(fast[:h, :w] - exact[:h, :w]).mean() < 12  # the images carry +-30 levels of pixel noise
    assert not (shape != (224, 224) and np.array_equal(fast, exact)) or reduction_factor(*shape, 224, 224) == 1


def test_fast_mode_parallel_equals_serial_and_decodes_jpeg_reduced(model):
    pytest.importorskip("sensor_msgs")
    from turbopi_ros.ros.conversions import compressed_to_rgb, jpeg_size, rgb_to_compressed

    serial, parallel = (_policy(model, preprocess_mode="fast", preprocess_threads=t) for t in (1, 3))
    assert parallel.reduced_decode_size == (224, 224) and _policy(model).reduced_decode_size is None
    frames = [_image(480, 640, 0), _image(241, 323, 1), _image(720, 1280, 2)]
    msgs = [rgb_to_compressed(f, "jpeg") for f in frames]
    assert [jpeg_size(np.frombuffer(m.data, np.uint8)) for m in msgs] == [(480, 640), (241, 323), (720, 1280)]
    reduced = [compressed_to_rgb(m, "c", reduce_for=parallel.reduced_decode_size) for m in msgs]
    assert [r.shape[:2] for r in reduced] == [(240, 320), (241, 323), (180, 320)]
    images = {k: (lambda m=m, k=k: compressed_to_rgb(m, k, reduce_for=parallel.reduced_decode_size))
              for k, m in zip(KEYS, msgs)}
    a, b = serial.preprocess(_obs(images)), parallel.preprocess(_obs(images))
    assert _same(a, b)
    exact = _policy(model).preprocess(_obs({k: (lambda m=m, k=k: compressed_to_rgb(m, k)) for k, m in zip(KEYS, msgs)}))
    assert (b[0] - exact[0]).abs().mean() < 0.1  # [-1, 1] units: a few grey levels
    png = rgb_to_compressed(frames[0], "png")
    assert jpeg_size(np.frombuffer(png.data, np.uint8)) is None
    assert compressed_to_rgb(png, "c", reduce_for=(224, 224)).shape == (480, 640, 3)  # no reduced decode for PNG
    assert jpeg_size(np.frombuffer(b"\xff\xd8 not really", np.uint8)) is None


# --- prepare / run ----------------------------------------------------------------------------------------------------
def test_prepare_then_run_is_infer_bit_for_bit(model):
    obs = _obs({"base_0_rgb": _image(120, 160, 5), "left_wrist_0_rgb": _image(224, 224, 6)})
    one, two = _policy(model), _policy(model)
    chunk = one.infer(obs)
    prepared = two.prepare(obs)
    assert all(t.device.type == "cpu" for t in prepared.inputs) and prepared.stamp == 3.5
    split = two.run(prepared)
    assert np.array_equal(chunk.actions, split.actions) and split.stamp == chunk.stamp == 3.5
    for c in (chunk, split):
        assert set(c.timings) == set(STAGES) | {"total"} and all(v > 0 for v in c.timings.values())
        assert c.timings["preprocess"] >= prepared.preprocess_s * (c is split)
        assert c.timings["total"] == pytest.approx(sum(c.timings[s] for s in STAGES), rel=1e-6)
    # a prepared observation keeps: the next one prepared in between changes nothing
    p1 = two.prepare(obs)
    two.prepare(_obs({"base_0_rgb": _image(64, 64, 9)}))
    one.generator.manual_seed(11), two.generator.manual_seed(11)
    assert np.array_equal(one.infer(obs).actions, two.run(p1).actions)


def test_camera_batch_close_and_reuse():
    batch = CameraBatch(KEYS, 32)
    imgs = {k: _image(40, 50, i) for i, k in enumerate(KEYS)}
    first, _ = batch(imgs)
    batch.close()
    again, masks = batch(imgs)  # a new pool on demand
    assert np.array_equal(first, again) and masks.all()
    batch.close()
