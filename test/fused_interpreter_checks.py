"""Run by test_fused.py in a subprocess with TRITON_INTERPRET=1 (it must be set before Triton is imported): every
Triton kernel of model/fused.py on CPU tensors against its plain-torch twin, then whole tiny models with the kernels
against the plain path. Prints one line per check, ``<name> max_abs_err=<float>``, and exits 1 past a tolerance.
Arguments name the sections to run (``kernels``, ``choice``: kernel_choice.py over the split kernels' configs,
``gelu_gate``, ``whole_model``, ``backward``: fused_grad.py's kernels and the guided denoise, ``memcheck``: the
memory check's own kernels that stray); none: all but ``memcheck``. Every section but ``memcheck`` runs inside
interpreter_memcheck.memcheck(): every load and store of every launch must land on an element of its tensors."""
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from turbopi_ros.model import fused  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from engine_helpers import model_for, random_inputs, small_config  # noqa: E402
from interpreter_memcheck import memcheck  # noqa: E402

failures = []


def check(name, got, want, tol):
    """tol: absolute; None for bfloat16: two rounding steps (2^-6 relative) of the largest value compared (the
    kernels round where the plain path rounds, but a sum rounded once may land one step away); "sixteenth": 2^-4
    relative (gpu_shapes)."""
    err = max(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want))
    if tol is None or tol == "sixteenth":
        tol = (2.0 ** -6 if tol is None else 2.0 ** -4) * max(float(w.float().abs().max()) for w in want)
    print(f"{name} max_abs_err={err:.3g} (tolerance {tol:.3g})", flush=True)
    if not err <= tol:
        failures.append(f"{name}: {err} > {tol}")


def kernels(dtype, tol):
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    tag = str(dtype).split(".")[-1]
    for W in (24, 40):  # not powers of two: the masked tails
        B, L = 2, 3
        x, br, w = rnd(B, L, W), rnd(B, L, W), rnd(W) * 0.1
        mod = rnd(B, 1, 3 * W)  # adaRMS (scale, shift, gate) as chunks of one dense output: strided views
        scale, shift, gate = torch.chunk(mod, 3, dim=-1)
        fused.use_triton_on_cpu(True)
        got = [fused.rms_norm(x, w, None, None), fused.rms_norm(x, None, scale, shift),
               *fused.add_rms_norm(x, br, None, w, None, None), *fused.add_rms_norm(x, br, gate, None, scale, shift),
               fused.gelu_gate(torch.cat([x * 3, br], dim=-1))]
        fused.use_triton_on_cpu(False)
        want = [fused.rms_norm(x, w, None, None), fused.rms_norm(x, None, scale, shift),
                *fused.add_rms_norm(x, br, None, w, None, None), *fused.add_rms_norm(x, br, gate, None, scale, shift),
                fused.gelu_gate(torch.cat([x * 3, br], dim=-1))]
        check(f"norms+gelu_gate {tag} W={W}", got, want, tol)
        ln = torch.nn.LayerNorm(W, eps=1e-6).to(dtype)
        ln.requires_grad_(False)
        ln.weight.copy_(rnd(W))
        ln.bias.copy_(rnd(W))
        outs = []
        for on in (True, False):
            fused.use_triton_on_cpu(on)
            no_branch = (fused._ln_triton(x, None, ln.weight, ln.bias, ln.eps)[1] if on
                         else fused.layer_norm_twin(x, ln.weight, ln.bias, ln.eps))
            outs.append([*fused.add_layer_norm(x, br, ln.weight, ln.bias, ln.eps), no_branch])
        fused.use_triton_on_cpu(False)
        check(f"layer_norm {tag} W={W}", outs[0], outs[1], tol)
    for H, KV, D in ((4, 1, 8), (4, 2, 6)):
        B, L, Lc, start = 2, 3, 9, 4
        qkv = rnd(B, L, (H + 2 * KV) * D)
        pos = torch.arange(start, start + L).expand(B, L)
        from turbopi_ros.model.gemma import rope_tables
        cos, sin = rope_tables(pos, D, 10000.0, dtype)
        outs = []
        for on in (True, False):
            cache = torch.zeros(3, B, KV, Lc, D, dtype=dtype)  # [depth, ...] like the engine's: strided slices
            values = torch.zeros_like(cache)
            fused.use_triton_on_cpu(on)
            q = fused.qkv_rope(qkv, cos, sin, cache[1], values[1], start, H, KV)
            outs.append([q, cache, values])
        fused.use_triton_on_cpu(False)
        check(f"qkv_rope {tag} H={H} KV={KV} D={D}", outs[0], outs[1], tol)


def attention(dtype, tol):
    """split_attention's kernels against SDPA: query rows not a multiple of the row tile, keys with a masked tail,
    one split and several (one of them empty), KV groups, K/V as strided slices of a [depth, B, KV, Lc, D] cache."""
    from turbopi_ros.model import split_attention as sa
    from turbopi_ros.model.gemma import sdpa

    g = torch.Generator().manual_seed(3)
    tag = str(dtype).split(".")[-1]
    for B, G, M, N, D, splits in ((2, 1, 40, 150, 16, 1), (2, 1, 40, 150, 16, 3), (1, 2, 70, 65, 32, 3),
                                  (1, 1, 8, 20, 16, 2)):
        q = (torch.randn(B, G, M, D, generator=g) * 2).to(dtype)
        cache = (torch.randn(3, B, G, N + 7, D, generator=g) * 2).to(dtype)
        k, v = cache[1, :, :, :N], cache[2, :, :, :N]
        scale = D ** -0.5
        fused.use_triton_on_cpu(True)
        got = [sa.launch(q, k, v, scale, splits)]
        if splits == 1:
            got.append(sa.split_attention(q, k, v, scale))  # the op, with its own split count
        fused.use_triton_on_cpu(False)
        want = [sdpa(q, k, v, scale)] * len(got)
        check(f"split_attention {tag} B={B} G={G} M={M} N={N} D={D} splits={splits}", got, want, tol)


