"""The node's model parameters that reach the Policy beyond load_policy's arguments: model.compile compiles the denoise
step with model.cache_dir as inductor's cache (PI0Model.compile_denoise; compiled lazily, at the node's warm-up)."""
import pytest

from turbopi_ros.model.pi0 import PI0Model
from turbopi_ros.ros import params_file
from turbopi_ros.ros.node_params import PARAMETERS, policy_from_params

from ros_helpers import DEMO_PARAMS


@pytest.mark.parametrize("compile_, cache_dir", [(False, ""), (True, ""), (True, "~/inductor")])
def test_model_compile_and_its_cache_dir(monkeypatch, compile_, cache_dir):
    calls = []
    monkeypatch.setattr(PI0Model, "compile_denoise", lambda self, mode=None, cache_dir=None: calls.append(cache_dir))
    p = dict(params_file.load(DEMO_PARAMS), **{"model.compile": compile_, "model.cache_dir": cache_dir})
    policy_from_params(p)
    assert calls == ([cache_dir or None] if compile_ else [])
    assert PARAMETERS["model.compile"].default is False and PARAMETERS["model.cache_dir"].default == ""
