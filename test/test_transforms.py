import json

import numpy as np
import pytest

from turbopi_ros.policy import transforms as T


def test_resize_with_pad_keeps_aspect_and_centres():
    img = np.full((480, 640, 3), 200, dtype=np.uint8)
    out = T.resize_with_pad(img, 224, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # 640 -> 224 wide, 480 -> 168 high, padded 28 rows above and below
    assert (out[28:196] == 200).all()
    assert (out[:28] == 0).all() and (out[196:] == 0).all()


def test_resize_with_pad_odd_padding_goes_to_the_end():
    out = T.resize_with_pad(np.full((100, 227, 1), 9, dtype=np.uint8), 224, 224)
    rows = np.nonzero(out[:, 100, 0])[0]
    new_h = int(100 / (227 / 224))
    assert len(rows) == new_h and rows[0] == (224 - new_h) // 2


def test_resize_is_identity_at_the_target_size():
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert np.array_equal(T.resize_with_pad(img), img)


def test_downsampling_is_antialiased_like_jax():
    """Halving uses jax.image.resize's triangle kernel widened by 2: weights 1/8, 3/8, 3/8, 1/8."""
    rng = np.random.default_rng(1)
    row = rng.integers(0, 256, 448).astype(np.float64)
    img = np.repeat(row[None, :, None], 2, axis=0).astype(np.uint8)  # 2 x 448 -> 1 x 224
    out = T.resize_with_pad(img, 1, 224)[0, :, 0].astype(np.float64)
    padded = np.concatenate([[0.0], row, [0.0]])
    w = np.array([1, 3, 3, 1]) / 8.0
    expected = np.array([padded[2 * i:2 * i + 4] @ w for i in range(224)])
    expected[0] = row[:3] @ np.array([3, 3, 1]) / 7.0  # at the border the weights renormalize over the image
    expected[-1] = row[-3:] @ np.array([1, 3, 3]) / 7.0
    assert np.abs(out - np.round(expected)).max() <= 1


def test_resize_rejects_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        T.resize_with_pad(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="empty image"):
        T.resize_with_pad(np.zeros((0, 4, 3), dtype=np.uint8))


def test_image_to_model_range():
    out = T.image_to_model(np.array([[[0, 255, 51]]], dtype=np.uint8))
    assert out.dtype == np.float32
    assert np.allclose(out, [[[-1.0, 1.0, 51 / 255 * 2 - 1]]])


def test_zscore_and_quantile_roundtrip_with_openpi_epsilons():
    stats = T.NormStats(mean=np.array([1.0, 2.0]), std=np.array([0.5, 0.0]), q01=np.array([-1.0, 0.0]),
                        q99=np.array([3.0, 0.0]))
    x = np.array([2.0, 2.0])
    assert np.allclose(T.normalize(x, stats, False), [(2 - 1) / (0.5 + 1e-6), 0.0])
    assert np.allclose(T.normalize(x, stats, True), [(2 + 1) / (4 + 1e-6) * 2 - 1, 2 / 1e-6 * 2 - 1])
    for q in (False, True):
        y = T.normalize(np.array([0.3, 2.0]), stats, q)
        assert np.allclose(T.unnormalize(y, stats, q), [0.3, 2.0])


def test_stats_shorter_than_the_actions_leave_the_rest_alone():
    stats = T.NormStats(mean=np.array([1.0]), std=np.array([2.0]), q01=np.array([0.0]), q99=np.array([1.0]))
    a = np.array([[0.5, 7.0, -3.0]])
    assert np.allclose(T.unnormalize(a, stats, False), [[0.5 * (2 + 1e-6) + 1, 7.0, -3.0]])
    assert np.allclose(T.unnormalize(a, stats, True)[0, 1:], [7.0, -3.0])
    with pytest.raises(ValueError, match="stats for only 1"):
        T.normalize(np.zeros(3), stats, False)


def test_load_and_find_norm_stats(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "assets" / "droid").mkdir(parents=True)
    body = {"norm_stats": {"state": {"mean": [0, 1], "std": [1, 1], "q01": [-1, -1], "q99": [1, 1]},
                           "actions": {"mean": [0], "std": [2]}}}
    (ckpt / "assets" / "droid" / "norm_stats.json").write_text(json.dumps(body))
    path = T.find_norm_stats(ckpt)
    stats = T.load_norm_stats(path)
    assert stats["actions"].std.tolist() == [2.0] and stats["actions"].q01 is None
    assert T.find_norm_stats(tmp_path) is None
    (ckpt / "assets" / "aloha").mkdir()
    (ckpt / "assets" / "aloha" / "norm_stats.json").write_text(json.dumps(body))
    with pytest.raises(ValueError, match="several norm stats"):
        T.find_norm_stats(ckpt)
    assert T.find_norm_stats(ckpt, "aloha").parent.name == "aloha"
    with pytest.raises(ValueError, match="asset ids here"):
        T.find_norm_stats(ckpt, "libero")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"norm_stats": {"state": {"mean": [0, "x"]}}}))
    with pytest.raises(ValueError, match="expected"):
        T.load_norm_stats(bad)
    with pytest.raises(ValueError, match="quantile|q01"):
        T.normalize(np.zeros(1), stats["actions"], True)


def test_pad_and_delta_actions():
    assert T.pad_to_dim(np.ones(3), 5).tolist() == [1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="do not fit"):
        T.pad_to_dim(np.ones(6), 5)
    state = np.array([1.0, 2.0, 3.0])
    actions = np.array([[0.1, 0.2, 0.3, 9.0], [0.4, 0.5, 0.6, 9.0]])
    mask = [True, False, True]
    absolute = T.absolute_actions(actions, state, mask)
    assert np.allclose(absolute, [[1.1, 0.2, 3.3, 9.0], [1.4, 0.5, 3.6, 9.0]])
    assert np.allclose(T.delta_actions(absolute, state, mask), actions)