def matmul(dtype, tol):
    """few_rows_matmul's kernels against F.linear: rows, columns and K not multiples of their blocks, one K split and
    several (the second kernel adds them), a strided x, and the op on 3-D rows with its own plan."""
    from turbopi_ros.model import few_rows_matmul as fr

    g = torch.Generator().manual_seed(4)
    tag = str(dtype).split(".")[-1]
    for M, K, N, block_k, splits in ((50, 96, 80, 32, 1), (50, 200, 70, 32, 3), (1, 64, 33, 16, 4)):
        x = torch.randn(M, 2 * K, generator=g).to(dtype)[:, :K]  # rows 2K apart
        w = (torch.randn(N, K, generator=g) * K ** -0.5).to(dtype)
        fused.use_triton_on_cpu(True)
        got = fr.launch(x, w, 32, block_k, splits)
        fused.use_triton_on_cpu(False)
        check(f"few_rows_matmul {tag} M={M} K={K} N={N} K step {block_k} splits={splits}", [got], [F.linear(x, w)],
              tol)
    # with a bias (the float32 action heads): in the epilogue with one split, in the sum kernel with several
    for M, K, N, splits in ((50, 96, 40, 1), (50, 200, 70, 3)):
        x = torch.randn(M, K, generator=g).to(dtype)
        w = (torch.randn(N, K, generator=g) * K ** -0.5).to(dtype)
        bias = torch.randn(N, generator=g).to(dtype)
        fused.use_triton_on_cpu(True)
        got = fr.launch(x, w, 32, 32, splits, bias=bias)
        fused.use_triton_on_cpu(False)
        check(f"few_rows_matmul {tag} M={M} K={K} N={N} + bias splits={splits}", [got], [F.linear(x, w, bias)], tol)
    # o_proj / down_proj with the residual add and the norm: K shares summed in the norm's kernel
    for norm, K, splits in (("RMS", 200, 1), ("RMS", 200, 3), ("adaRMS gated", 96, 2), ("gelu_gate RMS", 200, 3),
                            ("gelu_gate adaRMS gated", 96, 1)):
        gated = norm.startswith("gelu_gate")
        a = torch.randn(2, 25, 2 * K if gated else K, generator=g).to(dtype)
        w = (torch.randn(48, K, generator=g) * K ** -0.5).to(dtype)
        x = torch.randn(2, 25, 48, generator=g).to(dtype)
        weight = None if "ada" in norm else (torch.randn(48, generator=g) * 0.1).to(dtype)
        mod = torch.randn(2, 1, 3 * 48, generator=g).to(dtype)
        scale, shift, gate = (mod[..., i * 48:(i + 1) * 48] for i in range(3)) if "ada" in norm else (None,) * 3
        fused.use_triton_on_cpu(True)
        got = fr.launch_add_rms_norm(a.reshape(50, -1), w, x, gate, weight, scale, shift, block_n=32, block_k=32,
                                     splits=splits, gated=gated)
        h = fused.gelu_gate(a) if gated else a  # its kernel
        unfused = fused.add_rms_norm(x, fr.launch(h.reshape(50, K), w, 32, 32, splits).reshape(2, 25, 48), gate,
                                     weight, scale, shift)  # the sum kernel, then the norm's: the same values
        fused.use_triton_on_cpu(False)
        same = all(torch.equal(u, v) for u, v in zip(got, unfused))
        print(f"few_rows_linear_add_rms_norm {tag} {norm} splits={splits}: equal to launch + add_rms_norm: {same}")
        if not same:
            failures.append(f"few_rows_linear_add_rms_norm {tag} {norm} splits={splits} differs from launch + norm")
        want = fused.add_rms_norm(x, F.linear(fused.gelu_gate(a) if gated else a, w), gate, weight, scale,
                                  shift)  # the twins: plain torch
        check(f"few_rows_linear_add_rms_norm {tag} {norm} {list(a.shape)} @ [48, {K}] splits={splits}", got, want,
              tol)
    # qkv with rotary and the K/V cache write: K shares summed in the rotary kernel
    for splits in (1, 3):
        qkv_rope_check(tag, dtype, g, lambda n, k: ((torch.randn(n, k, generator=g) * k ** -0.5).to(dtype), None),
                       splits, tol)
    x = torch.randn(2, 25, 300, generator=g).to(dtype)
    w = (torch.randn(130, 300, generator=g) * 300 ** -0.5).to(dtype)
    fused.use_triton_on_cpu(True)
    assert fr.use_kernels(x, w)
    got = fr.few_rows_linear(x, w)
    fused.use_triton_on_cpu(False)
    check(f"few_rows_linear {tag} {list(x.shape)} @ {list(w.shape)} plan {fr.plan(130, 300, fr.CPU_SMS)}", [got],
          [F.linear(x, w)], tol)
    if dtype != torch.float32:
        fp8_weights(dtype, g)


