"""gemma.GemmaMLP's fused gate/up projection: checkpoints with openpi's separate gate_proj / up_proj load into it and
give the unfused math, its state dict keeps those names (as the fused q/k/v keeps q_proj / k_proj / v_proj), and the
reference formulation (two matmuls on row blocks of the fused weight) agrees with the fused one."""
import torch
import torch.nn.functional as F

from turbopi_ros.model.checkpoint import openpi_state_dict, random_model
from turbopi_ros.model.config import GemmaConfig
from turbopi_ros.model.gemma import GemmaLayer, GemmaMLP, maskless_attention, rope_tables

from engine_helpers import small_config

CFG = GemmaConfig(width=32, depth=1, mlp_dim=48, num_heads=4, num_kv_heads=1, head_dim=8, vocab_size=64)


def _separate_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    W, Fd = CFG.width, CFG.mlp_dim
    return {"gate_proj.weight": torch.randn(Fd, W, generator=g) * 0.2,
            "up_proj.weight": torch.randn(Fd, W, generator=g) * 0.2,
            "down_proj.weight": torch.randn(W, Fd, generator=g) * 0.2}


def _unfused(x, sd):
    gate, up = F.linear(x, sd["gate_proj.weight"]), F.linear(x, sd["up_proj.weight"])
    return F.linear(F.gelu(gate, approximate="tanh") * up, sd["down_proj.weight"])


def test_separate_gate_and_up_load_into_the_fused_mlp():
    """openpi's gate_proj.weight and up_proj.weight (strict load) become gate_up's row blocks, gate first; the fused
    MLP and its reference formulation give the separate math (float32, within 1e-6)."""
    sd = _separate_weights()
    mlp = GemmaMLP(CFG)
    mlp.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True)
    assert tuple(mlp.gate_up.weight.shape) == (2 * CFG.mlp_dim, CFG.width) and mlp.gate_up.bias is None
    assert torch.equal(mlp.gate_up.weight, torch.cat([sd["gate_proj.weight"], sd["up_proj.weight"]]))
    x = torch.randn(2, 7, CFG.width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = _unfused(x, sd)
        for fused in (True, False):
            got = mlp(x, fused)
            assert got.shape == want.shape and float((got - want).abs().max()) <= 1e-6, fused
        gate, up = mlp.gate_and_up(x)
        both = mlp.gate_up(x)
        assert torch.equal(gate, both[..., :CFG.mlp_dim]) and torch.equal(up, both[..., CFG.mlp_dim:])
    assert float(want.abs().max()) > 1e-2


def test_state_dict_round_trips_the_checkpoint_names():
    """state_dict() says gate_proj.weight / up_proj.weight (no gate_up), as the attention says q_proj / k_proj /
    v_proj; loading it into a fresh MLP gives the same weights."""
    sd = _separate_weights(2)
    mlp = GemmaMLP(CFG)
    mlp.load_state_dict(sd)
    saved = mlp.state_dict()
    assert set(saved) == set(sd)
    for k, v in sd.items():
        assert torch.equal(saved[k], v), k
    again = GemmaMLP(CFG)
    again.load_state_dict(saved, strict=True)
    assert torch.equal(again.gate_up.weight, mlp.gate_up.weight)
    layer = GemmaLayer(CFG, adaptive=False).state_dict()
    assert {k for k in layer if k.startswith(("mlp.", "self_attn."))} == {
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "self_attn.q_proj.weight",
        "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight"}


def test_whole_model_state_dict_keeps_openpis_mlp_names():
    model = random_model(small_config("pi05"), seed=1)
    keys = set(model.state_dict())
    assert not any("gate_up" in k for k in keys)
    for stack in ("vlm", "expert"):
        for li in range(2):
            assert {f"{stack}.layers.{li}.mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")} <= keys
    theirs = openpi_state_dict(model)
    gate_up = model.expert.layers[1].mlp.gate_up.weight
    F_ = model.config.expert.mlp_dim
    assert torch.equal(theirs["paligemma_with_expert.gemma_expert.model.layers.1.mlp.gate_proj.weight"], gate_up[:F_])
    assert torch.equal(theirs["paligemma_with_expert.gemma_expert.model.layers.1.mlp.up_proj.weight"], gate_up[F_:])


def test_layer_reference_formulation_equals_the_fused_one():
    """GemmaLayer with fused_qkv / fused_gate_up off (openpi's separate matmuls: the reference path) and on: the same
    output within float32 rounding."""
    torch.manual_seed(3)
    layer = GemmaLayer(CFG, adaptive=False)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 5, CFG.width)
    cos, sin = rope_tables(torch.arange(5).expand(2, 5), CFG.head_dim, CFG.rope_theta, torch.float32)

    def attend(q, k, v):
        return maskless_attention(q, k.transpose(1, 2), v.transpose(1, 2))

    with torch.no_grad():
        fused = layer(x, cos, sin, attend)
        separate = layer(x, cos, sin, attend, fused_qkv=False, fused_gate_up=False)
    assert float((fused - separate).abs().max()) <= 1e-5 and float(fused.abs().max()) > 1e-2
