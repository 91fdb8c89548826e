import json

import numpy as np
import pytest

from turbopi_ros.policy import transforms as T


# --- resize_with_pad --------------------------------------------------------------------------------------------------
# An independent numpy model of what openpi's inference pipeline computes: openpi_client.image_tools.resize_with_pad
# = Pillow's BILINEAR resize (libImaging/Resample.c: triangle kernel widened by the downscale factor, coefficients
# normalized in float64 then rounded to 22-bit fixed point; a horizontal pass, rounded and clipped to uint8, then a
# vertical pass), pasted onto zeros at ((W - w) // 2, (H - h) // 2).
_PRECISION_BITS = 22


def _pil_bilinear_matrix(in_size, out_size):
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear filter's support is 1
    k = np.zeros((out_size, in_size), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        x = np.arange(xmin, xmax)
        w = np.maximum(0.0, 1.0 - np.abs((x - center + 0.5) / filterscale))
        if w.sum() != 0.0:
            w = w / w.sum()
        k[xx, xmin:xmax] = np.trunc(np.where(w < 0, -0.5, 0.5) + w * (1 << _PRECISION_BITS)).astype(np.int64)
    return k


def _pil_pass(k, x):  # x: int64 [in, ...] -> uint8 [out, ...]
    acc = np.tensordot(k, x, axes=(1, 0)) + (1 << (_PRECISION_BITS - 1))
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def _openpi_resize_with_pad(img, height, width):
    h, w = img.shape[:2]
    ratio = max(w / width, h / height)
    nh, nw = int(h / ratio), int(w / ratio)
    x = img.astype(np.int64)
    if nw != w:
        x = np.moveaxis(_pil_pass(_pil_bilinear_matrix(w, nw), np.moveaxis(x, 1, 0)), 0, 1).astype(np.int64)
    if nh != h:
        x = _pil_pass(_pil_bilinear_matrix(h, nh), x).astype(np.int64)
    out = np.zeros((height, width, img.shape[2]), dtype=np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top:top + nh, left:left + nw] = x
    return out


@pytest.mark.parametrize("shape", [(480, 640, 3), (720, 1280, 3), (640, 480, 3), (100, 227, 3), (96, 120, 3),
                                   (224, 300, 3), (257, 224, 1)])
def test_resize_with_pad_is_exactly_openpis(shape):
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    out = T.resize_with_pad(img, 224, 224)
    assert out.shape == (224, 224, shape[2]) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, _openpi_resize_with_pad(img, 224, 224))


def test_resize_with_pad_antialiases_where_plain_interpolation_would_alias():
    # columns 0,0,255,255,... halved. Plain bilinear interpolation (OpenCV INTER_LINEAR) samples at 2i + 0.5 and
    # averages the pairs (0, 0) and (255, 255): it keeps 0/255 stripes (aliasing). Pillow's kernel, widened by the
    # factor 2, mixes four columns (1/8, 3/8, 3/8, 1/8) and gives greys.
    cols = np.tile(np.array([0, 0, 255, 255], dtype=np.uint8), 112)  # period 4 -> period 2 after halving
    img = np.repeat(cols[None, :, None], 4, axis=0).repeat(3, axis=2)  # 4 x 448
    out = T.resize_with_pad(img, 2, 224)[:, 2:-2, 0].astype(int)
    assert out.min() > 40 and out.max() < 215  # smoothed towards 127, not 0/255


def test_resize_with_pad_keeps_aspect_and_centres():
    out = T.resize_with_pad(np.full((480, 640, 3), 200, dtype=np.uint8), 224, 224)
    # 640 -> 224 wide, 480 -> 168 high, padded 28 rows above and below
    assert (out[28:196] == 200).all()
    assert (out[:28] == 0).all() and (out[196:] == 0).all()
    out = T.resize_with_pad(np.full((100, 227, 3), 9, dtype=np.uint8), 224, 224)
    rows = np.nonzero(out[:, 100, 0])[0]
    new_h = int(100 / (227 / 224))  # 98: 63 rows above, 63 below; odd remainders go to the bottom
    assert rows.tolist() == list(range((224 - new_h) // 2, (224 - new_h) // 2 + new_h))


def test_resize_is_a_copy_at_the_target_size():
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    out = T.resize_with_pad(img)
    assert np.array_equal(out, img) and out is not img


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 4, 3), dtype=np.float32), "uint8"),
    (np.zeros((4, 4), dtype=np.uint8), r"\[H, W, 3\]"),
    (np.zeros((4, 4, 4), dtype=np.uint8), r"\[H, W, 3\]"),
    (np.zeros((0, 4, 3), dtype=np.uint8), "empty image"),
])
def test_resize_rejects_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        T.resize_with_pad(bad)