def fp8_weights(dtype, g):
    """The kernels on FP8 weights (fp8.FP8WeightLinear: e4m3, row scales) against their twin scaled_linear, and the
    fused launches bit for bit equal to launch() then the norm's or the rotary kernel, as with 16-bit weights."""
    from turbopi_ros.model import few_rows_matmul as fr
    from turbopi_ros.model.fp8 import quantize_rows

    tag = f"{str(dtype).split('.')[-1]} fp8 weights"

    def weights(n, k):
        q, s = quantize_rows(torch.randn(n, k, generator=g) * k ** -0.5 * torch.logspace(-1, 1, n)[:, None])
        return q, s[:, 0].contiguous()

    for M, K, N, splits in ((50, 96, 80, 1), (50, 200, 70, 3)):
        x = torch.randn(M, K, generator=g).to(dtype)
        q, s = weights(N, K)
        fused.use_triton_on_cpu(True)
        got = fr.launch(x, q, 32, 32, splits, w_scale=s)
        fused.use_triton_on_cpu(False)
        check(f"few_rows_matmul {tag} M={M} K={K} N={N} splits={splits}", [got], [fr.scaled_linear(x, q, s)], None)
    for norm, K, splits in (("RMS", 200, 3), ("gelu_gate adaRMS gated", 96, 2)):
        gated = norm.startswith("gelu_gate")
        a = torch.randn(2, 25, 2 * K if gated else K, generator=g).to(dtype)
        q, s = weights(48, K)
        x = torch.randn(2, 25, 48, generator=g).to(dtype)
        weight = None if "ada" in norm else (torch.randn(48, generator=g) * 0.1).to(dtype)
        mod = torch.randn(2, 1, 3 * 48, generator=g).to(dtype)
        scale, shift, gate = (mod[..., i * 48:(i + 1) * 48] for i in range(3)) if "ada" in norm else (None,) * 3
        fused.use_triton_on_cpu(True)
        got = fr.launch_add_rms_norm(a.reshape(50, -1), q, x, gate, weight, scale, shift, s, block_n=32, block_k=32,
                                     splits=splits, gated=gated)
        h = fused.gelu_gate(a) if gated else a
        unfused = fused.add_rms_norm(x, fr.launch(h.reshape(50, K), q, 32, 32, splits, w_scale=s).reshape(2, 25, 48),
                                     gate, weight, scale, shift)
        fused.use_triton_on_cpu(False)
        same = all(torch.equal(u, v) for u, v in zip(got, unfused))
        print(f"few_rows_linear_add_rms_norm {tag} {norm} splits={splits}: equal to launch + add_rms_norm: {same}")
        if not same:
            failures.append(f"few_rows_linear_add_rms_norm {tag} {norm} splits={splits} differs from launch + norm")
        want = fused.add_rms_norm(x, fr.scaled_linear(fused.gelu_gate(a) if gated else a, q, s), gate, weight, scale,
                                  shift)
        check(f"few_rows_linear_add_rms_norm {tag} {norm} splits={splits}", got, want, None)
    qkv_rope_check(tag, dtype, g, weights, 3, None)
    x = torch.randn(2, 25, 300, generator=g).to(dtype)
    q, s = weights(130, 300)
    fused.use_triton_on_cpu(True)
    assert fr.use_kernels(x, q) and not fr.use_kernels(x.float(), q)
    got = fr.few_rows_linear(x, q, None, s)
    fused.use_triton_on_cpu(False)
    check(f"few_rows_linear {tag} {list(x.shape)} @ {list(q.shape)}", [got], [fr.scaled_linear(x, q, s)], None)


def qkv_rope_check(tag, dtype, g, weights, splits, tol):
    """few_rows_qkv_rope's kernels (the K shares summed in the rotary kernel, K/V written into a strided cache slice)
    bit for bit equal to launch() then qkv_rope, and within ``tol`` of the twins; ``weights(n, k)`` -> (w, its row
    scales or None: FP8)."""
    from turbopi_ros.model import few_rows_matmul as fr
    from turbopi_ros.model.gemma import rope_tables

    B, L, K, H, KV, D, Lc, start = 2, 25, 96, 2, 1, 16, 40, 7
    y = torch.randn(B, L, K, generator=g).to(dtype)
    w, s = weights((H + 2 * KV) * D, K)
    cos, sin = rope_tables(torch.arange(start, start + L).expand(B, L), D, 10000.0, dtype)
    runs = []
    for how in ("fused", "unfused", "twin"):
        cache, values = torch.zeros(2, B, KV, Lc, D, dtype=dtype), torch.zeros(2, B, KV, Lc, D, dtype=dtype)
        fused.use_triton_on_cpu(how != "twin")
        if how == "fused":
            q = fr.launch_qkv_rope(y, w, cos, sin, cache[1], values[1], start, H, KV, s, block_n=32, block_k=32,
                                   splits=splits)
        else:
            qkv = (fr.launch(y.reshape(B * L, K), w, 32, 32, splits, w_scale=s).reshape(B, L, -1)
                   if how == "unfused" else fr._library_linear(y, w, None, s))
            q = fused.qkv_rope(qkv, cos, sin, cache[1], values[1], start, H, KV)
        runs.append([q, cache, values])
    fused.use_triton_on_cpu(False)
    same = all(torch.equal(u, v) for u, v in zip(runs[0], runs[1]))
    print(f"few_rows_qkv_rope {tag} splits={splits}: equal to launch + qkv_rope: {same}")
    if not same:
        failures.append(f"few_rows_qkv_rope {tag} splits={splits} differs from launch + qkv_rope")
    check(f"few_rows_qkv_rope {tag} [{B}, {L}, {K}] @ [{w.shape[0]}, {K}] H={H} KV={KV} splits={splits}", runs[0],
          runs[2], tol)


