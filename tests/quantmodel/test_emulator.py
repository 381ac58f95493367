"""The integer emulator: every integer GEMM + requantization (and every integer kernel in int mode)
equals the float64 reference on the same integer inputs, for several recipes in both modes; the
step picks the weight set; edge inputs (all-zero, saturating) stay exact."""

import dataclasses

import pytest
import torch

from quantmodel.emulator.integer import FakeQuantModel, IntegerEmulator, Verifier
from quantmodel.eval.quality import eval_inputs, sample, sample_metrics
from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.quant.artifact import build_artifact
from quantmodel.quant.calibrate import calibrate
from workloads.recipes import get_recipe


@pytest.fixture(scope="module")
def setup(tiny_workload):
    w = dataclasses.replace(tiny_workload, num_steps=2)
    model = build_stdit(STDiTConfig.from_workload(w), seed=0)
    stats = calibrate(model, w, num_prompts=2)
    z, y = eval_inputs(model, 1)
    ref = sample(lambda x, t, yy, s: model(x, t, yy), model, w, z, y)
    return w, model, stats, z, y, ref


CASES = [
    ("static-w8a8", "fp16", False),
    ("tsq-tsw-w4a8", "int", False),
    ("dynamic-w6a6", "fp16", True),
    ("groups2-cal-w6a6", "int", True),
    ("tsq-w6a6", "int", True),  # per-step scales, one weight set
    ("groups2-cal-tsq-w8a8", "fp16", False),
    ("asq-asym-w8a8", "fp16", False),  # zero points: static (folded into the bias) and dynamic per token
    ("asq-asym-w4a8", "int", False),
    ("vidit-q-w4a8", "int", False),
]


@pytest.mark.parametrize("name,mode,attn", CASES)
def test_integer_ops_match_reference_exactly(setup, name, mode, attn):
    w, model, stats, z, y, ref = setup
    recipe = dataclasses.replace(get_recipe(name), quantize_attention=attn)
    art = build_artifact(model, recipe, stats if recipe.scheme != "dynamic" or recipe.smoothing else None, w.num_steps)
    emu = IntegerEmulator(model, art, nonlinear=mode, verify=True)
    out = sample(emu.model_fn, model, w, z, y)
    v = emu.verifier
    assert v.mismatches == 0 and v.max_abs_diff_lsb == 0
    n_linear = 9 * model.cfg.depth
    # every linear of every block is checked at every step (plus 6 attention matmuls per block if quantized)
    assert (
        sum(1 for n in v.per_op if n.rsplit(".", 1)[-1] in ("qkv", "proj", "q_linear", "kv_linear", "fc1", "fc2"))
        == n_linear
    )
    assert all(v.per_op[n][0] == w.num_steps for n in art.linears)
    if attn:
        assert all(
            f"blocks.{i}.{a}.{m}" in v.per_op
            for i in range(2)
            for a in ("attn", "attn_temp", "cross_attn")
            for m in ("qk", "av")
        )
    if mode == "int":  # the integer kernels are checked too
        assert "blocks.0.norm1" in v.per_op and "blocks.1.mlp.act" in v.per_op and "blocks.0.res_mlp" in v.per_op
    # quality is a float metric: the quantized sample stays close to the float one
    assert sample_metrics(ref, out)["sqnr_db"] > 10.0
    assert min(v.layer_sqnr_db().values()) > 10.0


def test_step_selects_weight_set_and_fakequant_tracks_emulator(setup):
    w, model, stats, z, y, ref = setup
    art = build_artifact(model, get_recipe("tsq-tsw-w8a8"), stats, w.num_steps)
    emu = IntegerEmulator(model, art, nonlinear="fp16")
    x = z.repeat(2, 1, 1, 1, 1)
    yy = torch.cat([y, model.null_caption(1)])
    t = torch.tensor([500, 500])
    outs = []
    for step in range(2):
        outs.append(emu.model_fn(x, t, yy, step))
        assert emu.wset == step
    assert not torch.equal(outs[0], outs[1])  # same input, other weight set and scales
    fq = FakeQuantModel(model, art)
    em_out = sample(emu.model_fn, model, w, z, y)
    fq_out = sample(fq.model_fn, model, w, z, y)
    assert sample_metrics(em_out, fq_out)["sqnr_db"] > 25.0  # fake-quant is a close float stand-in


def test_tsq_steps_share_weights_but_not_scales_and_fakequant_tracks_emulator(setup):
    w, model, stats, z, y, ref = setup
    art = build_artifact(model, get_recipe("tsq-w8a8"), stats, w.num_steps)
    emu = IntegerEmulator(model, art, nonlinear="fp16")
    x = z.repeat(2, 1, 1, 1, 1)
    yy = torch.cat([y, model.null_caption(1)])
    t = torch.tensor([500, 500])
    outs = [emu.model_fn(x, t, yy, step) for step in range(2)]
    assert not torch.equal(outs[0], outs[1])  # same input and weights, the step's own scales
    p0, p1 = (emu._cache[(g, "blocks.0.mlp.fc2")] for g in (0, 1))
    assert p0.w_t is p1.w_t  # one weight tensor serves both steps
    assert p0.x_scale != p1.x_scale and not torch.equal(p0.mult, p1.mult)
    fq = FakeQuantModel(model, art)
    em_out = sample(emu.model_fn, model, w, z, y)
    fq_out = sample(fq.model_fn, model, w, z, y)
    assert sample_metrics(em_out, fq_out)["sqnr_db"] > 25.0


