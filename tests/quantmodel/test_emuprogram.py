"""The compiled blocks (quantmodel.emulator.program) are a speed-up only: a forward through them equals the
emulator's eager forward bit for bit, in both vector-unit modes, for every recipe family (dynamic ones in
int mode with every scale taken on line; zero points, static and per token; channel-balanced dynamic
recipes), float and integer attention products (static and dynamic, K past the float32 chunk limit), both
temporal-embedding placements, several steps and inputs (weight sets sharing one buffer pool), one and
two threads, and on shapes where the eager path splits its work (row-blocked softmax, flat-blocked
GELU, column-blocked GEMMs); the int mode's per-step operands in C equal their Python definition, and a
non-finite parameter is still reported; verifying runs keep the eager path."""

import dataclasses

import pytest
import torch

from quantmodel.emulator.integer import IntegerEmulator
from quantmodel.intarith import ckernels, intops
from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.quant.artifact import build_artifact
from quantmodel.quant.calibrate import calibrate
from workloads.recipes import get_recipe

pytestmark = pytest.mark.skipif(
    ckernels.lib() is None, reason="C kernels unavailable (no compiler) or disabled (QUANTMODEL_CKERNELS=0)"
)


def _setup(w):
    model = build_stdit(STDiTConfig.from_workload(w), seed=0)
    return model, calibrate(model, w, num_prompts=1)


def _inputs(model, g, step: int, rep: int):
    cfg = model.cfg
    x = torch.randn(2, cfg.in_channels, *cfg.input_size, generator=g)
    y = torch.randn(2, 1, cfg.model_max_length, cfg.caption_channels, generator=g)
    return x, torch.tensor([999 - 300 * step - 11 * rep] * 2), y


def _compare(model, art, steps: int, seed: int = 0, mode: str = "fp16") -> IntegerEmulator:
    """Program and eager forwards on the same inputs, two inputs per step; returns the program's emulator."""
    fast = IntegerEmulator(model, art, nonlinear=mode)
    eager = IntegerEmulator(model, art, nonlinear=mode)
    eager.use_program = False
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for rep in range(2):
            x, t, y = _inputs(model, g, step, rep)
            a, b = fast.forward(x, t, y, step), eager.forward(x, t, y, step)
            assert torch.equal(a, b), (art.recipe.name, mode, step, rep, int((a != b).sum()))
    assert fast._programs and all(p is not None for p in fast._programs.values())  # the program ran
    return fast


@pytest.mark.parametrize("mode", ["fp16", "int"])
@pytest.mark.parametrize("temporal_pos", ["attention", "residual"])
def test_program_equals_eager_forward_for_every_recipe_family(tiny_workload, temporal_pos, mode):
    w = dataclasses.replace(
        tiny_workload, num_steps=3, model=dataclasses.replace(tiny_workload.model, temporal_pos=temporal_pos)
    )
    model, stats = _setup(w)
    names = (
        "asq-w8a8",
        "static-w6a6",
        "tsq-tsw-w4a8",
        "groups2-cal-w6a6",
        "dynamic-w8a8",
        "dynamic-w4a8",
    )
    recipes = [get_recipe(name) for name in names]
    recipes += [
        dataclasses.replace(get_recipe(name), quantize_attention=True)  # integer QK^T and AV
        for name in ("asq-w8a8", "tsq-tsw-w4a8", "tsq-w8a8")
    ]
    for recipe in recipes:
        art = build_artifact(
            model, recipe, stats if recipe.scheme != "dynamic" or recipe.smoothing else None, w.num_steps
        )
        emu = _compare(model, art, w.num_steps, mode=mode)
        assert len(emu._programs) == len(set(art.step_to_set))  # one program per scale set
        assert len(emu._program_pools) == 1  # sharing one arena


@pytest.mark.parametrize("mode", ["fp16", "int"])
def test_program_equals_eager_with_zero_points_balancing_and_dynamic_products(tiny_workload, mode):
    """The recipes the program took over from the eager path: zero points (static and per token),
    channel-balanced dynamic recipes (vidit-q), dynamic recipes with integer attention products."""
    w = dataclasses.replace(tiny_workload, num_steps=2)
    model, stats = _setup(w)
    recipes = [get_recipe(name) for name in ("vidit-q-w8a8", "vidit-q-w6a6", "asq-asym-w8a8")]
    recipes += [
        dataclasses.replace(get_recipe("dynamic-w8a8"), channel_balance=True),  # symmetric, balanced
        dataclasses.replace(get_recipe("static-asym-w6a6"), quantize_attention=True),
        dataclasses.replace(get_recipe("dynamic-w8a8"), quantize_attention=True),
        dataclasses.replace(get_recipe("vidit-q-w4a8"), quantize_attention=True),
    ]
    for recipe in recipes:
        art = build_artifact(model, recipe, stats if recipe.scheme != "dynamic" or recipe.smoothing else None, 2)
        emu = _compare(model, art, w.num_steps, mode=mode)
        assert len(emu._programs) == len(set(art.step_to_set))


