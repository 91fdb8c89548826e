"""Checkpoint loading: openpi layout round trip, dtypes, and clear errors for every kind of bad file."""
import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from turbopi_ros.model.checkpoint import (CheckpointError, load_model, openpi_state_dict, random_model,
                                          save_checkpoint)
from turbopi_ros.model.config import ModelConfig

from engine_helpers import random_inputs, small_config


def _actions(model, cfg, seed=0):
    inputs = random_inputs(cfg, cameras=(True, False, True), valid_tokens=(4,), seed=seed)
    with torch.inference_mode():
        return model.sample_actions(*inputs[:5], noise=inputs[5], num_steps=3)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_openpi_directory_round_trips(tmp_path, variant):
    cfg = small_config(variant)
    model = random_model(cfg, seed=3)
    directory = save_checkpoint(model, tmp_path / "ckpt")
    assert (directory / "model.safetensors").is_file() and (directory / "config.json").is_file()
    loaded = load_model(directory)
    assert loaded.config == cfg
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    assert torch.equal(_actions(model, cfg), _actions(loaded, cfg))


def test_saved_keys_are_openpis(tmp_path, openpi_fixtures):
    """Saving the fixture's model writes exactly the fixture's keys and shapes (q/k/v split back out)."""
    for name in ("pi0", "pi05"):
        model = load_model(openpi_fixtures / f"{name}_tiny.safetensors", config=openpi_fixtures / f"{name}_tiny.json")
        save_checkpoint(model, tmp_path / name)
        ours = {k: list(v.shape) for k, v in load_file(str(tmp_path / name / "model.safetensors")).items()}
        theirs = {}
        for line in (openpi_fixtures / f"keys_{name}.txt").read_text().splitlines():
            key, shape = line.split(" ", 1)
            theirs[key] = json.loads(shape)
        unused = {k for k in theirs if k.endswith("lm_head.weight")}
        assert ours == {k: v for k, v in theirs.items() if k not in unused}


def test_openpi_config_json_is_understood(tmp_path, openpi_fixtures):
    """A directory with openpi's own config.json fields (no turbopi extras) loads; variant comes from the keys."""
    d = tmp_path / "pi05_ckpt"
    d.mkdir()
    (d / "model.safetensors").write_bytes((openpi_fixtures / "pi05_tiny.safetensors").read_bytes())
    (d / "config.json").write_text(json.dumps({"action_dim": 32, "action_horizon": 50, "paligemma_variant": "dummy",
                                               "action_expert_variant": "dummy", "precision": "float32"}))
    # openpi's dummy variant has the full vocabulary and SigLIP: the fixture's shrunken ones are named as wrong shapes
    with pytest.raises(CheckpointError, match="embed_tokens.weight: file \\[1024, 64\\], expected \\[257152, 64\\]"):
        load_model(d)
    model = load_model(d, config=openpi_fixtures / "pi05_tiny.json")
    assert model.config.is_pi05