def test_image_to_model_is_openpis_formula():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    out = T.image_to_model(img)
    assert out.dtype == np.float32 and out.min() == -1.0 and out.max() == 1.0
    np.testing.assert_array_equal(out, img.astype(np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0))
    with pytest.raises(ValueError, match="uint8"):
        T.image_to_model(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        T.image_to_model(np.zeros((2, 2, 1), dtype=np.uint8))


# --- normalization ----------------------------------------------------------------------------------------------------
STATS = T.NormStats(mean=np.array([1.0, 2.0, -1.0]), std=np.array([0.5, 0.0, 2.0]),
                    q01=np.array([-1.0, 0.0, 5.0]), q99=np.array([3.0, 0.0, 7.0]))


def test_normalize_uses_openpis_epsilons_and_does_not_clip():
    x = np.array([2.0, 2.0, 100.0])
    np.testing.assert_allclose(T.normalize(x, STATS, False), [1 / (0.5 + 1e-6), 0.0, 101 / (2 + 1e-6)], rtol=1e-15)
    np.testing.assert_allclose(T.normalize(x, STATS, True),
                               [3 / (4 + 1e-6) * 2 - 1, 2 / 1e-6 * 2 - 1, 95 / (2 + 1e-6) * 2 - 1], rtol=1e-15)
    assert T.normalize(x, STATS, True)[2] > 90  # far outside [-1, 1]: openpi does not clip
    # stats longer than x: the first len(x) apply
    np.testing.assert_allclose(T.normalize(x[:2], STATS, False), T.normalize(x, STATS, False)[:2])


def test_roundtrip():
    x = np.random.default_rng(3).normal(size=(5, 3))
    for q in (False, True):
        np.testing.assert_allclose(T.unnormalize(T.normalize(x, STATS, q), STATS, q), x, atol=1e-9)


def test_unnormalize_beyond_the_stats_is_exactly_openpis():
    stats = T.NormStats(mean=np.array([1.0]), std=np.array([2.0]), q01=np.array([0.0]), q99=np.array([1.0]))
    a = np.array([[0.5, 7.0, -3.0]])
    # z-score: mean padded with 0 and std with 1, so the extra dims are scaled by (1 + 1e-6)
    np.testing.assert_array_equal(T.unnormalize(a, stats, False),
                                  [[0.5 * (2 + 1e-6) + 1, 7.0 * (1 + 1e-6), -3.0 * (1 + 1e-6)]])
    # quantile: the extra dims are left as they are
    np.testing.assert_array_equal(T.unnormalize(a, stats, True), [[(0.5 + 1) / 2 * (1 + 1e-6), 7.0, -3.0]])


def test_normalization_errors_name_the_problem():
    short = T.NormStats(mean=np.array([1.0]), std=np.array([2.0]))
    with pytest.raises(ValueError, match="3 values but norm stats for only 1"):
        T.normalize(np.zeros(3), short, False)
    with pytest.raises(ValueError, match="quantile normalization needs 'q01' and 'q99'"):
        T.normalize(np.zeros(1), short, True)
    with pytest.raises(ValueError, match="z-score normalization needs 'mean' and 'std'"):
        T.unnormalize(np.zeros(1), T.NormStats(q01=np.zeros(1), q99=np.ones(1)), False)
    with pytest.raises(ValueError, match="2 values but norm stats for 3"):
        T.unnormalize(np.zeros((4, 2)), STATS, True)
    with pytest.raises(ValueError, match="scalar"):
        T.normalize(1.0, STATS, False)


def _write_stats(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body))
    return path


OPENPI_STATS = {"norm_stats": {"state": {"mean": [0, 1], "std": [1, 1], "q01": [-1, -1], "q99": [1, 1]},
                               "actions": {"mean": [0], "std": [2], "q01": None, "q99": None}}}


def test_load_and_find_norm_stats(tmp_path):
    ckpt = tmp_path / "ckpt"
    _write_stats(ckpt / "assets" / "droid" / "norm_stats.json", OPENPI_STATS)
    path = T.find_norm_stats(ckpt)
    assert path == ckpt / "assets" / "droid" / "norm_stats.json"
    stats = T.load_norm_stats(path)
    assert stats["actions"].std.tolist() == [2.0] and stats["actions"].q01 is None
    assert stats["state"].q99.dtype == np.float64
    assert T.load_norm_stats(path.parent)["state"].mean.tolist() == [0.0, 1.0]  # a directory works too
    assert T.find_norm_stats(tmp_path) is None
    _write_stats(ckpt / "assets" / "aloha" / "norm_stats.json", OPENPI_STATS)
    with pytest.raises(ValueError, match=r"several asset ids \['aloha', 'droid'\]"):
        T.find_norm_stats(ckpt)
    assert T.find_norm_stats(ckpt, "aloha").parent.name == "aloha"
    with pytest.raises(ValueError, match=r"libero/norm_stats.json not found .*\['aloha', 'droid'\]"):
        T.find_norm_stats(ckpt, "libero")


