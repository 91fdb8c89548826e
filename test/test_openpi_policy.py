"""End to end against openpi's own Policy: raw robot inputs -> final actions, robot adapters included.

The cases in ../shared/fixtures/openpi_policy (README there) define correct: `turbopi-verify --policy` must reproduce
each within 1e-4 on both engine paths. The rest: the robot adapters against openpi's formulas written out here
independently, the per-config settings, and cases beyond the fixtures (a missing camera, other states and seeds,
pi05_libero from the same sidecar format).
"""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from turbopi_ros.tools import verify
from turbopi_ros.model.checkpoint import load_model, random_model, save_checkpoint
from turbopi_ros.model.config import ModelConfig
from turbopi_ros.policy.action_space import ActionSpace
from turbopi_ros.policy.adapters import ADAPTERS, make_adapter
from turbopi_ros.policy.loading import load_policy
from turbopi_ros.policy.policy import Observation, ObservationError, Policy
from turbopi_ros.policy.rtc_target import PreviousChunk
from turbopi_ros.policy.tokenizer import ByteTokenizer
from turbopi_ros.policy.transforms import NormStats, load_norm_stats, resize_with_pad

CASES = ["aloha_pi0", "droid_pi05", "libero_pi0"]
OUTPUT_DIMS = {"aloha_pi0": 14, "droid_pi05": 8, "libero_pi0": 7}


def _last_err(capsys) -> float:
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("max_abs_err=")
    return float(last.split("=")[1])


@pytest.mark.parametrize("path", ["fast", "reference"])
@pytest.mark.parametrize("name", CASES)
def test_verify_policy_cli_within_tolerance(openpi_policy_fixtures, name, path, capsys):
    rc = verify.main(["--policy", str(openpi_policy_fixtures / f"{name}.npz"), "--path", path])
    err = _last_err(capsys)
    assert err <= 1e-4 and rc == 0


def _copy_case(src_dir: Path, name: str, dst_dir: Path, edit) -> Path:
    """The case's npz and sidecar in dst_dir, the sidecar's paths made absolute, then edit(sidecar)."""
    shutil.copy(src_dir / f"{name}.npz", dst_dir / f"{name}.npz")
    side = json.loads((src_dir / f"{name}.json").read_text())
    m = side["model"]
    m["weights"], m["fixture_json"] = str(src_dir / m["weights"]), str(src_dir / m["fixture_json"])
    side["tokenizer"]["path"] = str(src_dir / side["tokenizer"]["path"])
    side["norm_stats_file"] = str(src_dir / side["norm_stats_file"])
    edit(side)
    (dst_dir / f"{name}.json").write_text(json.dumps(side))
    return dst_dir / f"{name}.npz"


def test_aloha_without_adapt_to_pi_fails_the_case(openpi_policy_fixtures, tmp_path, capsys):
    """The check can fail: the ALOHA case without openpi's joint flips and gripper conversions is far off."""
    case = _copy_case(openpi_policy_fixtures, "aloha_pi0", tmp_path, lambda s: s.update(adapt_to_pi=False))
    rc = verify.main(["--policy", str(case)])
    assert rc == 1 and _last_err(capsys) > 0.1


def test_verify_usage_errors(openpi_policy_fixtures, capsys):
    with pytest.raises(SystemExit) as e:
        verify.main(["--path", "fast"])
    assert e.value.code == 2 and "--weights and --case are required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        verify.main(["--policy", str(openpi_policy_fixtures / "aloha_pi0.npz"), "--case", "x.npz"])
    assert e.value.code == 2 and "--policy takes no --case" in capsys.readouterr().err


def test_verify_policy_without_sidecar_is_a_clear_error(openpi_policy_fixtures, tmp_path, capsys):
    shutil.copy(openpi_policy_fixtures / "libero_pi0.npz", tmp_path / "lonely.npz")
    assert verify.main(["--policy", str(tmp_path / "lonely.npz")]) == 2
    err = capsys.readouterr().err
    assert "the case's JSON sidecar (same stem as the npz)" in err and "lonely.json: file not found" in err, err