@pytest.mark.parametrize("file_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_load_into_float32(tmp_path, file_dtype):
    cfg = small_config("pi0")
    model = random_model(cfg, seed=5)
    state = {k: v.to(file_dtype).contiguous() for k, v in openpi_state_dict(model).items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    loaded = load_model(tmp_path / "w.safetensors", config=cfg, dtype="float32")
    assert loaded.dtype == torch.float32
    for k, v in openpi_state_dict(loaded).items():
        assert v.dtype == torch.float32 and torch.equal(v, state[k].float()), k


def test_bfloat16_model_keeps_norms_and_heads_in_float32(tmp_path):
    cfg = small_config("pi05")
    model = random_model(cfg, dtype="bfloat16")
    params = dict(model.named_parameters())
    assert params["vlm.layers.0.self_attn.qkv.weight"].dtype == torch.bfloat16
    assert params["expert.layers.0.input_layernorm.dense.weight"].dtype == torch.float32
    assert params["action_out_proj.weight"].dtype == torch.float32
    assert params["vision.embeddings.patch_embedding.weight"].dtype == torch.float32
    fp32 = random_model(cfg, dtype="float32")
    # bf16 compute lands near the float32 answer
    diff = float((_actions(model, cfg) - _actions(fp32, cfg)).abs().max())
    assert diff < 0.1


def _bad_file(tmp_path, cfg, edit):
    state = {k: v.contiguous() for k, v in openpi_state_dict(random_model(cfg)).items()}
    edit(state)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    return path


def test_wrong_shape_is_named(tmp_path):
    cfg = small_config("pi0")
    key = "paligemma_with_expert.gemma_expert.model.layers.1.mlp.up_proj.weight"
    path = _bad_file(tmp_path, cfg, lambda s: s.__setitem__(key, torch.zeros(7, 24)))
    with pytest.raises(CheckpointError, match=rf"wrong shapes: {key}: file \[7, 24\], expected \[40, 24\]"):
        load_model(path, config=cfg)


def test_missing_key_is_named(tmp_path):
    cfg = small_config("pi0")
    key = "paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn.k_proj.weight"
    path = _bad_file(tmp_path, cfg, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=f"missing keys: {key}"):
        load_model(path, config=cfg)


def test_unexpected_key_is_named(tmp_path):
    cfg = small_config("pi05")
    path = _bad_file(tmp_path, cfg, lambda s: s.__setitem__("action_time_bonus.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match="unexpected keys: action_time_bonus.weight"):
        load_model(path, config=cfg)


def test_unused_lm_head_is_accepted(tmp_path):
    cfg = small_config("pi0")
    path = _bad_file(tmp_path, cfg, lambda s: s.__setitem__("paligemma_with_expert.paligemma.lm_head.weight",
                                                             torch.zeros(64, 32)))
    assert load_model(path, config=cfg).config == cfg


def test_variant_mismatch_is_named(tmp_path):
    path = _bad_file(tmp_path, small_config("pi0"), lambda s: None)
    with pytest.raises(CheckpointError, match="holds a pi0 model but the model config says pi05"):
        load_model(path, config=small_config("pi05"))


@pytest.mark.parametrize("suffix", [".pt", ".pkl"])
def test_pickle_files_are_refused_unopened(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps({"a": 1}))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("a pickle was opened"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(CheckpointError, match="refusing to load a pickle file"):
        load_model(path, config=small_config("pi0"))


def test_pickle_disguised_as_safetensors_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, path)  # a torch zip/pickle under the wrong name
    with pytest.raises(CheckpointError, match="not safetensors; refusing to unpickle"):
        load_model(path, config=small_config("pi0"))


def test_directory_with_only_a_pickle_says_so(tmp_path):
    (tmp_path / "model.pt").write_bytes(pickle.dumps(1))
    with pytest.raises(CheckpointError, match=r"no model.safetensors \(found model.pt: pickle files are refused"):
        load_model(tmp_path)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(junk, config=small_config("pi0"))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "nope", config=small_config("pi0"))
    with pytest.raises(CheckpointError, match="needs a model config"):
        load_model(_bad_file(tmp_path, small_config("pi0"), lambda s: None))


def test_config_json_schema(tmp_path, openpi_fixtures):
    for name in ("pi0_tiny", "pi05_tiny"):
        cfg = ModelConfig.from_json(openpi_fixtures / f"{name}.json")
        cfg.to_json(tmp_path / "c.json")
        assert ModelConfig.from_json(tmp_path / "c.json") == cfg
    assert ModelConfig.preset("tiny") == ModelConfig.from_json(openpi_fixtures / "pi0_tiny.json")
    assert ModelConfig.preset("tiny_pi05") == ModelConfig.from_json(openpi_fixtures / "pi05_tiny.json")
    assert ModelConfig.preset("pi05").max_token_len == 200
    with pytest.raises(ValueError, match="unknown model preset 'pi1'"):
        ModelConfig.preset("pi1")
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        ModelConfig.from_dict({**ModelConfig.preset("tiny").to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="variant 'pi1' is not one of"):
        ModelConfig.from_dict({**ModelConfig.preset("tiny").to_dict(), "variant": "pi1"})


def _header_starting_with(tmp_path, cfg, first_bytes: bytes):
    """A valid safetensors file whose 8-byte header length begins with ``first_bytes`` (lengthened via metadata):
    safetensors pads its header to 8 bytes, so 1 file in 32 has a length whose low byte is 0x80."""
    import struct
    state = {k: v.contiguous() for k, v in openpi_state_dict(random_model(cfg)).items()}
    path = tmp_path / "model.safetensors"

    def header_length(pad):
        save_file(state, str(path), metadata={"format": "pt", "note": "x" * pad})
        return struct.unpack("<Q", path.read_bytes()[:8])[0]

    base = header_length(0)
    target = next(n for n in range(base, base + 70000, 8) if struct.pack("<Q", n).startswith(first_bytes))
    for pad in range(target - base - 8, target - base + 8):
        if header_length(pad) == target:
            return path
    raise AssertionError(f"no header length starting with {first_bytes!r}")


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"], ids=["0x80", "PK"])
def test_safetensors_header_length_that_looks_like_a_pickle_loads(tmp_path, first_bytes):
    """A real safetensors file is not refused as a pickle because its header length's bytes read b'\\x80' or 'PK'."""
    cfg = small_config("pi0")
    path = _header_starting_with(tmp_path, cfg, first_bytes)
    assert load_model(path, config=cfg).config == cfg


@pytest.mark.parametrize("header", [b"[1, 2]", b"null", b'"text"', b"7"], ids=["list", "null", "string", "number"])
def test_header_that_is_json_but_not_an_object_is_named(tmp_path, header):
    """A corrupt header that parses as JSON but is no object: a CheckpointError naming the file, not an
    AttributeError (the node would stop with a traceback)."""
    import struct
    header += b" " * (-len(header) % 8)
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))
    with pytest.raises(CheckpointError, match=f"{path}: not a valid safetensors file"):
        load_model(path, config=small_config("pi0"))


@pytest.mark.parametrize("body, expected", [
    ([1, 2], "expected a JSON object"),
    ({"action_dim": 32, "action_horizon": None, "paligemma_variant": "dummy", "action_expert_variant": "dummy"},
     "action_horizon=None, expected an integer"),
    (b"\xff\xfe binary", "not valid JSON")], ids=["list", "null_horizon", "binary"])
def test_config_json_of_the_wrong_form_is_named(tmp_path, body, expected):
    """A config.json that is no object, binary, or has a size that is null: a CheckpointError naming the file (and the
    key), not an AttributeError, TypeError or UnicodeDecodeError."""
    directory = save_checkpoint(random_model(small_config("pi0")), tmp_path / "ckpt")
    (directory / "config.json").write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
    with pytest.raises(CheckpointError, match=f"config.json: .*{expected}"):
        load_model(directory)


def test_openpi_jax_checkpoint_directory_says_to_convert(tmp_path):
    """openpi's released checkpoints are JAX (orbax): params/ and assets/, no model.safetensors."""
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "_METADATA").write_text("{}")
    with pytest.raises(CheckpointError, match=r"no model.safetensors \(found params/: an openpi JAX \(orbax\) "
                                              r"checkpoint; convert it to PyTorch with openpi's "
                                              r"examples/convert_jax_model_to_pytorch.py\)"):
        load_model(tmp_path)