@pytest.mark.parametrize("mode", ["fp16", "int"])
def test_program_equals_eager_on_blocked_shapes_and_thread_counts(tiny_workload, mode):
    """hidden 256 on 4 x 128 x 128: 64-token frames (the 131k-score softmax runs in row blocks), GELU
    over 512 x 1024 values (flat blocks), fc1 with 1024 outputs (column-blocked GEMM); depth 3, so later
    blocks' buffers reuse arena memory of earlier ones."""
    w = dataclasses.replace(
        tiny_workload,
        num_frames=4,
        height=128,
        width=128,
        num_steps=2,
        model=dataclasses.replace(tiny_workload.model, hidden_size=256, num_heads=4, depth=3),
    )
    model, stats = _setup(w)
    arts = [
        build_artifact(model, get_recipe("asq-w8a8"), stats, w.num_steps),
        build_artifact(
            model, dataclasses.replace(get_recipe("static-w8a8"), quantize_attention=True), stats, w.num_steps
        ),
    ]
    arts.append(build_artifact(model, get_recipe("dynamic-w8a8"), None, w.num_steps))
    n0 = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            for art in arts:
                _compare(model, art, w.num_steps, seed=nt, mode=mode)
    finally:
        torch.set_num_threads(n0)


def test_verifying_runs_keep_the_eager_path(tiny_workload):
    w = dataclasses.replace(tiny_workload, num_steps=2)
    model, stats = _setup(w)
    x, t, y = _inputs(model, torch.Generator().manual_seed(3), 0, 0)
    cases = [
        (get_recipe("vidit-q-w8a8"), "int", True),
        (get_recipe("asq-w8a8"), "fp16", True),
        (get_recipe("asq-w8a8"), "int", True),
        (get_recipe("dynamic-w8a8"), "fp16", True),
    ]
    for recipe, mode, verify in cases:
        art = build_artifact(model, recipe, stats if recipe.scheme != "dynamic" else None, w.num_steps)
        emu = IntegerEmulator(model, art, nonlinear=mode, verify=verify)
        emu.forward(x, t, y, 0)
        assert all(p is None for p in emu._programs.values()), (recipe.name, mode, verify)


def test_int_step_operands_in_c_equal_python_definition():
    """ckernels qm_mod_operands = _fold_mod + _param_int + intops.modulate_factors (a modulation, with
    and without a consumer's folded 1/s) and + intops.gate_q16 (a gate), over magnitudes from all-zero
    (scale 1.0) to large, on strided [B, 1, C] chunks of the [B, 6, C] modulation."""
    dll = ckernels.lib()
    g = torch.Generator().manual_seed(4)
    c = 48
    inv = torch.rand(c, generator=g) + 0.5
    for mag in (0.0, 1e-7, 0.37, 3.0, 2e4):
        mod = torch.randn(2, 6, c, generator=g) * mag
        shift, scale, gate = mod[:, 0:1], mod[:, 1:2], mod[:, 2:3]
        for s_out in (0.0123, 3.5e-5):
            for fold in (None, inv):
                f, r = torch.empty(2, 1, c, dtype=torch.float64), torch.empty(2, 1, c, dtype=torch.float64)
                fw, qw = torch.empty(4 * c), torch.empty(4 * c, dtype=torch.int32)
                assert (
                    dll.qm_mod_operands(
                        scale.data_ptr(),
                        shift.data_ptr(),
                        scale.stride(0),
                        None if fold is None else fold.data_ptr(),
                        2,
                        c,
                        s_out,
                        32767,
                        f.data_ptr(),
                        r.data_ptr(),
                        fw.data_ptr(),
                        qw.data_ptr(),
                    )
                    == 0
                )
                sc, sh = (scale, shift) if fold is None else ((1 + scale) * fold - 1, shift * fold)
                q_sh, q_sc = IntegerEmulator._param_int(None, sh), IntegerEmulator._param_int(None, sc)
                m, rr = intops.modulate_factors(q_sh.q, q_sh.scale, q_sc.q, q_sc.scale, s_out)
                assert torch.equal(f, m) and torch.equal(r, rr), (mag, s_out, fold is None)
        fg = torch.empty(2, 1, c, dtype=torch.float64)
        assert (
            dll.qm_mod_operands(
                gate.data_ptr(),
                None,
                gate.stride(0),
                None,
                2,
                c,
                1.0,
                32767,
                fg.data_ptr(),
                None,
                fw.data_ptr(),
                qw.data_ptr(),
            )
            == 0
        )
        q_g = IntegerEmulator._param_int(None, gate)
        assert torch.equal(fg, intops.gate_q16(q_g.q, q_g.scale)), mag
    bad = torch.full((2, 1, c), float("inf"))
    assert (
        dll.qm_mod_operands(
            bad.data_ptr(), None, c, None, 2, c, 1.0, 32767, fg.data_ptr(), None, fw.data_ptr(), qw.data_ptr()
        )
        == 1
    )  # non-finite: refused, not computed