def test_find_norm_stats_under_an_asset_id_of_several_folders(tmp_path):
    """openpi's LeRobot configs default the asset id to the dataset's repo id (training/config.py,
    create_base_config: ``asset_id = self.assets.asset_id or repo_id``), so pi0_libero keeps its stats in
    assets/physical-intelligence/libero/: found without an asset id, named by its path under assets/."""
    ckpt = tmp_path / "ckpt"
    nested = ckpt / "assets" / "physical-intelligence" / "libero" / "norm_stats.json"
    _write_stats(nested, OPENPI_STATS)
    _write_stats(ckpt / "assets" / "norm_stats.json", OPENPI_STATS)  # not in an asset id's folder: not a choice
    assert T.find_norm_stats(ckpt) == nested
    assert T.find_norm_stats(ckpt, "physical-intelligence/libero") == nested
    _write_stats(ckpt / "assets" / "droid" / "norm_stats.json", OPENPI_STATS)
    with pytest.raises(ValueError, match=r"several asset ids \['droid', 'physical-intelligence/libero'\]"):
        T.find_norm_stats(ckpt)


@pytest.mark.parametrize("body, match", [
    ({"state": {"mean": [0], "std": [1]}}, "expected"),
    ({"norm_stats": {"state": {"mean": [0], "std": [1]}}}, "expected"),
    ({"norm_stats": {"state": {"mean": [0, "x"], "std": [1, 1]}, "actions": {"mean": [0], "std": [1]}}},
     r"\[state\]: 'mean' must be a list of numbers"),
    ({"norm_stats": {"state": {"mean": [0, 1], "std": [1]}, "actions": {"mean": [0], "std": [1]}}},
     "'mean' has 2 values but 'std' has 1"),
    ({"norm_stats": {"state": {"mean": [0]}, "actions": {"mean": [0], "std": [1]}}}, "given together"),
    ({"norm_stats": {"state": {"mean": [0], "std": [1]}, "actions": {"mean": [float("nan")], "std": [1]}}},
     r"\[actions\]: 'mean' must be a non-empty, finite"),
    ({"norm_stats": {"state": {"mean": [0], "std": [1]}, "actions": [1, 2]}}, r"\[actions\]: expected an object"),
])
def test_bad_norm_stats_files(tmp_path, body, match):
    with pytest.raises(ValueError, match=match):
        T.load_norm_stats(_write_stats(tmp_path / "norm_stats.json", body))


def test_missing_and_broken_norm_stats_files(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        T.load_norm_stats(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        T.load_norm_stats(tmp_path / "broken.json")


# --- padding and action spaces ----------------------------------------------------------------------------------------
def test_pad_to_dim():
    assert T.pad_to_dim(np.ones(3), 5).tolist() == [1, 1, 1, 0, 0]
    assert T.pad_to_dim(np.ones((2, 1)), 2, value=7.0).tolist() == [[1, 7], [1, 7]]
    x = np.ones(5)
    assert T.pad_to_dim(x, 5) is x
    with pytest.raises(ValueError, match="6 values do not fit the model's 5 dims"):
        T.pad_to_dim(np.ones(6), 5)


def test_make_bool_mask_is_openpis():
    assert T.make_bool_mask(2, -2, 2) == (True, True, False, False, True, True)
    assert T.make_bool_mask(6, -1) == (True,) * 6 + (False,)
    assert T.make_bool_mask() == ()


def test_delta_and_absolute_actions():
    state = np.array([1.0, 2.0, 3.0, 4.0])
    actions = np.array([[0.1, 0.2, 0.3, 9.0], [0.4, 0.5, 0.6, 9.0]])
    mask = [True, False, True]  # shorter than the actions: dim 3 is untouched
    absolute = T.absolute_actions(actions, state, mask)
    np.testing.assert_allclose(absolute, [[1.1, 0.2, 3.3, 9.0], [1.4, 0.5, 3.6, 9.0]])
    np.testing.assert_allclose(T.delta_actions(absolute, state, mask), actions)
    assert actions[0, 0] == 0.1  # inputs are not modified
    np.testing.assert_array_equal(T.absolute_actions(actions, state, []), actions)


@pytest.mark.parametrize("actions, state, mask, match", [
    (np.zeros((2, 2)), np.zeros(4), [True] * 3, r"actions must be \[H, D\] with D >= 3"),
    (np.zeros(4), np.zeros(4), [True], r"actions must be \[H, D\]"),
    (np.zeros((2, 4)), np.zeros(2), [True] * 3, "state must be a vector of at least 3"),
    (np.zeros((2, 4)), np.zeros(4), [1, 0], "mask must be a 1-D sequence of bools"),
])
def test_delta_action_errors(actions, state, mask, match):
    with pytest.raises(ValueError, match=match):
        T.absolute_actions(actions, state, mask)


def test_several_asset_ids_name_the_files_model_norm_stats_takes(tmp_path):
    """The node has no asset id parameter: 'name one (model.norm_stats)' with an asset id as the value
    (model.norm_stats: aloha) was refused as a missing file. The error names each norm_stats.json to set instead,
    and each of them loads."""
    ckpt = tmp_path / "ckpt"
    for asset in ("aloha", "droid"):
        _write_stats(ckpt / "assets" / asset / "norm_stats.json", OPENPI_STATS)
    with pytest.raises(ValueError) as e:
        T.find_norm_stats(ckpt)
    named = [ckpt / "assets" / asset / "norm_stats.json" for asset in ("aloha", "droid")]
    assert all(str(path) in str(e.value) for path in named), str(e.value)
    assert "model.norm_stats" in str(e.value)
    assert all(T.load_norm_stats(path) for path in named)
