"""Bad files at start-up: a checkpoint that is truncated, of the wrong dtype or a pickle, a directory without
config.json, norm stats with NaN or missing keys, a tokenizer that is not SentencePiece. Each is refused when the policy
loads (load_policy, what the node calls) with a message naming the file and what was wrong, and nothing is ever
unpickled. Through the node (test_bad_input_startup.py): that message after 'cannot start:', exit 1, no traceback."""
import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file

from test_policy import _sentencepiece
from turbopi_ros.model.checkpoint import openpi_state_dict, random_model, save_checkpoint
from turbopi_ros.model.config import ModelConfig
from turbopi_ros.policy.loading import load_policy

STATS = {k: {"mean": [0.0] * 32, "std": [1.0] * 32, "q01": [-1.0] * 32, "q99": [1.0] * 32}
         for k in ("state", "actions")}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A loadable openpi-layout checkpoint of the tiny model (norm stats in assets/robot/) and a SentencePiece model."""
    root = tmp_path_factory.mktemp("files")
    ckpt = save_checkpoint(random_model(ModelConfig.preset("tiny"), seed=1), root / "good")
    (ckpt / "assets" / "robot").mkdir(parents=True)
    (ckpt / "assets" / "robot" / "norm_stats.json").write_text(json.dumps({"norm_stats": STATS}))
    return root, ckpt, _sentencepiece(root)


def _copy(good, name):
    root, ckpt, _ = good
    target = root / name
    if not target.exists():
        shutil.copytree(ckpt, target)
    return target


def truncated(good):
    d = _copy(good, "truncated")
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return {"checkpoint": d}


def int8_weights(good):
    d = _copy(good, "int8")
    state = openpi_state_dict(random_model(ModelConfig.preset("tiny")))
    save_file({k: (v * 100).to(torch.int8).contiguous() for k, v in state.items()}, str(d / "model.safetensors"))
    return {"checkpoint": d}


def pickle_in_place_of_weights(good):
    d = _copy(good, "pickle_named_safetensors")
    torch.save(openpi_state_dict(random_model(ModelConfig.preset("tiny"))), d / "model.safetensors")
    return {"checkpoint": d}


def pickle_checkpoint_directory(good):
    d = _copy(good, "pickle_dir")
    torch.save({"w": torch.zeros(2)}, d / "model.pt")
    (d / "model.safetensors").unlink()
    return {"checkpoint": d}


def pickle_file(good):
    path = good[0] / "model.pkl"
    path.write_bytes(pickle.dumps({"w": [0.0]}))
    return {"checkpoint": path}


def no_config_json(good):
    """No config.json (openpi's train_pytorch.py writes none): model.preset is the model config, here not the
    weights'."""
    d = _copy(good, "no_config")
    (d / "config.json").unlink()
    return {"checkpoint": d, "preset": "tiny_pi05"}


def _stats_file(good, name, body):
    path = good[0] / f"{name}.json"
    path.write_text(json.dumps(body))
    return {"norm_stats": path}


def nan_norm_stats(good):
    return _stats_file(good, "nan_stats", {"norm_stats": {**STATS, "state": {**STATS["state"],
                                                                             "mean": [float("nan")] * 32}}})


def norm_stats_without_actions(good):
    return _stats_file(good, "no_actions", {"norm_stats": {"state": STATS["state"]}})


def norm_stats_without_std(good):
    """pi0 normalizes with z-scores: mean and std are required; quantiles alone are pi0.5's."""
    return _stats_file(good, "no_std", {"norm_stats": {k: {"q01": v["q01"], "q99": v["q99"]} for k, v in
                                                       STATS.items()}})


def tokenizer_not_sentencepiece(good):
    path = good[0] / "tokenizer.model"
    path.write_text("<vocab>\n  pick 1\n  up 2\n</vocab>\n")
    return {"tokenizer": path}


CASES = {
    truncated: r"truncated/model.safetensors: truncated: \d+ bytes, its header describes \d+",
    int8_weights: r"int8/model.safetensors: unsupported dtypes, expected float16/bfloat16/float32: .*\(torch.int8\)",
    pickle_in_place_of_weights: r"model.safetensors: this is a pickle/zip torch file, not safetensors; refusing to "
                                r"unpickle it",
    pickle_checkpoint_directory: r"pickle_dir: no model.safetensors \(found model.pt: pickle files are refused",
    pickle_file: r"model.pkl: refusing to load a pickle file \(.pkl\)",
    no_config_json: r"no_config/model.safetensors holds a pi0 model but the model config says pi05 \(.*no_config has "
                    r"no config.json, .* model.preset 'tiny_pi05' was its model config; set model.preset",
    nan_norm_stats: r"norm stats .*nan_stats.json \[state\]: 'mean' must be a non-empty, finite 1-D list of numbers: "
                    r"NaN or inf at indices \[0, 1, 2, 3, 4, 5, 6, 7\] ...",
    norm_stats_without_actions: r"norm stats .*no_actions.json: expected \{\"norm_stats\"",
    norm_stats_without_std: r"norm stats \[state\]: z-score normalization needs 'mean' and 'std'",
    tokenizer_not_sentencepiece: r"tokenizer .*tokenizer.model: not a SentencePiece model",
}


def _params(good, case) -> dict:
    _, ckpt, sp = good
    params = {"checkpoint": ckpt, "tokenizer": sp, "norm_stats": ""}
    params.update(case(good))
    return {k: str(v) for k, v in params.items()}


def test_the_good_files_load(good):
    policy = load_policy(**_params(good, lambda g: {}), action_dims=7)
    assert policy.norm_stats is not None and policy.tokenizer.vocab_size == 60


@pytest.mark.parametrize("case", list(CASES), ids=[c.__name__ for c in CASES])
def test_refused_when_the_policy_loads(good, case, monkeypatch):
    params = _params(good, case)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("a pickle was opened"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("a pickle was opened"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(ValueError, match=CASES[case]):
        load_policy(**params, action_dims=7)


def test_norm_stats_found_through_a_symlinked_asset_folder(good, tmp_path):
    """assets/<asset_id> as a symlink (norm stats shared between checkpoints) is found like a folder."""
    _, ckpt, sp = good
    d = tmp_path / "linked"
    d.mkdir()
    for name in ("model.safetensors", "config.json"):
        (d / name).symlink_to(ckpt / name)
    (d / "assets").mkdir()
    (d / "assets" / "robot").symlink_to(ckpt / "assets" / "robot", target_is_directory=True)
    policy = load_policy(checkpoint=str(d), tokenizer=str(sp), norm_stats="", action_dims=7)
    assert policy.norm_stats is not None


@pytest.mark.parametrize("name", ["weights", "model.SAFETENSORS", "model.safetensors.1"])
def test_weights_file_of_any_name_needs_norm_stats(good, tmp_path, name):
    """Real weights in a file not named *.safetensors are refused without norm stats, as any real weights are (they
    load: the refusal must not be skipped, or the robot would run on unnormalized state and actions)."""
    _, ckpt, sp = good
    path = tmp_path / name
    path.write_bytes((ckpt / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=f"no norm stats for {path}"):
        load_policy(checkpoint=str(path), tokenizer=str(sp), norm_stats="", action_dims=7)


@pytest.mark.parametrize("value", ["fifty", float("nan"), float("inf")], ids=["word", "NaN", "Infinity"])
def test_config_json_with_a_size_that_is_no_number_is_named(good, tmp_path, value):
    _, ckpt, sp = good
    d = tmp_path / "bad_config"
    shutil.copytree(ckpt, d)
    config = json.loads((d / "config.json").read_text())
    config.pop("turbopi_model_config")
    (d / "config.json").write_text(json.dumps({**config, "paligemma_variant": "dummy", "action_horizon": value}))
    with pytest.raises(ValueError, match=r"bad_config/config.json: openpi config.json: action_horizon=.*, "
                                         r"expected an integer"):
        load_policy(checkpoint=str(d), tokenizer=str(sp), norm_stats="", action_dims=7)


def test_openpi_training_checkpoint_directory_loads_with_the_preset(good, tmp_path, monkeypatch):
    """openpi's scripts/train_pytorch.py writes <step>/ with model.safetensors, optimizer.pt and metadata.pt (pickles,
    never read) and assets/<asset_id>/norm_stats.json, but no config.json: model.preset gives the model config, and
    the norm stats come from the directory's assets/ as for a converted checkpoint."""
    _, ckpt, sp = good
    d = tmp_path / "30000"
    shutil.copytree(ckpt, d)
    (d / "config.json").unlink()
    for name in ("optimizer.pt", "metadata.pt"):
        (d / name).write_bytes(pickle.dumps({"global_step": 30000}))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("a pickle was opened"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    policy = load_policy(checkpoint=str(d), preset="tiny", tokenizer=str(sp), norm_stats="", action_dims=7)
    assert policy.norm_stats is not None and policy.model.config == ModelConfig.preset("tiny")
    with pytest.raises(ValueError, match="holds a pi0 model but the model config says pi05"):
        load_policy(checkpoint=str(d), preset="tiny_pi05", tokenizer=str(sp), norm_stats="", action_dims=7)