@pytest.mark.parametrize("name", CASES)
def test_adapter_defaults_reproduce_the_openpi_config(openpi_policy_fixtures, name):
    """Without the sidecar's model settings and delta mask, the adapter's openpi-config defaults give the same
    policy: horizon, prompt length, state in the prompt, delta mask, and the model's inputs of the case."""
    case = verify.load_policy_case(openpi_policy_fixtures / f"{name}.npz")
    settings = dict(case.settings, delta_mask=None, action_horizon=0, max_token_len=0, discrete_state_input=None)
    policy = load_policy(**settings)
    m = case.sidecar["model"]
    assert policy.config.action_horizon == m["action_horizon"] and policy.config.max_token_len == m["max_token_len"]
    assert policy.discrete_state_input == m["discrete_state_input"]
    mask = case.sidecar["delta_action_mask"]
    assert policy.delta_mask == (None if mask is None else [bool(x) for x in mask])
    prepared = policy.prepare(case.observation)
    images, masks, tokens, token_mask, _ = prepared.inputs
    a = case.arrays
    assert np.array_equal(images[0].permute(0, 2, 3, 1).numpy(), a["model/images"])
    assert masks[0].tolist() == a["model/image_masks"].tolist() == case.sidecar["cameras"]["image_masks"]
    assert tokens[0].tolist() == a["model/tokens"].tolist() and token_mask[0].tolist() == a["model/token_mask"].tolist()
    assert np.allclose(prepared.model_state, a["model/state"], rtol=0, atol=1e-12)
    chunk = policy.run(prepared, noise=case.noise)
    assert np.abs(chunk.actions - case.actions).max() <= 1e-4


# --- beyond the fixtures: same format, other inputs -------------------------------------------------------------------
@pytest.mark.parametrize("name,drop", [("aloha_pi0", "left_wrist_0_rgb"), ("aloha_pi0", "base_0_rgb"),
                                       ("droid_pi05", "left_wrist_0_rgb"), ("libero_pi0", "base_0_rgb")])
def test_a_missing_camera_is_masked(openpi_policy_fixtures, name, drop):
    case = verify.load_policy_case(openpi_policy_fixtures / f"{name}.npz")
    policy = load_policy(**case.settings)
    obs = case.observation
    fewer = Observation(images={k: v for k, v in obs.images.items() if k != drop}, state=obs.state, prompt=obs.prompt)
    prepared = policy.prepare(fewer)
    images, masks = prepared.inputs[:2]
    slot = ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"].index(drop)
    assert not masks[0, slot] and int(masks[0].sum()) == len(fewer.images) > 0
    assert torch.all(images[0, slot] == -1.0)  # openpi's zero image, in [-1, 1]
    chunk = policy.run(prepared, noise=case.noise)
    assert chunk.actions.shape == case.actions.shape and np.all(np.isfinite(chunk.actions))
    assert np.abs(chunk.actions - case.actions).max() > 1e-6  # the camera mattered


@pytest.mark.parametrize("name", CASES)
def test_other_states_and_seeds(openpi_policy_fixtures, name):
    """Other robot states and the policy's own noise: finite, the robot's shape, the same for the same seed."""
    case = verify.load_policy_case(openpi_policy_fixtures / f"{name}.npz")
    rng = np.random.default_rng(11)
    state = case.observation.state + rng.normal(scale=0.05, size=case.observation.state.shape)
    if name == "aloha_pi0":  # the grippers are ALOHA's normalized 0..1
        state[[6, 13]] = np.clip(state[[6, 13]], 0.05, 0.95)
    obs = Observation(images=case.observation.images, state=state, prompt=case.observation.prompt)
    runs = {}
    for seed in (1, 1, 2):
        policy = load_policy(**dict(case.settings, seed=seed))
        runs.setdefault(seed, []).append(policy.infer(obs).actions)
    for actions in runs[1] + runs[2]:
        assert actions.shape == (case.actions.shape[0], OUTPUT_DIMS[name]) and np.all(np.isfinite(actions))
    assert np.array_equal(runs[1][0], runs[1][1])
    assert not np.allclose(runs[1][0], runs[2][0])
    with_noise = load_policy(**case.settings).infer(obs, noise=case.noise).actions
    assert np.abs(with_noise - case.actions).max() > 1e-6  # the state mattered