def choice(dtype):
    """The ops measuring their candidates (kernel_choice.py) as they do on a GPU, here timed on the host: every
    config of the few-rows ops and split_attention for these shapes runs, matches its library kernel (none
    rejected), and is timed; the op then launches the one chosen. One line per op, and the K/V the rotary op wrote."""
    from turbopi_ros.model import few_rows_matmul as fr, split_attention as sa
    from turbopi_ros.model.gemma import sdpa
    from turbopi_ros.model.kernel_choice import CHOICES

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 25, 300, generator=g).to(dtype)
    w = (torch.randn(130, 300, generator=g) * 300 ** -0.5).to(dtype)
    q = (torch.randn(1, 1, 40, 16, generator=g) * 2).to(dtype)
    k, v = ((torch.randn(1, 1, 150, 16, generator=g) * 2).to(dtype) for _ in range(2))
    res = torch.randn(2, 25, 130, generator=g).to(dtype)
    norm_w = (torch.randn(130, generator=g) * 0.1).to(dtype)
    from turbopi_ros.model.gemma import rope_tables
    w_qkv = (torch.randn(64, 300, generator=g) * 300 ** -0.5).to(dtype)  # 2 heads + 2 KV of 16
    cos, sin = rope_tables(torch.arange(25).expand(2, 25), 16, 10000.0, dtype)
    caches = [torch.zeros(2, 1, 30, 16, dtype=dtype) for _ in range(4)]  # keys, values: the op's, the reference's
    CHOICES.clear()
    CHOICES.time_on_cpu, CHOICES.calls, CHOICES.reps = True, 1, 1
    fused.use_triton_on_cpu(True)
    try:
        runs = [("few_rows_linear", fr.few_rows_linear(x, w), F.linear(x, w), len(fr.candidates(x[0], w))),
                ("few_rows_linear_add_rms_norm",
                 fr.few_rows_linear_add_rms_norm(x, w, res, None, norm_w, None, None, False),
                 fused.add_rms_norm(res, F.linear(x, w), None, norm_w, None, None), len(fr.norm_candidates(x[0], w))),
                ("few_rows_qkv_rope", fr.few_rows_qkv_rope(x, w_qkv, cos, sin, caches[0], caches[1], 0, 2, 1),
                 fused.qkv_rope(F.linear(x, w_qkv), cos, sin, caches[2], caches[3], 0, 2, 1),
                 len(fr.qkv_candidates(x, w_qkv))),
                ("split_attention", sa.split_attention(q, k, v, 0.25), sdpa(q, k, v, 0.25),
                 len(sa.candidates(q, 150, 0.25)))]
    finally:
        fused.use_triton_on_cpu(False)
        CHOICES.time_on_cpu = False
    made = {c.op: c for c in CHOICES.choices()}
    check(f"kernel choice few_rows_qkv_rope {str(dtype).split('.')[-1]}: the K/V it wrote", caches[:2], caches[2:],
          None)
    for op, got, want, count in runs:
        c = made[op]
        if c.rejected or len(c.times_us) != count or c.chosen not in c.times_us:
            failures.append(f"{op}: {c.line()}")
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        check(f"kernel choice {op} {str(dtype).split('.')[-1]} [{c.key}]: {len(c.times_us)} of {count} candidates "
              f"timed, none rejected, chose {c.chosen}", got, want, None)
    CHOICES.clear()


def gelu_gate_layout(dtype, tol):
    """gelu_gate's kernel on the fused gate/up layout (rows of 2F: F gate columns, then F up columns) against its
    twin and against the separate math gelu_tanh(gate) * up: 2-D and 3-D inputs, F with masked tails, F > 1024 (more
    than one column block per row), and a strided view (the op makes it contiguous)."""
    g = torch.Generator().manual_seed(1)
    tag = str(dtype).split(".")[-1]
    for lead, n, strided in (((2, 3), 24, False), ((5,), 40, False), ((3,), 1100, False), ((2, 3), 24, True)):
        gate = (torch.randn(*lead, n, generator=g) * 3).to(dtype)
        up = torch.randn(*lead, n, generator=g).to(dtype)
        gate_up = torch.cat([gate, up], dim=-1)
        if strided:  # the same values, every row 4F apart in memory
            gate_up = torch.cat([gate_up, torch.full_like(gate_up, float("nan"))], dim=-1)[..., :2 * n]
        fused.use_triton_on_cpu(True)
        got = fused.gelu_gate(gate_up)
        fused.use_triton_on_cpu(False)
        want = fused.gelu_gate(gate_up)
        assert got.shape == want.shape == (*lead, n), (got.shape, want.shape)
        separate = F.gelu(gate, approximate="tanh") * up
        check(f"gelu_gate fused layout {tag} {list(gate_up.shape)}{' strided' if strided else ''}", [got, got],
              [want, separate], tol)


