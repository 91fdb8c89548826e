"""Checkpoints as openpi's converter writes them: ``safetensors.torch.save_model`` on a model whose PaliGemma
embed_tokens and lm_head are one tied tensor keeps only ``lm_head`` and records the tie in the file's metadata.
Both paths must still match openpi's actions on such a file, for pi0 and pi0.5."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from turbopi_ros.model.checkpoint import TIED_PAIRS, load_model
from turbopi_ros.model.config import ModelConfig
from turbopi_ros.tools.verify import main as verify_main

EMBED, HEAD = TIED_PAIRS[0]


def module_with_openpi_names(state):
    """An nn.Module tree with a parameter at every openpi key, PaliGemma's embed_tokens and lm_head really tied
    (one Parameter under two names, as in openpi's PI0Pytorch)."""
    root = nn.Module()
    for key, tensor in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        module.register_parameter(leaf, nn.Parameter(tensor.float().clone(), requires_grad=False))
    head_owner = root.get_submodule(HEAD.rsplit(".", 1)[0])
    head_owner.weight = root.get_submodule(EMBED.rsplit(".", 1)[0]).weight
    return root


@pytest.fixture(scope="module", params=["pi0", "pi05"])
def converter_file(request, openpi_fixtures, tmp_path_factory):
    name = request.param
    state = load_file(str(openpi_fixtures / f"{name}_tiny.safetensors"))
    assert torch.equal(state[EMBED], state[HEAD]), "the fixture stores the tied pair with equal values"
    path = tmp_path_factory.mktemp(name) / "model.safetensors"
    save_model(module_with_openpi_names(state), str(path))
    return name, path


def test_save_model_drops_embed_tokens_and_records_it(converter_file):
    _, path = converter_file
    with safe_open(str(path), framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    assert HEAD in keys and EMBED not in keys
    assert metadata[EMBED] == HEAD


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_turbopi_verify_passes_on_the_converter_format(converter_file, openpi_fixtures, path, capsys):
    name, weights = converter_file
    code = verify_main(["--config", str(openpi_fixtures / f"{name}_tiny.json"), "--weights", str(weights),
                        "--case", str(openpi_fixtures / f"{name}_case_a.npz"), "--path", path])
    out = capsys.readouterr().out
    assert code == 0, out
    assert float(out.strip().splitlines()[-1].split("=")[1]) <= 1e-4


def test_tie_without_metadata_uses_either_name(tmp_path, openpi_fixtures):
    """A file with only one name of the pair and no metadata (another writer): lm_head alone or embed_tokens alone
    both load, to the same weights."""
    state = load_file(str(openpi_fixtures / "pi0_tiny.safetensors"))
    config = openpi_fixtures / "pi0_tiny.json"
    reference = load_model(openpi_fixtures / "pi0_tiny.safetensors", config=config).state_dict()
    for dropped in (EMBED, HEAD):
        path = tmp_path / f"without_{dropped.split('.')[-2]}.safetensors"
        save_file({k: v for k, v in state.items() if k != dropped}, str(path))
        loaded = load_model(path, config=config).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in reference.items())


def test_lora_variant_names_are_the_plain_sizes():
    base = {"action_dim": 32, "action_horizon": 50, "paligemma_variant": "gemma_2b",
            "action_expert_variant": "gemma_300m", "precision": "bfloat16"}
    lora = dict(base, paligemma_variant="gemma_2b_lora", action_expert_variant="gemma_300m_lora")
    for variant in ("pi0", "pi05"):
        assert ModelConfig.from_openpi(lora, variant) == ModelConfig.from_openpi(base, variant)
    with pytest.raises(ValueError, match="paligemma_variant='gemma_7b'.*gemma_2b_lora"):
        ModelConfig.from_openpi(dict(base, paligemma_variant="gemma_7b"), "pi0")