def test_program_reports_a_non_finite_step_parameter_as_eager_does(tiny_workload):
    from workloads.errors import ConfigError

    w = dataclasses.replace(tiny_workload, num_steps=2)
    model, stats = _setup(w)
    art = build_artifact(model, get_recipe("asq-w8a8"), stats, w.num_steps)
    emu = IntegerEmulator(model, art, nonlinear="int")
    x, t, y = _inputs(model, torch.Generator().manual_seed(5), 0, 0)
    emu.forward(x, t, y, 0)
    (prog,) = emu._programs.values()
    b, c = 2, model.cfg.hidden_size
    h = torch.zeros(b, model.cfg.num_temporal * model.cfg.num_spatial, c)
    yy = torch.zeros(b, model.cfg.model_max_length, c)
    t0 = torch.zeros(b, 6 * c)
    t0[0, 5] = float("nan")
    with pytest.raises(ConfigError):
        prog.run(h, yy, t0)


def test_dynamic_quantize_and_rescale_in_c_equal_python_definition():
    """qm_dyn_quant = fixedpoint.symmetric_scale(row abs-max) + fixedpoint.quantize(axis 0) (fp16 and
    float32 rows, all-zero rows, exact half-way quotients, rows longer than the C block), non-finite
    rows refused; qm_dyn_rescale = the emulator's float32 (acc * s_row) * w_scale + bias, then _hs."""
    from quantmodel.intarith import fixedpoint

    dll = ckernels.lib()
    g = torch.Generator().manual_seed(6)
    for rows, k, dtype, bits in ((256, 64, torch.float16, 8), (7, 1500, torch.float32, 6), (16, 40, torch.float32, 4)):
        x = (torch.randn(rows, k, generator=g) * 3).to(dtype)
        x[1] = 0
        qmax = 2 ** (bits - 1) - 1
        x[2] = 0
        x[2, 0] = qmax * 0.25  # row max qmax / 4 -> scale exactly 0.25, so these quotients are exact ties
        x[2, 1:6] = torch.tensor([0.5, 1.5, 2.5, -0.5, -3.5]) * 0.25
        q, s = torch.empty(rows, k, dtype=torch.int8), torch.empty(rows)
        kind = 1 if dtype == torch.float16 else 0
        assert dll.qm_dyn_quant(x.data_ptr(), kind, rows, k, qmax, q.data_ptr(), s.data_ptr()) == 0
        s_ref = fixedpoint.symmetric_scale(x.float().abs().amax(dim=1).double(), bits)
        assert torch.equal(s, s_ref) and torch.equal(q, fixedpoint.quantize(x.float(), s_ref, bits, axis=0))
        assert s[2] == 0.25 and q[2, 1:6].tolist() == [0, 2, 2, 0, -4]  # half to even
        w = torch.randint(-127, 128, (k, 24), generator=g, dtype=torch.int8)
        acc = torch._int_mm(q, w) if rows > 16 else q.int() @ w.int()
        w_scale, bias = torch.rand(24, generator=g) * 1e-2, torch.randn(24, generator=g)
        y = torch.empty(rows, 24, dtype=torch.float16)
        dll.qm_dyn_rescale(
            acc.contiguous().data_ptr(), rows, 24, s.data_ptr(), w_scale.data_ptr(), bias.data_ptr(), y.data_ptr(), 1
        )
        y32 = torch.empty(rows, 24)
        dll.qm_dyn_rescale(
            acc.contiguous().data_ptr(), rows, 24, s.data_ptr(), w_scale.data_ptr(), bias.data_ptr(), y32.data_ptr(), 0
        )
        want = (acc.float() * s[:, None]) * w_scale[None, :] + bias
        assert torch.equal(y32, want) and torch.equal(y, want.clamp(-65504, 65504).half())
    x[3, 5] = float("nan")
    assert dll.qm_dyn_quant(x.data_ptr(), 0, rows, k, 7, q.data_ptr(), s.data_ptr()) == 1