def whole_model(variant, tol):
    """head_dim 16: the smallest split_attention takes (it must run here: counted); then with the few-rows matmul too
    (counted)."""
    import dataclasses
    from turbopi_ros.model import few_rows_matmul as fr
    from turbopi_ros.model import split_attention as sa

    cfg = small_config(variant)
    cfg = dataclasses.replace(cfg, vlm=dataclasses.replace(cfg.vlm, head_dim=16),
                              expert=dataclasses.replace(cfg.expert, head_dim=16))
    model = model_for(cfg)
    launches = []
    launch = sa.launch
    sa.launch = lambda *a, **kw: launches.append(a[0].shape) or launch(*a, **kw)
    inputs = random_inputs(cfg, cameras=(True, False, True), valid_tokens=(4,))
    plain = model.sample_actions(*inputs, num_steps=3)
    model.use_fused(True)
    fused.use_triton_on_cpu(True)
    got = model.sample_actions(*inputs, num_steps=3)
    fused.use_triton_on_cpu(False)
    sa.launch = launch
    if not launches:
        failures.append(f"whole model {variant}: split_attention's kernels never ran")
    check(f"whole model {variant} float32 (Triton kernels vs plain; split attention {len(launches)} calls)", [got],
          [plain], tol)
    matmuls, with_norm, with_rope = [], [], []
    launch_matmul, launch_norm, launch_rope = fr.launch, fr.launch_add_rms_norm, fr.launch_qkv_rope
    fr.launch = lambda *a, **kw: matmuls.append(a[0].shape) or launch_matmul(*a, **kw)
    fr.launch_add_rms_norm = lambda *a, **kw: with_norm.append(kw.get("gated", False)) or launch_norm(*a, **kw)
    fr.launch_qkv_rope = lambda *a, **kw: with_rope.append(a[0].shape) or launch_rope(*a, **kw)
    model.use_fused(True, few_rows_matmul=True)
    fused.use_triton_on_cpu(True)
    got = model.sample_actions(*inputs, num_steps=3)
    fused.use_triton_on_cpu(False)
    fr.launch, fr.launch_add_rms_norm, fr.launch_qkv_rope = launch_matmul, launch_norm, launch_rope
    per_layer_step, heads = 3 * cfg.expert.depth, 3 * (2 if variant == "pi05" else 4)  # the action heads a step
    # pi0's state token in the prefix cache too: qkv with rotary in every layer, the rest in all but the last
    state = (cfg.expert.depth - 1, cfg.expert.depth) if variant == "pi0" else (0, 0)
    if (len(matmuls) != per_layer_step + heads + state[0] or len(with_rope) != per_layer_step + state[1]
            or not with_norm.count(False) == with_norm.count(True) == per_layer_step + state[0]):
        failures.append(f"whole model {variant}: {len(matmuls)} few-rows matmuls, {len(with_rope)} with rotary and "
                        f"{len(with_norm)} with the norm ({with_norm.count(True)} gated), not 1, 1 and 2 (1 gated) "
                        "a layer a step, and the action heads (pi0: and the state token's in the prefix)")
    check(f"whole model {variant} float32 few-rows matmul ({len(matmuls)} calls, {len(with_rope)} with rotary, "
          f"{len(with_norm)} with the norm, {with_norm.count(True)} of them with gelu_gate) vs plain", [got], [plain],
          tol)
    fp8_weights_model(model, variant, inputs)


def fp8_weights_model(model, variant, inputs):
    """model.dtype fp8_weights: the expert's weights in FP8, bfloat16 activations; the fused few-rows denoise (every
    expert matmul through the kernels on FP8 weights, counted) against the plain path (their twin)."""
    from turbopi_ros.model import few_rows_matmul as fr
    from turbopi_ros.model.checkpoint import set_dtype
    from turbopi_ros.model.fp8 import quantize_model

    set_dtype(model, torch.bfloat16)
    quantized = quantize_model(model, check_device=False, weights_only=True)
    model.use_fused(False)
    plain = model.sample_actions(*inputs, num_steps=3)
    scaled = []
    first = fr._first
    fr._first = lambda *a, **kw: scaled.append(kw.get("w_scale") is not None) or first(*a, **kw)
    model.use_fused(True, few_rows_matmul=True)
    fused.use_triton_on_cpu(True)
    got = model.sample_actions(*inputs, num_steps=3)
    fused.use_triton_on_cpu(False)
    fr._first = first
    depth = model.config.expert.depth
    # 4 a layer a step, and pi0's state token in the prefix: 4 a layer, the last one's qkv alone (its output unused)
    expected = 4 * 3 * depth + (4 * (depth - 1) + 1 if variant == "pi0" else 0)
    if quantized != 4 * depth or scaled.count(True) != expected:
        failures.append(f"whole model {variant} fp8 weights: {quantized} linears quantized, {scaled.count(True)} "
                        f"kernel launches on FP8 weights, not 4 a layer and {expected}")
    check(f"whole model {variant} bfloat16 fp8 weights, few-rows matmul ({scaled.count(True)} launches on FP8 "
          "weights) vs plain (the twin)", [got], [plain], None)


