"""The node's model parameters that reach the Policy beyond load_policy's arguments: model.compile compiles the denoise
step with model.cache_dir as inductor's cache (PI0Model.compile_denoise; compiled lazily, at the node's warm-up)."""
import dataclasses

import pytest

pytest.importorskip("rclpy")

from turbopi_ros.model.pi0 import PI0Model  # noqa: E402
from turbopi_ros.ros import params_file  # noqa: E402
from turbopi_ros.ros.node_params import PARAMETERS, check_model, policy_from_config  # noqa: E402

from ros_helpers import DEMO_PARAMS  # noqa: E402


@pytest.mark.parametrize("compile_, cache_dir", [(False, ""), (True, ""), (True, "~/inductor")])
def test_model_compile_and_its_cache_dir(monkeypatch, compile_, cache_dir):
    calls = []
    monkeypatch.setattr(PI0Model, "compile_denoise", lambda self, mode=None, cache_dir=None: calls.append(cache_dir))
    config = params_file.load(DEMO_PARAMS)
    policy_from_config(dataclasses.replace(config, model=dataclasses.replace(config.model, compile=compile_,
                                                                             cache_dir=cache_dir)))
    assert calls == ([cache_dir or None] if compile_ else [])
    assert PARAMETERS["model.compile"].default is False and PARAMETERS["model.cache_dir"].default == ""


@pytest.mark.parametrize("fused", [False, True])
def test_model_fused_switches_the_models_kernels(fused):
    config = params_file.load(DEMO_PARAMS)
    policy = policy_from_config(dataclasses.replace(config, model=dataclasses.replace(config.model, fused=fused)))
    assert policy.model.fused is fused and policy.model.vision.fused is fused
    assert PARAMETERS["model.fused"].default is False


@pytest.mark.parametrize("few_rows", [False, True])
def test_model_few_rows_matmul_switches_the_fused_denoises_matmuls(few_rows):
    """model.few_rows_matmul (with model.fused): PI0Model.few_rows_matmul, which sends the fused denoise's matmuls
    through few_rows_matmul.py; on CPU its ops are F.linear and add_rms_norm. Without model.fused it is refused."""
    config = params_file.load(DEMO_PARAMS)
    policy = policy_from_config(dataclasses.replace(config, model=dataclasses.replace(
        config.model, fused=True, few_rows_matmul=few_rows)))
    assert policy.model.fused and policy.model.few_rows_matmul is few_rows
    assert PARAMETERS["model.few_rows_matmul"].default is False


def test_model_pdl_is_refused_without_the_fused_kernels_or_off_a_new_enough_gpu():
    """model.pdl (programmatic dependent launch of the fused kernels): off by default; without model.fused it is
    refused naming both parameters; on this CPU the policy is refused with the reason, and the process's launches
    stay without it."""
    from turbopi_ros.model import fused

    assert PARAMETERS["model.pdl"].default is False
    values = {name: param.default for name, param in PARAMETERS.items()}
    with pytest.raises(ValueError, match="model.pdl launches the fused kernels: set model.fused: true"):
        check_model({**values, "model.pdl": True})
    check_model({**values, "model.pdl": True, "model.fused": True})
    config = params_file.load(DEMO_PARAMS)
    with pytest.raises(ValueError, match="parameter model.pdl: .* needs a CUDA GPU, the model runs on cpu"):
        policy_from_config(dataclasses.replace(config, model=dataclasses.replace(config.model, fused=True, pdl=True)))
    assert not fused.pdl_enabled()


def test_model_dtype_fp8_weights_is_a_choice_refused_where_the_kernels_cannot_run():
    """model.dtype fp8_weights (the expert's weights alone in FP8): declared, and refused on this CPU with the reason
    (on a GPU of compute capability >= 8.9 with Triton it loads: test_fp8.py)."""
    assert "fp8_weights" in PARAMETERS["model.dtype"].choices and "fp8" in PARAMETERS["model.dtype"].choices
    config = params_file.load(DEMO_PARAMS)
    with pytest.raises(ValueError, match="model.dtype fp8_weights needs a CUDA GPU .* device cpu"):
        policy_from_config(dataclasses.replace(config, model=dataclasses.replace(config.model, dtype="fp8_weights")))