def test_dynamic_zero_point_quantize_and_rescale_in_c_equal_python_definition():
    """qm_dyn_quant_zp = fixedpoint.dynamic_zero_points (fp16 and float32 rows; all-zero, all-positive,
    all-negative and constant rows; exact half-way quotients; extremes near the float32 limit; rows
    longer than the C block), non-finite rows refused; qm_dyn_rescale_zp = the emulator's float32
    ((acc - z * colsum) * s_row) * w_scale + bias, then _hs."""
    from quantmodel.intarith import fixedpoint

    dll = ckernels.lib()
    g = torch.Generator().manual_seed(7)
    for rows, k, dtype, bits in ((256, 64, torch.float16, 8), (9, 1500, torch.float32, 6), (16, 40, torch.float32, 4)):
        x = (torch.randn(rows, k, generator=g) * 3).to(dtype)
        x[1] = 0
        x[3], x[4], x[5] = x[3].abs(), -x[4].abs(), -2.5
        levels = 2**bits - 1
        x[2] = 0
        x[2, 0], x[2, 1] = levels * 0.25, 0  # range [0, levels / 4] -> scale exactly 0.25: exact ties below
        x[2, 2:7] = torch.tensor([0.5, 1.5, 2.5, 3.5, 10.5]) * 0.25
        if dtype == torch.float32:
            x[6] = (torch.rand(k, generator=g) * 2 - 1) * 3e38
        q, s, z = torch.empty(rows, k, dtype=torch.int8), torch.empty(rows), torch.empty(rows, dtype=torch.int32)
        kind = 1 if dtype == torch.float16 else 0
        assert dll.qm_dyn_quant_zp(x.data_ptr(), kind, rows, k, bits, q.data_ptr(), s.data_ptr(), z.data_ptr()) == 0
        rq, rs, rz = fixedpoint.dynamic_zero_points(x.float(), bits)
        assert torch.equal(s, rs) and torch.equal(z, rz) and torch.equal(q, rq)
        lo = -(2 ** (bits - 1))
        assert s[2] == 0.25 and z[2] == lo and (q[2, 2:7] - lo).tolist() == [0, 2, 2, 4, 10]  # half to even
        w = torch.randint(-128, 128, (k, 24), generator=g, dtype=torch.int8)
        colsum = w.int().sum(dim=0, dtype=torch.int32)
        acc = (q.int() @ w.int()).contiguous()
        w_scale, bias = torch.rand(24, generator=g) * 1e-2, torch.randn(24, generator=g)
        want = ((acc - z[:, None] * colsum[None, :]).float() * s[:, None]) * w_scale[None, :] + bias
        for out_f16, out in ((1, torch.empty(rows, 24, dtype=torch.float16)), (0, torch.empty(rows, 24))):
            dll.qm_dyn_rescale_zp(
                acc.data_ptr(),
                rows,
                24,
                s.data_ptr(),
                z.data_ptr(),
                colsum.data_ptr(),
                w_scale.data_ptr(),
                bias.data_ptr(),
                out.data_ptr(),
                out_f16,
            )
            assert torch.equal(out, want.clamp(-65504, 65504).half() if out_f16 else want)
        for bad in (float("nan"), float("inf")):
            x[3, 5] = bad
            assert dll.qm_dyn_quant_zp(x.data_ptr(), kind, rows, k, bits, q.data_ptr(), s.data_ptr(), z.data_ptr()) == 1