def backward_kernels(dtype, tol):
    """fused_grad.py's backward kernels against their twins: the norms (plain and adaRMS, with and without the
    gradient of add_rms_norm's sum), gelu_gate (F with a masked tail and F > 1024), qkv_rope (KV 1 and 2, head_dim
    not a power of two, dk and dv as strided views, as autograd hands them over)."""
    from turbopi_ros.model import fused_grad
    from turbopi_ros.model.gemma import rope_tables

    g = torch.Generator().manual_seed(2)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    def both(fn):
        outs = []
        for on in (True, False):
            fused.use_triton_on_cpu(on)
            outs.append(fn())
        fused.use_triton_on_cpu(False)
        return outs

    tag = str(dtype).split(".")[-1]
    for W in (24, 40):
        B, L = 2, 3
        total, dy, d_sum, w = rnd(B, L, W), rnd(B, L, W), rnd(B, L, W), rnd(W) * 0.1
        scale = torch.chunk(rnd(B, 1, 3 * W), 3, dim=-1)[0]
        for name, args in (("rms", (None, w, None)), ("add_rms", (d_sum, w, None)),
                           ("adaRMS", (None, None, scale)), ("add_adaRMS", (d_sum, None, scale))):
            got, want = both(lambda: [fused_grad.rms_norm_backward(total, dy, *args)])
            check(f"rms_norm_backward {name} {tag} W={W}", got, want, tol)
    for lead, n in (((2, 3), 24), ((3,), 1100)):
        gate_up, dy = rnd(*lead, 2 * n) * 2, rnd(*lead, n)
        got, want = both(lambda: [fused_grad.gelu_gate_backward(gate_up, dy)])
        scaled = tol and tol * max(1.0, float(want[0].abs().max()))  # relative: gradients up to ~20 here
        check(f"gelu_gate_backward {tag} {list(gate_up.shape)}", got, want, scaled)
    for H, KV, D in ((4, 1, 8), (4, 2, 6)):
        B, L = 2, 3
        cos, sin = rope_tables(torch.arange(3, 3 + L).expand(B, L), D, 10000.0, dtype)
        dq, dk, dv = rnd(B, L, H, D), rnd(B, L, KV, D).transpose(1, 2), rnd(B, L, KV, D).transpose(1, 2)
        got, want = both(lambda: [fused_grad.qkv_rope_backward(dq, dk, dv, cos, sin, dtype)])
        check(f"qkv_rope_backward {tag} H={H} KV={KV} D={D}", got, want, tol)


def guided(variant, tol):
    """The guided (RTC) denoise through the fused path with every kernel, forward and backward, against the plain."""
    from turbopi_ros.model.rtc import guided_denoise
    from test_rtc import _random_guidance

    cfg = small_config(variant, horizon=8)
    model = model_for(cfg)
    inputs = random_inputs(cfg, cameras=(True, False, True), valid_tokens=(4,))
    guidance = _random_guidance(cfg, seed=3)
    plain = guided_denoise(model, model.encode(*inputs[:5]), inputs[5], guidance, 3)
    model.use_fused(True)
    fused.use_triton_on_cpu(True)
    got = guided_denoise(model, model.encode(*inputs[:5]), inputs[5], guidance, 3)
    fused.use_triton_on_cpu(False)
    check(f"guided denoise {variant} float32 (Triton kernels vs plain)", [got], [plain], tol)