def _leaves(config, prefix=""):
    """The dotted attribute paths of a NodeConfig's values."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaves(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def test_node_config_is_the_parameter_table_typed_and_frozen():
    """One attribute per parameter, at the parameter's own dotted path; lists become tuples, floats stay floats; the
    derived values filled in once; nothing can change it."""
    config = params_file.load(DEMO_PARAMS)
    leaves = _leaves(config)
    assert set(leaves) == set(PARAMETERS)
    raw = params_file.read_sections(DEMO_PARAMS)
    for name, value in leaves.items():
        assert config.value(name) == value
        expected = raw.get(name, PARAMETERS[name].default)
        assert value == (tuple(expected) if isinstance(expected, list) else expected), name
    assert isinstance(config.control_rate_hz, float) and isinstance(config.action.lower_limits, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.seed = 3
    with pytest.raises(KeyError, match="not a turbopi_node parameter"):
        config.value("model.sede")


def test_node_config_fills_in_and_checks_across_parameters():
    values = {name: param.default for name, param in PARAMETERS.items()}
    values.update({"model.checkpoint": "random", "cameras.names": ["base_0_rgb"], "cameras.topics": ["/cam"],
                   "state.joints": ["a"], "action.joints": ["a"], "action.lower_limits": [-1.0],
                   "action.upper_limits": [1.0], "control_rate_hz": 10.0})
    from turbopi_ros.ros.node_config import NodeConfig

    config = NodeConfig.from_params(values)
    assert config.cameras.compressed == (False,) and config.control_rate_hz == 10.0  # [] = all raw, one per camera
    with pytest.raises(ValueError, match="parameter action.upper_limits has 2 entries for 1 action.joints"):
        NodeConfig.from_params(dict(values, **{"action.upper_limits": [1.0, 2.0]}))
    joints = list("abcdefghijklmn")  # ALOHA's 14
    aloha = dict(values, **{"robot.adapter": "aloha", "cameras.names": ["cam_high"], "state.joints": joints,
                            "action.joints": joints, "action.lower_limits": [-1.0] * 14,
                            "action.upper_limits": [1.0] * 14})
    assert NodeConfig.from_params(aloha).cameras.names == ("base_0_rgb",)  # openpi's camera name: the slot it fills
    with pytest.raises(ValueError, match="have no value"):
        NodeConfig.from_params({k: v for k, v in values.items() if k != "prompt"})
    with pytest.raises(ValueError, match="model.few_rows_matmul runs in the fused denoise: set model.fused: true"):
        NodeConfig.from_params(dict(values, **{"model.few_rows_matmul": True}))
    assert NodeConfig.from_params(dict(values, **{"model.few_rows_matmul": True, "model.fused": True})).model.fused
    assert NodeConfig.from_params(dict(values, **{"action.max_jump": [0.5]})).action.max_jump == (0.5,)
    with pytest.raises(ValueError, match="parameter action.max_jump has 2 entries for 1 action.joints"):
        NodeConfig.from_params(dict(values, **{"action.max_jump": [0.5, 0.5]}))
    with pytest.raises(ValueError, match=r"parameter action.max_jump: \['b'\] are not in state.joints"):
        NodeConfig.from_params(dict(values, **{"action.joints": ["b"], "action.max_jump": [0.5]}))


def test_a_delta_mask_longer_than_the_state_is_refused_at_start():
    """Without a robot adapter, action.delta_mask adds the state of the same index to each action it marks: a mask
    with more entries than state.joints is refused when the policy is built, naming both parameters, instead of every
    observation being refused while the node runs."""
    config = params_file.load(DEMO_PARAMS)
    assert config.robot.adapter == "none" and len(config.action.joints) == 7, config
    config = dataclasses.replace(config, state=dataclasses.replace(config.state, joints=config.state.joints[:5]))
    with pytest.raises(ValueError, match="action.delta_mask has 6 entries but state.joints only 5"):
        policy_from_config(dataclasses.replace(config, action=dataclasses.replace(
            config.action, delta_mask=[True] * 6)))
    policy = policy_from_config(dataclasses.replace(config, action=dataclasses.replace(
        config.action, delta_mask=[True] * 5)))
    assert policy.actions.delta_mask == [True] * 5
