"""turbopi-bench-preprocess runs end to end on small frames and checks its parity (no timing assertions)."""
import json

import numpy as np
import pytest

pytest.importorskip("sensor_msgs")

from turbopi_ros.tools import bench_preprocess  # noqa: E402


def test_bench_runs_and_reports_parity(tmp_path, capsys):
    out = tmp_path / "prep.json"
    code = bench_preprocess.main(["--width", "96", "--height", "72", "--iters", "2", "--warmup", "0",
                                  "--observations", "1", "--threads", "2,3", "--json", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["parity"] and all(result["parity"].values())
    assert len(result["preprocess"]) == 12 and all(r["n"] == 2 for r in result["preprocess"].values())
    assert result["setup"]["threads"] == {"serial": 1, "parallel x2": 2, "parallel x3": 3}
    assert result["fast_vs_exact"]["actions raw"]["max_abs_diff"] >= 0
    assert len([n for n in result["parity"] if "prepared on arrival" in n]) == 6
    assert set(result["on_arrival"]) >= {"raw: one frame as it arrives", "jpeg: observation taken, parallel x3"}
    out = capsys.readouterr().out
    assert "raw exact parallel x3" in out and "(f) frames prepared as they arrive" in out
    with pytest.raises(SystemExit):
        bench_preprocess.main(["--threads", "two"])


def test_scenes_are_deterministic_camera_like_frames():
    a, b = bench_preprocess.scene(48, 64, seed=1), bench_preprocess.scene(48, 64, seed=1)
    assert a.dtype == np.uint8 and a.shape == (48, 64, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, bench_preprocess.scene(48, 64, seed=2)) and a.std() > 10