def gpu_shapes(sms):
    """The launches a GPU with ``sms`` SMs makes at the full-size expert's shapes (openpi's gemma_300m: width 1024, 8
    heads and 1 KV head of 256, MLP 4096; 50 action rows; bfloat16), every config kernel_choice measures there, each
    against its twin under the memory check: qkv with rotary into a deeper cache, o_proj and
    down_proj (gated) with the norm (RMS, adaRMS), gate_up, the float32 action heads with their bias (IEEE), the
    matmuls again on FP8 weights (model.dtype fp8_weights: the first and last config of each), and the denoise's
    attention (8 heads x 50 rows, one KV group) over pi0's 3-camera keys (839) and pi0.5's (898), K/V
    slices of a 1024-row cache. The tiny checks cover the masked tails; these the block, split and head sizes the
    report will launch. bfloat16 within a sixteenth of the largest value (a wrong index moves values by about their
    size, a lost one of 32 K shares by about a sixth; the twins round at other places, up to 3 steps apart here),
    float32 1e-5."""
    from turbopi_ros.model import few_rows_matmul as fr, split_attention as sa
    from turbopi_ros.model.config import PRESETS
    from turbopi_ros.model.gemma import rope_tables, sdpa

    g = torch.Generator().manual_seed(8)
    e = PRESETS["pi0"].expert
    W, F_, H, KV, D, M, A = e.width, e.mlp_dim, e.num_heads, e.num_kv_heads, e.head_dim, 50, PRESETS["pi0"].action_dim
    bf16 = torch.bfloat16
    BF16 = "sixteenth"

    def rnd(*shape, scale=1.0, dtype=bf16):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    def configs(n, k, dtype=bf16):
        return fr.configs(n, k, sms, fr.FLOAT32_BLOCK_K if dtype == torch.float32 else fr.BLOCK_K).items()

    # qkv with rotary, K/V into the cache at the actions' place
    y, w = rnd(1, M, W), rnd((H + 2 * KV) * D, W, scale=W ** -0.5)
    start, depth = 839 - M, 1024
    cos, sin = rope_tables(torch.arange(start, start + M)[None], D, e.rope_theta, bf16)
    want_cache = torch.zeros(2, 1, KV, depth, D, dtype=bf16)
    want_q = fused.qkv_rope(F.linear(y, w), cos, sin, want_cache[0], want_cache[1], start, H, KV)
    for name, (bn, bk, splits) in configs(w.shape[0], W):
        cache = torch.zeros(2, 1, KV, depth, D, dtype=bf16)
        fused.use_triton_on_cpu(True)
        q = fr.launch_qkv_rope(y, w, cos, sin, cache[0], cache[1], start, H, KV, block_n=bn, block_k=bk,
                               splits=splits)
        fused.use_triton_on_cpu(False)
        check(f"{sms} SMs: qkv_rope [{M}, {W}] @ {list(w.shape)} {name}", [q, cache], [want_q, want_cache], BF16)
    # o_proj (RMS; adaRMS gated) and down_proj (gelu_gate in its loads) with the residual add and the norm
    x = rnd(1, M, W)
    mod = rnd(1, 1, 3 * W)
    for op, K, gated in (("o_proj", H * D, False), ("down_proj", F_, True)):
        a, w = rnd(M, 2 * K if gated else K), rnd(W, K, scale=K ** -0.5)
        for norm in ("RMS", "adaRMS gated"):
            ada = norm != "RMS"
            weight = None if ada else rnd(W, scale=0.1)
            scale, shift, gate = (mod[..., i * W:(i + 1) * W] for i in range(3)) if ada else (None,) * 3
            branch = F.linear(fused.gelu_gate(a) if gated else a, w).reshape(1, M, W)
            want = fused.add_rms_norm(x, branch, gate, weight, scale, shift)
            for name, (bn, bk, splits) in configs(W, K):
                fused.use_triton_on_cpu(True)
                got = fr.launch_add_rms_norm(a, w, x, gate, weight, scale, shift, block_n=bn, block_k=bk,
                                             splits=splits, gated=gated)
                fused.use_triton_on_cpu(False)
                check(f"{sms} SMs: {op} {norm} [{M}, {a.shape[1]}] @ {list(w.shape)} {name}", got, want, BF16)
    # gate_up; the float32 action heads with their bias (action_in_proj, pi0's action_time_mlp_in with the time half
    # as its bias, action_out_proj)
    for op, K, N, dtype in (("gate_up", W, 2 * F_, bf16), ("action_in_proj", A, W, torch.float32),
                            ("action_time_mlp_in", 2 * W, W, torch.float32), ("action_out_proj", W, A, torch.float32)):
        xa, w = rnd(M, K, dtype=dtype), rnd(N, K, scale=K ** -0.5, dtype=dtype)
        bias = rnd(N, dtype=dtype) if dtype == torch.float32 else None
        want = F.linear(xa, w, bias)
        for name, (bn, bk, splits) in configs(N, K, dtype):
            fused.use_triton_on_cpu(True)
            got = fr.launch(xa, w, bn, bk, splits, bias=bias)
            fused.use_triton_on_cpu(False)
            check(f"{sms} SMs: {op} {str(dtype).split('.')[-1]} [{M}, {K}] @ {[N, K]} {name}", [got], [want],
                  1e-5 if dtype == torch.float32 else BF16)
    # model.dtype fp8_weights: the expert's weights in e4m3 with row scales, widened in the loads; the first and the
    # last config of each (the same configs as bfloat16 weights: the loads differ, not the grid)
    from turbopi_ros.model.fp8 import quantize_rows

    def fp8(n, k):
        q8, s8 = quantize_rows(torch.randn(n, k, generator=g) * k ** -0.5)
        return q8, s8[:, 0].contiguous()

    def ends(n, k):
        listed = list(configs(n, k))
        return [listed[0], listed[-1]]

    q8, s8 = fp8((H + 2 * KV) * D, W)
    want_cache = torch.zeros(2, 1, KV, depth, D, dtype=bf16)
    want_q = fr._library_qkv_rope(y, q8, cos, sin, want_cache[0], want_cache[1], start, H, KV, s8)
    for name, (bn, bk, splits) in ends(q8.shape[0], W):
        cache = torch.zeros(2, 1, KV, depth, D, dtype=bf16)
        fused.use_triton_on_cpu(True)
        q = fr.launch_qkv_rope(y, q8, cos, sin, cache[0], cache[1], start, H, KV, s8, block_n=bn, block_k=bk,
                               splits=splits)
        fused.use_triton_on_cpu(False)
        check(f"{sms} SMs: fp8 weights qkv_rope {list(q8.shape)} {name}", [q, cache], [want_q, want_cache], BF16)
    for op, K, gated in (("o_proj", H * D, False), ("down_proj", F_, True)):
        a, (q8, s8) = rnd(M, 2 * K if gated else K), fp8(W, K)
        weight = rnd(W, scale=0.1)
        want = fused.add_rms_norm(x, fr.scaled_linear(fused.gelu_gate(a) if gated else a, q8, s8).reshape(1, M, W),
                                  None, weight, None, None)
        for name, (bn, bk, splits) in ends(W, K):
            fused.use_triton_on_cpu(True)
            got = fr.launch_add_rms_norm(a, q8, x, None, weight, None, None, s8, block_n=bn, block_k=bk,
                                         splits=splits, gated=gated)
            fused.use_triton_on_cpu(False)
            check(f"{sms} SMs: fp8 weights {op} RMS {list(q8.shape)} {name}", got, want, BF16)
    xa, (q8, s8) = rnd(M, W), fp8(2 * F_, W)
    want = fr.scaled_linear(xa, q8, s8)
    for name, (bn, bk, splits) in ends(2 * F_, W):
        fused.use_triton_on_cpu(True)
        got = fr.launch(xa, q8, bn, bk, splits, w_scale=s8)
        fused.use_triton_on_cpu(False)
        check(f"{sms} SMs: fp8 weights gate_up {list(q8.shape)} {name}", [got], [want], BF16)
    # the denoise's attention: 8 heads x 50 action rows in the one KV group, over the prefix and the actions
    q = rnd(1, KV, H * M, D, scale=2.0)
    cache = rnd(2, 1, KV, 1024, D, scale=2.0)
    for keys in (839, 898):
        k, v = cache[0, :, :, :keys], cache[1, :, :, :keys]
        want = sdpa(q, k, v, D ** -0.5)
        for name, config in sa.configs(KV, H * M, keys, sms).items():
            fused.use_triton_on_cpu(True)
            got = sa.launch(q, k, v, D ** -0.5, **config)
            fused.use_triton_on_cpu(False)
            check(f"{sms} SMs: split_attention {H * M} rows over {keys} keys {name}", [got], [want], BF16)


