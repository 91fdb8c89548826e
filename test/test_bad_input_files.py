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
    d = _copy(good, "no_config")
    (d / "config.json").unlink()
    return {"checkpoint": d}


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
    no_config_json: r"no_config: no config.json \(an openpi checkpoint directory has model.safetensors, config.json",
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