def test_pi05_libero_from_the_same_sidecar_format(openpi_policy_fixtures, tmp_path, capsys):
    """openpi's pi05_libero (pi0.5, horizon 10, no state in the prompt, no delta transform, quantile norm) as a
    sidecar built from the libero case; the expected actions are composed here from openpi's steps written out
    independently around the engine's reference path, then the CLI must reproduce them."""
    import sentencepiece

    src = openpi_policy_fixtures
    horizon = 10

    def to_pi05(side):
        side["model"].update(variant="pi05", fixture_json=str(src / "../openpi/pi05_tiny.json"),
                             weights=str(src / "openpi_format/pi05_tiny.safetensors"), action_horizon=horizon,
                             max_token_len=200, discrete_state_input=False)
        side.update(delta_action_mask=None, normalization="quantile")

    npz = _copy_case(src, "libero_pi0", tmp_path, to_pi05)
    side = json.loads(npz.with_suffix(".json").read_text())
    arrays = dict(np.load(npz))
    noise = np.random.default_rng(5).normal(size=(1, horizon, 32)).astype(np.float32)

    stats = load_norm_stats(side["norm_stats_file"])
    s, a = stats["state"], stats["actions"]
    norm_state = (arrays["raw/state"] - s.q01) / (s.q99 - s.q01 + 1e-6) * 2.0 - 1.0
    sp = sentencepiece.SentencePieceProcessor(model_file=side["tokenizer"]["path"])
    prompt = str(arrays["raw/prompt"]).strip()
    ids = sp.encode(prompt, add_bos=True) + sp.encode("\n")  # pi0's format: the state is not in the prompt
    tokens = np.zeros(200, np.int64)
    tokens[:len(ids)] = ids
    frames = [resize_with_pad(arrays[f"raw/images/{k}"]) for k in ("agentview_image", "robot0_eye_in_hand_image")]
    images = np.stack(frames + [np.zeros_like(frames[0])]).astype(np.float32) / 255.0 * 2.0 - 1.0
    cfg = ModelConfig.from_json(side["model"]["fixture_json"])
    cfg = ModelConfig.from_dict(dict(cfg.to_dict(), action_horizon=horizon))
    model = load_model(side["model"]["weights"], config=cfg)
    state = np.zeros(32)
    state[:8] = norm_state
    with torch.inference_mode():
        raw = model.sample_actions(torch.from_numpy(images).permute(0, 3, 1, 2)[None],
                                   torch.tensor([[True, True, False]]), torch.from_numpy(tokens)[None],
                                   torch.from_numpy(np.arange(200) < len(ids))[None],
                                   torch.from_numpy(state).float()[None], noise=torch.from_numpy(noise),
                                   num_steps=10, path="reference")[0].double().numpy()
    expected = ((raw[:, :7] + 1.0) / 2.0 * (a.q99[:7] - a.q01[:7] + 1e-6) + a.q01[:7])

    arrays.update(noise=noise, actions=expected)
    np.savez(npz, **arrays)
    for path in ("fast", "reference"):
        assert verify.main(["--policy", str(npz), "--path", path]) == 0
        assert _last_err(capsys) <= 1e-4


# --- the adapters against openpi's formulas ---------------------------------------------------------------------------
def _openpi_gripper_to_angular(v):
    """openpi aloha_policy._gripper_to_angular, element by element."""
    linear = v * (0.05800 - 0.01844) + 0.01844
    x = (0.022 ** 2 + linear ** 2 - 0.036 ** 2) / (2 * 0.022 * linear)
    angle = math.asin(min(1.0, max(-1.0, x)))
    return (angle - 0.5476) / (1.6296 - 0.5476)