def test_dynamic_attention_product_equals_eager_definition_past_the_float32_chunk_limit():
    """ProgramOps.dyn_product (a dynamic recipe's integer QK^T / AV) = IntegerEmulator.matmul's dynamic
    branch, for K within the exact float32 limit and past it (K chunks added in int32), fp16 and float32
    operands, a strided (transposed) b, zero rows and exact ties."""
    import types

    from quantmodel.emulator.program import ProgramOps, _Builder
    from quantmodel.intarith import fixedpoint

    g = torch.Generator().manual_seed(8)
    for k, dtype in ((40, torch.float16), (1100, torch.float32)):
        a = (torch.randn(2, 3, 5, k, generator=g) * 4).to(dtype)
        b = (torch.randn(2, 3, k, 7, generator=g) * 4).to(dtype)  # read through its transpose (strided rows)
        a[0, 0, 1] = 0
        a[0, 0, 2] = 0
        a[0, 0, 2, :4] = torch.tensor([127.0, 0.5, 1.5, -2.5])  # scale exactly 1: half-way quotients
        emu = types.SimpleNamespace(mode="fp16", static=False, qa=127, a_bits=8)
        ops = ProgramOps(emu, ckernels.lib(), _Builder())
        y = ops.dyn_product(a, b.transpose(-2, -1))
        for step in ops.b.steps:
            step()
        af, bf = a.float(), b.float()  # IntegerEmulator.matmul, dynamic branch
        sa = fixedpoint.symmetric_scale(af.abs().amax(dim=-1).double(), 8)
        sb = fixedpoint.symmetric_scale(bf.abs().amax(dim=-2).double(), 8)
        qa_ = torch.round(af.double() / sa[..., None]).clamp(-127, 127).to(torch.int8)
        qb_ = torch.round(bf.double() / sb[..., None, :]).clamp(-127, 127).to(torch.int8)
        acc = qa_.long() @ qb_.long()
        assert acc.abs().max() < 2**31
        want = (acc.to(torch.int32).float() * sa[..., None]) * sb[..., None, :]
        assert qa_[0, 0, 2, :4].tolist() == [127, 0, 2, -2]
        assert torch.equal(y, want)


def test_dynamic_int_program_meets_a_non_finite_input_as_eager_does(tiny_workload):
    """A NaN in the block input of a dynamic recipe in int mode: the ranges measured on line fall back to
    torch's max (NaN), so the program gives what the eager path gives (the same values, or the same error)."""
    w = dataclasses.replace(tiny_workload, num_steps=2)
    model = build_stdit(STDiTConfig.from_workload(w), seed=0)
    art = build_artifact(model, get_recipe("dynamic-w8a8"), None, w.num_steps)
    emu = IntegerEmulator(model, art, nonlinear="int")
    x, t, y = _inputs(model, torch.Generator().manual_seed(7), 0, 0)
    emu.forward(x, t, y, 0)
    (prog,) = emu._programs.values()
    assert prog is not None
    b, c = 2, model.cfg.hidden_size
    h = torch.randn(b, model.cfg.num_temporal * model.cfg.num_spatial, c)
    yy = torch.randn(b, model.cfg.model_max_length, c)
    t0 = torch.randn(b, 6 * c) * 0.1
    h[1, 3, 5] = float("nan")
    eager = IntegerEmulator(model, art, nonlinear="int")
    eager.use_program = False
    eager.wset = emu.wset
    try:
        from quantmodel.emulator.block import run_blocks

        with torch.no_grad():
            want, err = run_blocks(eager, model, h, yy, t0), None
    except Exception as e:
        want, err = None, type(e)
    if err is not None:
        with pytest.raises(err):
            prog.run(h, yy, t0)
    else:
        got = prog.run(h, yy, t0)
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())


def test_ranges_measured_in_c_equal_their_torch_definition():
    """qm_absmax / qm_mod_absmax / qm_gated_absmax = the abs-max of the float tensors the eager path
    builds (fixedpoint.dequantize, then datapath.modulated / gated_sum), for float32 and non-float32
    scales, codes beyond 2**24, strided [B, 1, C] parameters, the constant gate; -1 on a non-finite value."""
    from quantmodel.emulator import datapath
    from quantmodel.intarith import fixedpoint

    dll = ckernels.lib()
    g = torch.Generator().manual_seed(11)
    b, n, c = 2, 40, 24
    for sx in (2.0**-20, 3.0**0.5 / 2**30, 1.2345e-3):  # a float32 scale, then float64-only ones
        for big in (False, True):
            hi = 2**30 if big else 2**23
            x = torch.randint(-hi, hi, (b, n, c), generator=g, dtype=torch.int32)
            y = torch.randint(-(2**15), 2**15, (b, n, c), generator=g, dtype=torch.int32)
            mod = torch.randn(b, 6, c, generator=g) * 3
            shift, scale = mod[:, 0:1], mod[:, 1:2]  # strided views, as the program's chunks
            xf = fixedpoint.dequantize(x, sx)
            want = float(datapath.modulated(xf, shift, scale).abs().max())
            got = dll.qm_mod_absmax(x.data_ptr(), sx, scale.data_ptr(), shift.data_ptr(), scale.stride(0), b, n, c)
            assert got == want, (sx, big)
            gq = torch.randint(-(2**15), 2**15, (b, 1, c), generator=g, dtype=torch.int32)
            sg, sy = 1.52587890625e-05, 0.0078125
            for gate, s_g in ((gq, sg), (None, 1.0)):
                gv = gq if gate is not None else torch.ones(1, dtype=torch.int32)
                want = float(
                    datapath.gated_sum(xf, fixedpoint.dequantize(gv, s_g), fixedpoint.dequantize(y, sy)).abs().max()
                )
                gp = None if gate is None else gate.data_ptr()
                assert dll.qm_gated_absmax(x.data_ptr(), sx, gp, s_g, y.data_ptr(), sy, b, n, c) == want
    for dt, kind in ((torch.float32, 0), (torch.float16, 1)):
        t = (torch.randn(3, 1000, generator=g) * 100).to(dt)
        assert dll.qm_absmax(t.data_ptr(), kind, t.numel()) == float(t.abs().max())
        t[2, 7] = float("nan")
        assert dll.qm_absmax(t.data_ptr(), kind, t.numel()) == -1.0
    x = torch.zeros(1, 2, 3, dtype=torch.int32)
    shift, scale = torch.zeros(1, 1, 3), torch.tensor([[[0.0, float("inf"), 0.0]]])
    assert dll.qm_mod_absmax(x.data_ptr(), 1.0, scale.data_ptr(), shift.data_ptr(), 0, 1, 2, 3) == -1.0