def memcheck_catches():
    """The memory check itself: kernels that load one element past a tensor's end, one before its start, and store
    into the gap between a strided view's rows are each caught, once, and placed against the right tensor; a load
    whose mask keeps it inside is not. Run apart from the other sections (a watch of its own)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _loads_past_the_end(x, y, N, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(y + i, tl.load(x + i + 1, mask=i < N), mask=i < N)

    @triton.jit
    def _loads_before_the_start(x, y, N, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(y + i, tl.load(x + i - 1, mask=i < N), mask=i < N)

    @triton.jit
    def _stores_between_rows(y, N, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(y + i, tl.zeros([BLOCK], tl.float32) + 1.0, mask=i < N)

    @triton.jit
    def _masked_tail(x, y, N, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(y + i, tl.load(x + i, mask=i < N), mask=i < N)

    names = ["_loads_past_the_end", "_loads_before_the_start", "_stores_between_rows", "_masked_tail"]
    kernels = {"_loads_past_the_end": _loads_past_the_end, "_loads_before_the_start": _loads_before_the_start,
               "_stores_between_rows": _stores_between_rows, "_masked_tail": _masked_tail}
    base = torch.arange(12, dtype=torch.float32)
    x, y = base[2:9], torch.zeros(7)  # x: 7 elements inside a 12-element storage, so a stray read stays in memory
    rows = torch.zeros(2, 8)[:, :4]  # a [2, 4] view with rows 8 apart
    with memcheck(extra=[(kernels, names)]) as report:
        kernels["_loads_past_the_end"][(1,)](x, y, 7, BLOCK=8)
        kernels["_loads_before_the_start"][(1,)](x, y, 7, BLOCK=8)
        kernels["_stores_between_rows"][(1,)](rows, 5, BLOCK=8)
        kernels["_masked_tail"][(1,)](x, y, 7, BLOCK=16)
    found = {(o.kernel, o.access): o for o in report.outside}
    for o in report.outside:
        print(f"memcheck caught {o.line()}")
    want = {("_loads_past_the_end", "load"): "1 element(s) past the end of 'x' (7,) float32",
            ("_loads_before_the_start", "load"): "1 element(s) before 'x' (7,) float32",
            ("_stores_between_rows", "store"): "inside the span of 'y' (2, 4) float32 strides (8, 1) but on none"}
    for key, text in want.items():
        if key not in found or found[key].lanes != 1 or text not in found[key].where:
            failures.append(f"memcheck missed or misplaced {key}: {found.get(key)}")
    if set(found) != set(want) or report.lanes["_masked_tail"] != 14 or report.launches["_masked_tail"] != 1:
        failures.append(f"memcheck flagged {sorted(set(found) - set(want))} or counted {report.lanes['_masked_tail']} "
                        "lanes of the masked tail, not 14 (7 loads, 7 stores)")
    print(f"memcheck self-check: {len(found)} of {len(want)} strays caught, the masked tail "
          f"{report.outside_lanes['_masked_tail']} outside", flush=True)


sections = sys.argv[1:] or ["kernels", "choice", "gelu_gate", "whole_model", "backward"]
if "memcheck" in sections:
    memcheck_catches()
with memcheck() as memory:  # every load and store of every launch on an element of the launch's tensors
    if "kernels" in sections:
        kernels(torch.float32, 1e-5)
        kernels(torch.bfloat16, None)
        attention(torch.float32, 1e-5)
        attention(torch.bfloat16, None)
        matmul(torch.float32, 1e-5)
        matmul(torch.bfloat16, None)
    if "choice" in sections:
        choice(torch.bfloat16)
    if "gelu_gate" in sections:
        gelu_gate_layout(torch.float32, 1e-5)
        gelu_gate_layout(torch.bfloat16, None)
    if "whole_model" in sections:
        whole_model("pi0", 1e-5)
        whole_model("pi05", 1e-5)
    for section in sections:  # gpu_shapes: an H100's or H200's 132 SMs; gpu_shapes_20: a Jetson Thor's 20
        if section.startswith("gpu_shapes"):
            gpu_shapes(int(section.split("_")[2]) if section.count("_") == 2 else 132)
    if "backward" in sections:
        backward_kernels(torch.float32, 1e-5)
        backward_kernels(torch.bfloat16, None)
        guided("pi0", 1e-5)
        guided("pi05", 1e-5)
print(memory.summary())
for name in sorted(memory.launches):
    print(f"memcheck {name}: {memory.launches[name]} launches, {memory.lanes[name]} lanes, "
          f"{memory.outside_lanes[name]} outside")
failures += [f"memcheck: {o.line()}" for o in memory.outside]
if memory.unwatched:
    failures.append(f"memcheck: {memory.unwatched} loads or stores of kernels launched past the watch")
if failures:
    print("FAILED: " + "; ".join(failures))
    sys.exit(1)
print("all kernels within tolerance")