def _openpi_gripper_from_angular(v):
    return (v + 0.5476 - (-0.6213)) / (1.4910 - (-0.6213))


FLIP = [1, -1, -1, 1, 1, 1, 1] * 2


def test_aloha_state_and_actions_match_openpi_formulas():
    aloha = make_adapter("aloha")
    rng = np.random.default_rng(0)
    state = rng.uniform(-1, 1, 14)
    state[[6, 13]] = rng.uniform(0.05, 1.0, 2)
    got = aloha.state_in(state)
    want = [FLIP[i] * state[i] for i in range(14)]
    for g in (6, 13):
        want[g] = _openpi_gripper_to_angular(state[g])
    assert np.allclose(got, want, rtol=0, atol=1e-12)
    assert np.array_equal(state, aloha.check_state(state))  # the input is not modified

    actions = rng.normal(size=(5, 32))
    out = aloha.actions_out(actions)
    assert out.shape == (5, 14)
    for t in range(5):
        for i in range(14):
            want = _openpi_gripper_from_angular(actions[t, i]) if i in (6, 13) else FLIP[i] * actions[t, i]
            assert out[t, i] == pytest.approx(want, abs=1e-12)
    # actions_to_model inverts actions_out on the robot's dims (real-time chunking's target relies on it)
    assert np.allclose(aloha.actions_to_model(out), actions[:, :14], rtol=0, atol=1e-12)
    # the two gripper conversions are not inverses of each other (openpi's convention): in then out moves the value
    g = np.array([[0.3] * 14])
    assert not np.isclose(aloha.actions_out(aloha.state_in(g[0])[None])[0, 6], 0.3)


def test_adapt_to_pi_off_and_the_other_robots_pass_values_through():
    rng = np.random.default_rng(1)
    plain = make_adapter("aloha", adapt_to_pi=False)
    state, actions = rng.normal(size=14), rng.normal(size=(4, 32))
    assert np.array_equal(plain.state_in(state), state) and np.array_equal(plain.actions_out(actions),
                                                                           actions[:, :14])
    droid, libero = make_adapter("droid"), make_adapter("libero")
    assert np.array_equal(droid.actions_out(actions), actions[:, :8])
    assert np.array_equal(libero.actions_out(actions), actions[:, :7])
    joints = rng.normal(size=7)
    assert np.array_equal(droid.state_from_parts({"joint_position": joints, "gripper_position": 0.25}),
                          np.append(joints, 0.25))
    with pytest.raises(ValueError, match="state fields \\['gripper_position'\\] missing"):
        droid.state_from_parts({"joint_position": joints})
    with pytest.raises(ValueError, match="expects a state of 8 values"):
        libero.state_in(np.zeros(7))
    assert make_adapter("none") is None


def test_unknown_adapter_names_it_and_the_choices():
    with pytest.raises(ValueError, match=r"'franka'.*\['none', 'aloha', 'droid', 'libero'\]"):
        make_adapter("franka")
    with pytest.raises(ValueError, match=r"robot.adapter 'franka' is unknown"):
        load_policy(checkpoint="random", preset="tiny", robot_adapter="franka")
    assert ADAPTERS == ("none", "aloha", "droid", "libero")