def test_range_scale_equals_the_float32_tensor_conversion():
    """datapath.range_scale rounds absmax / qmax to float32 without a tensor: the same value as torch's
    conversion, including subnormal, overflowing (inf), zero and NaN ranges (scale 1)."""
    import math

    from quantmodel.emulator import datapath

    g = torch.Generator().manual_seed(2)
    vals = [0.0, 1e-45, 1e-40, 3.4e38 * 8388607, 1e300, float("nan"), float("inf")]
    vals += (
        torch.rand(2000, generator=g, dtype=torch.float64) * 10 ** torch.randint(-45, 45, (2000,), generator=g)
    ).tolist()
    for bits in (16, 24):
        q = 2 ** (bits - 1) - 1
        for v in vals:
            want = float(torch.tensor(v / q if v > 0 else 1.0, dtype=torch.float32))
            got = datapath.range_scale(v, bits)
            assert got == want or (math.isnan(got) and math.isnan(want)), (v, bits)


def test_dynamic_int_helpers_in_c_equal_their_python_definition():
    """qm_dequant_f64 = fixedpoint.dequantize at a float64-only scale (codes past 2**24); qm_ln_eps_table =
    intops.ln_eps_table (declining a zero scale square, which Python refuses); qm_gated_absmax_p = the gate's
    _param_int codes and qm_gated_absmax (-2 for a non-finite gate); qm_dyn_rows = qm_dyn_quant of the
    contiguous copy of a strided view, codes widened to float32 (the copy itself written only for the report
    of a non-finite value); qm_scale_rows_cols = (y * s_a) * s_b; qm_dyn_product = torch.matmul of the codes,
    then those two products."""
    from quantmodel.intarith import fixedpoint

    dll = ckernels.lib()
    g = torch.Generator().manual_seed(21)
    q = torch.randint(-(2**30), 2**30, (3, 77), generator=g, dtype=torch.int32)
    for s in (3.0**0.5 / 2**30, 1.2345e-3, 2.0**-20, 7.1e-41):
        out = torch.empty(q.shape)
        dll.qm_dequant_f64(q.data_ptr(), q.numel(), s, out.data_ptr())
        assert torch.equal(out, fixedpoint.dequantize(q, s)), s
    for s, n, eps in ((1e-3, 64, 1e-6), (3.7e-9, 384, 1e-5), (2.0**-30, 7, 1e-6), (0.31, 1152, 0.0), (1e7, 64, 1e-6)):
        t = torch.empty(19, dtype=torch.int64)
        assert dll.qm_ln_eps_table(s, n, eps, t.data_ptr()) == 0
        assert t.tolist() == intops.ln_eps_table(s, n, eps), (s, n, eps)
    assert dll.qm_ln_eps_table(1e-200, 64, 1e-6, t.data_ptr()) == 1
    emu = IntegerEmulator.__new__(IntegerEmulator)
    b, n, c = 2, 9, 40
    x = torch.randint(-(2**23), 2**23, (b, n, c), generator=g, dtype=torch.int32)
    y = torch.randint(-(2**15), 2**15, (b, n, c), generator=g, dtype=torch.int32)
    mod = torch.randn(b, 6, c, generator=g)
    gate = mod[:, 2:3]  # a strided chunk, as the program's
    gv = emu._param_int(gate)
    gq = torch.empty(b, 1, c, dtype=torch.int32)
    qmax = 2 ** (15) - 1
    got = dll.qm_gated_absmax_p(
        x.data_ptr(), 1e-3, gate.data_ptr(), gate.stride(0), qmax, gq.data_ptr(), y.data_ptr(), 2e-4, b, n, c
    )
    assert torch.equal(gq, gv.q)
    assert got == dll.qm_gated_absmax(x.data_ptr(), 1e-3, gv.q.data_ptr(), gv.scale, y.data_ptr(), 2e-4, b, n, c)
    mod[1, 2, 3] = float("inf")
    assert (
        dll.qm_gated_absmax_p(
            x.data_ptr(), 1e-3, gate.data_ptr(), gate.stride(0), qmax, gq.data_ptr(), y.data_ptr(), 2e-4, b, n, c
        )
        == -2.0
    )
    for dtype, kind in ((torch.float32, 0), (torch.float16, 1)):
        base = (torch.randn(2, 12, 3 * 4 * 8, generator=g) * 5).to(dtype)
        for view in (
            base.view(2, 12, 3, 4, 8)[:, :, 1].transpose(1, 2),
            base.view(2, 12, 3, 4, 8)[:, :, 2].permute(0, 2, 3, 1),
        ):
            rows, k = view.shape[-2], view.shape[-1]
            xb, q8 = torch.empty(view.shape, dtype=dtype), torch.empty(view.shape, dtype=torch.int8)
            qf, s = torch.empty(view.shape), torch.empty(view.shape[:-1])
            args = (view.data_ptr(), kind, *view.shape[:2], rows, k, *view.stride(), 127)
            assert dll.qm_dyn_rows(*args, xb.data_ptr(), q8.data_ptr(), qf.data_ptr(), s.data_ptr()) == 0
            want_q, want_s = torch.empty(view.shape, dtype=torch.int8), torch.empty(view.shape[:-1])
            cont = view.contiguous()
            assert (
                dll.qm_dyn_quant(cont.data_ptr(), kind, cont.numel() // k, k, 127, want_q.data_ptr(), want_s.data_ptr())
                == 0
            )
            assert torch.equal(q8, want_q) and torch.equal(s, want_s)
            assert torch.equal(qf, want_q.float()) and not (qf.signbit() & (qf == 0)).any()
        base.view(2, 12, 3, 4, 8)[0, 3, 1, 2, 5] = float("nan")
        view = base.view(2, 12, 3, 4, 8)[:, :, 1].transpose(1, 2)
        xb, q8, qf, s = xb.view(view.shape), q8.view(view.shape), qf.view(view.shape), torch.empty(view.shape[:-1])
        args = (view.data_ptr(), kind, *view.shape[:2], view.shape[-2], view.shape[-1], *view.stride(), 127)
        assert dll.qm_dyn_rows(*args, xb.data_ptr(), q8.data_ptr(), qf.data_ptr(), s.data_ptr()) == 1
        assert torch.equal(xb.nan_to_num(), view.contiguous().nan_to_num())  # the copy the report reads
    yv = torch.randn(6, 5, 7, generator=g)
    sa, sb = torch.rand(6, 5, generator=g), torch.rand(6, 7, generator=g)
    want = (yv * sa.unsqueeze(-1)) * sb.unsqueeze(-2)
    dll.qm_scale_rows_cols(yv.data_ptr(), 6, 5, 7, sa.data_ptr(), sb.data_ptr())
    assert torch.equal(yv, want)
    for bsz, m, k, n in ((6, 5, 7, 19), (3, 16, 16, 16), (2, 128, 8, 16), (1, 9, 1040, 7)):
        qmax = 127 if k <= 1024 else 63  # k * qmax^2 <= 2^24: every partial sum exact in float32
        a = torch.randint(-qmax, qmax + 1, (bsz, m, k), generator=g).float()
        bq = torch.randint(-qmax, qmax + 1, (bsz, n, k), generator=g).float()
        a[0, 0], bq[0, 0] = qmax, -qmax  # the largest sums
        sa, sb = torch.rand(bsz, m, generator=g) * 1e-2, torch.rand(bsz, n, generator=g) * 1e-2
        y = torch.empty(bsz, m, n)
        assert (
            dll.qm_dyn_product(a.data_ptr(), bq.data_ptr(), bsz, m, k, n, sa.data_ptr(), sb.data_ptr(), y.data_ptr())
            == 0
        )
        assert torch.equal(y, (torch.matmul(a, bq.transpose(-2, -1)) * sa.unsqueeze(-1)) * sb.unsqueeze(-2))
    assert (
        dll.qm_dyn_product(a.data_ptr(), bq.data_ptr(), 1, 9, 1040, 8, sa.data_ptr(), sb.data_ptr(), y.data_ptr()) == 1
    )


@pytest.mark.parametrize("mode", ["fp16", "int"])
def test_program_with_the_bound_c_gemm_equals_eager_and_yields_to_a_forced_path(tiny_workload, mode, monkeypatch):
    """With the C kernel as the GEMM path (what AVX2-only CPUs calibrate to), the program binds its call per
    layer: still the eager forward's values, and a path forced at run time is still taken."""
    from quantmodel.intarith import gemmpaths

    monkeypatch.setenv("QUANTMODEL_GEMM", "ckernel")
    w = dataclasses.replace(tiny_workload, num_steps=2)
    model, stats = _setup(w)
    for recipe in (get_recipe("asq-w8a8"), dataclasses.replace(get_recipe("dynamic-w8a8"), quantize_attention=True)):
        art = build_artifact(model, recipe, stats if recipe.scheme != "dynamic" else None, 2)
        fast = _compare(model, art, 2, mode=mode)
        x, t, y = _inputs(model, torch.Generator().manual_seed(3), 0, 0)
        want = fast.forward(x, t, y, 0)
        calls = []
        real = gemmpaths._mm_float32

        def counted(a, b, out, calls=calls, real=real):
            calls.append(1)
            return real(a, b, out)

        monkeypatch.setattr(gemmpaths, "_mm_float32", counted)
        with gemmpaths.forced("float32"):
            assert torch.equal(fast.forward(x, t, y, 0), want)
        monkeypatch.setattr(gemmpaths, "_mm_float32", real)
        assert len(calls) >= 7 * model.cfg.depth  # every block linear took the forced path


def test_fix_madd_with_constants_derived_in_c_equals_the_python_constants():
    """qm_fix_madd_r (the requantization constants of run-time factors derived in C) = qm_fix_madd with
    intops.fix_madd_args' constants: factors giving every constant branch (zero, below 2**-32 where the
    constant is 0, large ones, near ties checked or not), with and without the second operand; factors
    quantize_multiplier refuses are declined (1, nothing written)."""
    dll = ckernels.lib()
    g = torch.Generator().manual_seed(23)
    b, n, c = 2, 5, 33
    qa = torch.randint(-(2**24), 2**24, (b, n, c), generator=g, dtype=torch.int32)
    qb = torch.randint(-(2**24), 2**24, (b, n, c), generator=g, dtype=torch.int32)
    f = torch.randint(-(2**17), 2**17, (b, 1, c), generator=g).double()
    r_bc = torch.randint(-(2**20), 2**20, (b, 1, c), generator=g).double()
    ws = torch.empty(2 * c, dtype=torch.float64)
    for ra, rb in ((0.37, 0.51), (0.0, 3.1e-7), (2.0**-70, 1.0), (3e9, 0.75), (2.0**-20 * 1.37, 2.0**-40), (1.0, 2.5)):
        for use_b in (True, False):
            want, got = torch.empty_like(qa), torch.empty_like(qa)
            bq, rr = (qb, None) if use_b else (None, r_bc)
            dll.qm_fix_madd(*intops.fix_madd_args(qa, ra, f, bq, rb, rr, -(2**23), 2**23 - 1, want, ws))
            assert (
                dll.qm_fix_madd_r(
                    qa.data_ptr(),
                    ra,
                    f.data_ptr(),
                    None if bq is None else bq.data_ptr(),
                    rb,
                    None if rr is None else rr.data_ptr(),
                    b,
                    n,
                    c,
                    -(2.0**23),
                    2.0**23 - 1,
                    got.data_ptr(),
                    ws.data_ptr(),
                )
                == 0
            )
            assert torch.equal(got, want), (ra, rb, use_b)
    for bad in (-1.0, float("nan"), float("inf")):
        assert (
            dll.qm_fix_madd_r(
                qa.data_ptr(),
                bad,
                f.data_ptr(),
                None,
                0.0,
                r_bc.data_ptr(),
                b,
                n,
                c,
                -1.0,
                1.0,
                got.data_ptr(),
                ws.data_ptr(),
            )
            == 1
        )
        assert (
            dll.qm_fix_madd_r(
                qa.data_ptr(),
                0.5,
                f.data_ptr(),
                qb.data_ptr(),
                bad,
                None,
                b,
                n,
                c,
                -1.0,
                1.0,
                got.data_ptr(),
                ws.data_ptr(),
            )
            == 1
        )