@pytest.mark.parametrize("mode", ["fp16", "int"])
def test_all_zero_and_saturating_inputs_stay_exact(setup, mode):
    w, model, stats, z, y, ref = setup
    art = build_artifact(model, get_recipe("asq-w8a8"), stats, w.num_steps)
    emu = IntegerEmulator(model, art, nonlinear=mode, verify=True)
    t = torch.tensor([999, 999])
    yy = torch.cat([y, y])
    emu.model_fn(torch.zeros(2, *z.shape[1:]), t, torch.zeros_like(yy), 0)
    emu.model_fn(z.repeat(2, 1, 1, 1, 1) * 1e4, t, yy * 1e3, 1)  # far beyond the calibrated ranges
    v = emu.verifier
    assert v.checks > 0 and v.mismatches == 0
    assert sum(v.saturated.values()) > 0  # the static ranges clip: saturation happened and was counted


def test_verifier_counts_mismatches():
    v = Verifier()
    v.compare("a", torch.tensor([1, 2, 3]), torch.tensor([1.0, 5.0, 3.0]))
    assert (v.mismatches, v.max_abs_diff_lsb, v.checks) == (1, 3, 1)


def test_fast_path_equals_verified_path_bit_for_bit(setup, mode="fp16"):
    """Without the verifier the emulator takes its fused conversions (fp16 mode: blocked fp16
    dequantize); the output must be the verified run's, bit for bit."""
    w, model, stats, z, y, ref = setup
    art = build_artifact(model, get_recipe("asq-w8a8"), stats, w.num_steps)
    x = z.repeat(2, 1, 1, 1, 1)
    yy = torch.cat([y, model.null_caption(1)])
    t = torch.tensor([999, 999])
    fast = IntegerEmulator(model, art, nonlinear=mode).model_fn(x, t, yy, 0)
    checked = IntegerEmulator(model, art, nonlinear=mode, verify=True)
    assert torch.equal(fast, checked.model_fn(x, t, yy, 0)) and checked.verifier.mismatches == 0


@pytest.mark.parametrize("mode", ["fp16", "int"])
def test_compiled_kernels_leave_the_emulator_output_unchanged(setup, mode):
    """The C loops (quantmodel.intarith.ckernels) are a speed-up only: a forward with them equals the eager
    torch-only forward bit for bit (static and dynamic recipes)."""
    from quantmodel.intarith import ckernels

    if ckernels.lib() is None:
        pytest.skip("C kernels unavailable (no compiler) or disabled (QUANTMODEL_CKERNELS=0)")
    w, model, stats, z, y, ref = setup
    x = z.repeat(2, 1, 1, 1, 1)
    yy = torch.cat([y, model.null_caption(1)])
    t = torch.tensor([999, 999])
    for name in ("asq-w8a8", "dynamic-w6a6"):
        art = build_artifact(model, get_recipe(name), stats if name != "dynamic-w6a6" else None, w.num_steps)
        emu = IntegerEmulator(model, art, nonlinear=mode)
        fast = emu.model_fn(x, t, yy, 1)
        with ckernels.disabled():
            eager = IntegerEmulator(model, art, nonlinear=mode).model_fn(x, t, yy, 1)
        assert torch.equal(fast, eager)


def test_step_parameter_quantization_equals_symmetric_quantize():
    """int mode's per-step 16-bit parameters (the lean path) = fixedpoint.symmetric_scale + quantize."""
    from quantmodel.emulator.datapath import PARAM_BITS
    from quantmodel.intarith import ckernels, fixedpoint

    g = torch.Generator().manual_seed(2)
    for mag in (0.0, 1e-7, 0.37, 3.0, 2e4):
        mod = torch.randn(2, 6, 64, generator=g) * mag
        for t in (mod[:, 2:3], mod[:, 0:1].contiguous(), mod[:1, 1:2]):  # chunks of the [B, 6, C] modulation
            s = float(fixedpoint.symmetric_scale(float(t.abs().max()), PARAM_BITS))
            want = fixedpoint.quantize(t, s, PARAM_BITS).to(torch.int32)
            got = IntegerEmulator._param_int(None, t)
            with ckernels.disabled():
                eager = IntegerEmulator._param_int(None, t)
            assert got.scale == s == eager.scale and torch.equal(got.q, want) and torch.equal(eager.q, want)


def test_trace_charges_every_smoothing_multiply_the_emulator_runs(setup):
    """The explicit SmoothQuant multiplies (the unfoldable layers and the caption path before every
    block's kv_linear, run at every step): the trace's smooth_mul elements per layer and step equal
    the elements the emulator multiplies."""
    from quantmodel.model.tracing import build_trace

    w, model, stats, z, y, ref = setup
    art = build_artifact(model, get_recipe("tsq-w8a8"), stats, w.num_steps)
    emu = IntegerEmulator(model, art, nonlinear="fp16")
    emu.use_program = False  # count in the eager ops (the program runs the same ops, tests above)
    seen: dict[str, int] = {}
    inner = emu._input_int8

    def counting(name, v, p):
        if p.smooth is not None and p.fold in ("mul", "text"):
            seen[name] = seen.get(name, 0) + (v.q if hasattr(v, "q") else v).numel()
        return inner(name, v, p)

    emu._input_int8 = counting
    sample(emu.model_fn, model, w, z, y)
    trace = art.annotate(build_trace(w))
    charged: dict[str, int] = {}
    for op in trace.ops:
        if op.kind == "smooth_mul":
            layer = op.name.removesuffix(".smooth")
            charged[layer] = charged.get(layer, 0) + op.elements
    assert "blocks.1.cross_attn.kv_linear" in seen
    assert charged == seen