def test_model_settings_come_from_the_adapter_and_are_checked(tmp_path):
    droid = load_policy(checkpoint="random", preset="tiny_pi05", robot_adapter="droid")
    assert (droid.config.action_horizon, droid.config.max_token_len, droid.discrete_state_input) == (15, 200, True)
    assert droid.action_dims == 8 and droid.delta_mask is None
    libero05 = load_policy(checkpoint="random", preset="tiny_pi05", robot_adapter="libero")
    assert (libero05.config.action_horizon, libero05.discrete_state_input) == (10, False)
    aloha = load_policy(checkpoint="random", preset="tiny", robot_adapter="aloha", action_horizon=20)
    assert aloha.config.action_horizon == 20 and aloha.delta_mask == [True] * 6 + [False] + [True] * 6 + [False]
    with pytest.raises(ValueError, match="model.discrete_state_input is true but the model is pi0"):
        load_policy(checkpoint="random", preset="tiny", robot_adapter="libero", discrete_state_input=True)
    with pytest.raises(ValueError, match="6 action dims .* robot adapter 'aloha' outputs 14"):
        load_policy(checkpoint="random", preset="tiny", robot_adapter="aloha", action_dims=6)
    with pytest.raises(ValueError, match="model.discrete_state_input must be true, false or auto"):
        load_policy(checkpoint="random", preset="tiny", discrete_state_input="maybe")
    # a checkpoint directory whose config.json states the horizon: a different parameter is refused, naming it
    ckpt = save_checkpoint(random_model(ModelConfig.preset("tiny_pi05"), seed=0), tmp_path / "ckpt")
    tok = tmp_path / "tok.model"
    _sentencepiece(tok)
    with pytest.raises(ValueError, match="model.action_horizon is 15 but the checkpoint's config.json says 50"):
        load_policy(checkpoint=str(ckpt), tokenizer=str(tok), robot_adapter="droid", action_horizon=15,
                    norm_stats="none")
    stated = load_policy(checkpoint=str(ckpt), tokenizer=str(tok), robot_adapter="droid", norm_stats="none")
    assert stated.config.action_horizon == 50  # the checkpoint's own horizon wins over the adapter's default


def _sentencepiece(path: Path):
    import sentencepiece

    corpus = path.parent / "corpus.txt"
    corpus.write_text("\n".join(["pick up the cup", "Task: wipe, State: 1 2 3;", "Action: go"] * 30))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(path.with_suffix("")),
                                             vocab_size=50, model_type="bpe", pad_id=0, eos_id=1, bos_id=2,
                                             unk_id=3, user_defined_symbols=["\n"], add_dummy_prefix=False,
                                             minloglevel=2)


def _aloha_policy(**kwargs):
    model = random_model(ModelConfig.preset("tiny"), seed=1)
    rng = np.random.default_rng(2)
    stats = {k: NormStats(mean=rng.normal(size=14), std=rng.uniform(0.5, 2, 14)) for k in ("state", "actions")}
    return Policy(model, tokenizer=ByteTokenizer(model.config.vlm.vocab_size, 48), norm_stats=stats,
                  robot_adapter=make_adapter("aloha"), seed=3, **kwargs)


def _aloha_obs(images=("base_0_rgb",)):
    rng = np.random.default_rng(4)
    state = rng.uniform(-0.5, 0.5, 14)
    state[[6, 13]] = [0.4, 0.7]
    return Observation(images={k: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for k in images}, state=state,
                       prompt="fold the towel")


def test_adapter_postprocess_is_openpis_order():
    """Unnormalize, add the normalized-then-unnormalized state that entered the model (after the flip), then the
    adapter's output conversion; then the limits clamp in the robot's units."""
    policy = _aloha_policy()
    prepared = policy.prepare(_aloha_obs())
    raw = np.random.default_rng(5).normal(size=(50, 32))
    got, _ = policy.postprocess(raw, prepared.state, prepared.model_state)
    s, a = policy.norm_stats["state"], policy.norm_stats["actions"]
    pi_state = prepared.model_state[:14] * (s.std + 1e-6) + s.mean
    assert np.allclose(pi_state, policy.adapter.state_in(prepared.state), atol=1e-12)
    actions = raw[:, :14] * (a.std + 1e-6) + a.mean + np.where(policy.delta_mask, pi_state, 0.0)
    assert np.allclose(got, policy.adapter.actions_out(actions), atol=1e-12)
    assert np.array_equal(policy.postprocess(raw, prepared.state)[0], got)  # model_state recomputed when not given
    clamped = _aloha_policy(lower_limits=[-0.1] * 14, upper_limits=[0.1] * 14).postprocess(raw, prepared.state)
    assert np.all(np.abs(clamped[0]) <= 0.1) and clamped[1] > 0


