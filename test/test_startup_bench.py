"""turbopi-startup-bench (tools/startup_bench.py): the node's start-up in fresh processes, cold and warm; with
model.compile, the warm start compiles nothing: inductor's cache in model.cache_dir serves every graph.
It reads parameter files and builds the policy, making no ROS calls: one distro (the Kilted pass) is enough."""
import shutil
from pathlib import Path

import pytest

from turbopi_ros.ros import params_file
from turbopi_ros.tools import startup_bench

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "config" / "demo_tiny.yaml"
pytestmark = pytest.mark.one_distro


def test_overrides_reach_the_node_config(tmp_path):
    overrides = startup_bench.parse_set(["model.compile=true", "model.num_steps=3", "model.device=cpu"])
    assert overrides == {"model.compile": True, "model.num_steps": 3, "model.device": "cpu"}
    config = params_file.load(startup_bench.params_with(DEMO, overrides, tmp_path / "p.yaml"))
    assert config.model.compile is True and config.model.num_steps == 3
    assert config.prompt == params_file.load(DEMO).prompt  # the rest is the file's
    with pytest.raises(ValueError, match="NAME=VALUE"):
        startup_bench.parse_set(["model.compile"])


def test_start_up_phases_without_compile():
    result = startup_bench.bench(DEMO, {}, warm=1)
    cold, warm = result["runs"]
    assert (cold["run"], warm["run"]) == ("cold", "warm")
    for r in (cold, warm):
        assert r["device"] == "cpu" and "warm-up inference" in r["log"] and r["inductor_cache"] == {}
        assert min(r["imports_s"], r["build_s"], r["warm_up_s"]) > 0
        assert r["process_s"] > r["imports_s"] + r["build_s"] + r["warm_up_s"]
    rows = startup_bench.table(result)
    assert rows[3].split()[0] == "cold" and rows[4].split()[0] == "warm" and "machine:" in rows[1]


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile (inductor) on CPU needs a C++ compiler")
def test_compiled_warm_start_loads_every_graph_from_the_cache_dir():
    """Cold: inductor compiles (a cache miss) into the fresh model.cache_dir; warm, a new process with the same
    directory: every compiled graph is a cache hit, none is compiled again."""
    result = startup_bench.bench(DEMO, {"model.compile": True, "model.num_steps": 2}, warm=1)
    cold, warm = result["runs"]
    assert cold["inductor_cache_dir"] == warm["inductor_cache_dir"] != ""
    assert cold["inductor_cache"].get("fxgraph_cache_miss", 0) >= 1
    assert warm["inductor_cache"].get("fxgraph_cache_miss", 0) == 0
    assert warm["inductor_cache"].get("fxgraph_cache_hit", 0) >= 1