def test_adapter_refuses_slots_and_states_the_robot_does_not_have():
    droid = Policy(random_model(ModelConfig.preset("tiny"), seed=1), tokenizer=ByteTokenizer(1024, 48),
                   robot_adapter="droid")
    obs = Observation(images={"right_wrist_0_rgb": np.zeros((8, 8, 3), np.uint8)}, state=np.zeros(8), prompt="go")
    with pytest.raises(ObservationError, match="robot adapter 'droid' fills only the model slots"):
        droid.prepare(obs)
    with pytest.raises(ObservationError, match="expects a state of 8 values"):
        droid.prepare(Observation(images={}, state=np.zeros(7), prompt="go"))


def test_real_time_chunking_target_round_trips_through_the_adapter():
    """The guidance target (model space) postprocessed at the new state gives back the chunk being executed."""
    policy = _aloha_policy()
    obs = _aloha_obs()
    prepared = policy.prepare(obs)
    previous, _ = policy.postprocess(np.random.default_rng(6).normal(size=(50, 32)), prepared.state)
    new_state = obs.state + 0.01
    target = policy.guidance(PreviousChunk(previous, 0.0, 50.0), 0.0, new_state, delay_steps=3,
                             execution_horizon=0)
    back, _ = policy.postprocess(target.target, new_state)
    assert np.allclose(back, previous, atol=1e-9)
    chunk = policy.infer(obs, PreviousChunk(previous, 0.0, 50.0), delay_steps=3, execution_horizon=0)
    assert chunk.actions.shape == (50, 14) and chunk.guidance_error is not None


def test_pi05_without_the_state_in_the_prompt():
    """discrete_state_input false (openpi's pi05_libero): pi0's prompt format, the state stays out of the tokens."""
    policy = load_policy(checkpoint="random", preset="tiny_pi05", discrete_state_input="false")
    assert not policy.discrete_state_input

    def tokens(state):
        obs = Observation(images={}, state=np.asarray(state, dtype=np.float64), prompt="wipe")
        return policy.preprocess(obs)[2]

    assert torch.equal(tokens([0.1, 0.2]), tokens([0.9, -0.7]))
    with_state = load_policy(checkpoint="random", preset="tiny_pi05")
    assert with_state.discrete_state_input
    obs = [Observation(images={}, state=np.array(s), prompt="wipe") for s in ([0.1, 0.2], [0.9, -0.7])]
    assert not torch.equal(with_state.preprocess(obs[0])[2], with_state.preprocess(obs[1])[2])


def test_norm_stats_with_an_asset_id(openpi_policy_fixtures, tmp_path, monkeypatch):
    """norm_stats as the assets folder plus the asset id, or as the file inside a folder of that name (relative
    paths too); a file elsewhere is refused, naming the asset id."""
    src = openpi_policy_fixtures / "libero_pi0.assets"
    common = dict(checkpoint="random", preset="tiny", robot_adapter="libero")
    by_folder = load_policy(norm_stats=str(src), asset_id="physical-intelligence/libero", **common)
    monkeypatch.chdir(src)
    by_file = load_policy(norm_stats="physical-intelligence/libero/norm_stats.json",
                                 asset_id="physical-intelligence/libero", **common)
    assert np.array_equal(by_folder.norm_stats["state"].mean, by_file.norm_stats["state"].mean)
    with pytest.raises(ValueError, match="not in a folder named after the asset id 'trossen'"):
        load_policy(norm_stats="physical-intelligence/libero/norm_stats.json", asset_id="trossen", **common)
    with pytest.raises(ValueError, match="asset id 'droid'"):
        load_policy(norm_stats=str(src), asset_id="droid", **common)


def test_a_libero_checkpoint_directory_finds_its_nested_norm_stats(openpi_policy_fixtures, tmp_path):
    """A pi0_libero checkpoint directory as openpi writes it (assets/physical-intelligence/libero/norm_stats.json,
    the asset id being the dataset's repo id) is normalized with those stats with no asset id given, as openpi's
    create_trained_policy does; it used to pass the state and actions through unnormalized, with a warning."""
    ckpt = save_checkpoint(random_model(ModelConfig.preset("tiny"), seed=0), tmp_path / "ckpt")
    shutil.copytree(openpi_policy_fixtures / "libero_pi0.assets", ckpt / "assets")
    policy = load_policy(checkpoint=str(ckpt), tokenizer=str(openpi_policy_fixtures / "tok.model"),
                         robot_adapter="libero")
    expected = load_norm_stats(openpi_policy_fixtures / "libero_pi0.assets" / "physical-intelligence" / "libero")
    assert policy.norm_stats is not None
    for key in ("state", "actions"):
        assert np.array_equal(policy.norm_stats[key].mean, expected[key].mean)
        assert np.array_equal(policy.norm_stats[key].std, expected[key].std)


def test_real_weights_without_norm_stats_are_refused_unless_none_says_so(openpi_policy_fixtures, tmp_path):
    """openpi refuses a checkpoint whose assets hold no norm stats (training/checkpoints.py load_norm_stats); so do
    we, before the weights load, for a checkpoint directory and a .safetensors file alike: the robot would otherwise
    get actions computed from an unnormalized state. model.norm_stats: none runs without, said explicitly."""
    ckpt = save_checkpoint(random_model(ModelConfig.preset("tiny"), seed=0), tmp_path / "ckpt")
    tok = str(openpi_policy_fixtures / "tok.model")
    for checkpoint in (ckpt, ckpt / "model.safetensors"):
        with pytest.raises(ValueError, match=rf"no norm stats for {checkpoint}: .* model.norm_stats .* 'none'"):
            load_policy(checkpoint=str(checkpoint), tokenizer=tok)
    assert load_policy(checkpoint=str(ckpt), tokenizer=tok, norm_stats="none").norm_stats is None
    (ckpt / "assets" / "empty_robot").mkdir(parents=True)  # an asset folder without its norm_stats.json
    with pytest.raises(ValueError, match="no norm stats"):
        load_policy(checkpoint=str(ckpt), tokenizer=tok)


def test_verify_policy_as_a_command(openpi_policy_fixtures):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "turbopi_ros.tools.verify", "--policy",
                          str(openpi_policy_fixtures / "droid_pi05.npz")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("max_abs_err=") and float(last.split("=")[1]) <= 1e-4


@pytest.mark.parametrize("name", ["aloha_pi0", "droid_pi05", "libero_pi0"])
def test_output_transforms_are_openpis_bit_for_bit(openpi_policy_fixtures, name):
    """From the model's float32 actions to the robot's: openpi's Unnormalize, AbsoluteActions and <Robot>Outputs give
    exactly the case's actions. openpi's quantile Unnormalize computes (x + 1) / 2 in the model's float32 before the
    float64 stats scale it (pi0.5: a float32 rounding a float64 one would not make)."""
    case = np.load(openpi_policy_fixtures / f"{name}.npz")
    sidecar = json.loads((openpi_policy_fixtures / f"{name}.json").read_text())
    stats = {k: NormStats(**{s: case[f"norm_stats/{k}/{s}"] for s in ("mean", "std", "q01", "q99")})
             for k in ("state", "actions")}
    variant = "pi05" if name.endswith("pi05") else "pi0"
    config = ModelConfig(variant=variant, action_horizon=sidecar["model"]["action_horizon"])
    space = ActionSpace(config, norm_stats=stats, adapter=make_adapter(sidecar["robot"]))
    raw = case["model/actions"]
    assert raw.dtype == np.float32  # what the model hands back, as Policy.run hands it on
    actions, clamped = space.postprocess(raw, np.asarray(sidecar["state"]["raw"]), case["model/state"])
    assert clamped == 0
    np.testing.assert_array_equal(actions, case["actions"])
