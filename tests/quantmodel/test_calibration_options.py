"""Calibration options named in the recipe: each range estimator against a hand-computed case, the
step aggregation rules, zero points (scale, codes, clamping at -128/127, ties) against the float64
reference, the zero-point correction folded into the int32 bias, alpha search and mixed precision."""

import dataclasses

import pytest
import torch

from quantmodel.emulator.integer import FakeQuantModel, IntegerEmulator
from quantmodel.eval.quality import eval_inputs, sample, sample_metrics
from quantmodel.intarith import fixedpoint, reference
from quantmodel.model.build import build_stdit
from quantmodel.model.config import STDiTConfig
from quantmodel.quant import estimators
from quantmodel.quant.artifact import build_artifact
from quantmodel.quant.calibrate import CalibStats, calibrate
from workloads.errors import ConfigError
from workloads.recipes import ALPHA_GRID, Recipe, get_recipe, recipe_from_dict

L = "blocks.0.mlp.fc2"


def _recipe(**kw) -> Recipe:
    return Recipe(**{"name": "t", "scheme": "asq", "w_bits": 8, "a_bits": 8, **kw})


def _stats(**tensors) -> CalibStats:
    steps = next(iter(tensors.values())).shape[0]
    return CalibStats(meta={"num_steps": steps}, tensors={f"{L}:{k}": v for k, v in tensors.items()})


# ---- estimators ------------------------------------------------------------------------------------
def test_ema_and_aggregation_rules_by_hand():
    assert float(estimators.ema(torch.tensor([1.0, 2.0, 3.0]), 0.5)) == 2.25  # (1*.5 + 2*.5)*.5 + 3*.5
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(estimators.aggregate(x, "max")) == 4.0
    assert float(estimators.aggregate(x, "mean")) == 2.5
    assert float(estimators.aggregate(x, "percentile", 50.0)) == 2.5  # linear interpolation
    assert float(estimators.aggregate(x, "ema", momentum=0.0)) == 4.0  # no memory: the last step


def test_absmax_and_ema_estimators_by_hand():
    # 2 steps, 3 batches, 2 channels: per-batch maxima 1, 4, 2 (step 0) and 8, 8, 8 (step 1)
    pos_b = torch.tensor([[[1.0, 0.5], [4.0, 0.0], [2.0, 1.0]], [[8.0, 0.0], [0.0, 8.0], [8.0, 8.0]]])
    st = _stats(
        in0=torch.tensor([4.0, 8.0]),
        in_pos=torch.tensor([4.0, 8.0]),
        in_neg=torch.tensor([1.0, 2.0]),
        in_ch_pos_b=pos_b,
        in_ch_neg_b=pos_b / 4,
    )
    assert estimators.act_range(st, L, [0, 1], _recipe()) == (-8.0, 8.0)
    assert estimators.act_range(st, L, [0, 1], _recipe(asq_agg="mean")) == (-6.0, 6.0)
    assert estimators.act_range(st, L, [0, 1], _recipe(act_symmetry="asymmetric")) == (-2.0, 8.0)
    # EMA over batches, momentum 0.5: step 0: (1*.5 + 4*.5)*.5 + 2*.5 = 2.25; step 1: 8; then max over steps
    neg, pos = estimators.step_ranges(st, L, [0, 1], _recipe(act_range="ema", ema_momentum=0.5))
    assert pos.tolist() == [2.25, 8.0] and neg.tolist() == [2.25, 8.0]


def test_percentile_estimator_by_hand():
    rows = torch.arange(1.0, 101.0).reshape(1, 25, 4)  # one step, the values 1..100
    st = _stats(in_rows=rows)
    r = _recipe(act_range="percentile", act_percentile=99.0)
    assert estimators.act_range(st, L, [0], r)[1] == pytest.approx(1 + 0.99 * 99, rel=1e-7)  # 99.01
    lo, hi = estimators.act_range(st, L, [0], dataclasses.replace(r, act_symmetry="asymmetric"))
    assert lo == 0.0 and hi == pytest.approx(99.01, rel=1e-7)  # no negative values: the range keeps 0


def test_mse_estimator_picks_the_grid_minimum_of_the_quantization_error():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 8, generator=g)
    x[0, 0, 0] = 40.0  # one outlier: clipping it costs less than the resolution it wastes
    st = _stats(in_rows=x, in_pos=x.amax().reshape(1), in_neg=(-x).amax().reshape(1))
    r = _recipe(act_range="mse", a_bits=6)
    hi = estimators.act_range(st, L, [0], r)[1]
    flat = x.reshape(-1).double()

    def err(c: float) -> float:  # the plain definition, one candidate at a time
        s = c / 31
        return float(((torch.clamp(torch.round(flat / s), -31, 31) * s - flat) ** 2).mean())

    cands = [40.0 * f for f in estimators.MSE_GRID]
    best = min(cands, key=err)
    assert hi == pytest.approx(best, rel=1e-6) and hi < 40.0
    assert err(hi) < err(40.0)


# ---- zero points -----------------------------------------------------------------------------------
def test_zero_point_of_a_range_by_hand():
    s, z = estimators.zero_point(-1.0, 3.0, 8)
    assert s == pytest.approx(4 / 255, rel=1e-7) and z == -64  # -128 - round(-63.75)
    q = fixedpoint.ZeroPointActQuantizer(s, z, 8)(torch.tensor([-1.0, 0.0, 3.0]))
    assert q.tolist() == [-128, -64, 127]  # lo, 0 and hi land on the code range's ends and z


def test_zero_point_quantizer_clamps_and_ties_like_the_reference():
    aq = fixedpoint.ZeroPointActQuantizer(0.5, -10, 8)  # 1/s = 2 exactly: x * 2 is exact
    x = torch.tensor([0.25, 0.75, -0.25, -0.75, 1.25, 100.0, -100.0, 68.25, 68.75, -59.25])
    q = aq(x)
    # ties to even: 0.5 -> 0, 1.5 -> 2, -0.5 -> -0, -1.5 -> -2, 2.5 -> 2, 136.5 -> 136 (126 after + z);
    # clamps at -128 / 127 after + z (137.5 and -118.5 are clamped before rounding: the same codes)
    assert q.tolist() == [-10, -8, -10, -12, -8, 127, -128, 126, 127, -128]
    assert torch.equal(q.double(), reference.quantize_act_zp(x, 0.5, -10, 8))
    g = torch.Generator().manual_seed(3)
    y = torch.randn(4096, generator=g) * 30
    aq6 = fixedpoint.ZeroPointActQuantizer(0.37, 5, 6)
    assert torch.equal(aq6(y).double(), reference.quantize_act_zp(y, 0.37, 5, 6))
    assert int(aq6(y).min()) == -32 and int(aq6(y).max()) == 31


def test_dynamic_zero_points_by_hand_and_the_corrected_gemm():
    rows = torch.tensor([[-1.0, 0.0, 3.0], [0.0, 0.0, 0.0], [255.0, 127.5, 126.5]])
    q, s, z = fixedpoint.dynamic_zero_points(rows, 8)
    assert q[0].tolist() == [-128, -64, 127] and int(z[0]) == -64
    assert int(z[1]) == -128 and float(s[1]) == 1.0  # an all-zero row: scale 1, every code is z
    assert (
        float(s[2]) == 1.0 and int(z[2]) == -128 and q[2].tolist() == [127, 0, -2]
    )  # ties: 127.5 -> 128, 126.5 -> 126
    w = torch.tensor([[3, -7], [127, -128 + 1], [-5, 9]], dtype=torch.int8)  # [k, n]
    acc = q.to(torch.int64) @ w.to(torch.int64)
    corr = acc - z.to(torch.int64)[:, None] * w.to(torch.int64).sum(dim=0)[None, :]
    assert torch.equal(corr.double(), reference.linear_zp(q, z, w))


# ---- recipes -------------------------------------------------------------------------------------------
def test_recipe_fields_validate_with_one_line_errors():
    with pytest.raises(ConfigError, match="recipe.act_range"):
        _recipe(act_range="median")
    with pytest.raises(ConfigError, match="recipe.alpha"):
        _recipe(alpha={"*.fc2": 1.5})
    with pytest.raises(ConfigError, match="recipe.layer_w_bits"):
        _recipe(layer_w_bits={"*.fc1": 5})
    with pytest.raises(ConfigError, match="recipe.channel_balance"):
        _recipe(channel_balance=True)
    with pytest.raises(ConfigError, match="recipe"):
        get_recipe("asq-bogus-w8a8")
    r = recipe_from_dict({"scheme": "asq", "w_bits": 8, "a_bits": 8, "alpha": {"*.fc2": 0.7, "*": 0.4}})
    assert r.alpha_for("blocks.0.mlp.fc2") == 0.7 and r.alpha_for("blocks.0.attn.qkv") == 0.4
    assert recipe_from_dict(r.to_dict()) == r  # the artifact header round trip
    v = get_recipe("vidit-q-w4a8")
    assert (v.scheme, v.act_symmetry, v.channel_balance, v.alpha) == ("dynamic", "asymmetric", True, 0.11)
    assert v.w_bits_for("blocks.3.mlp.fc1") == 8 and v.w_bits_for("blocks.3.attn.qkv") == 4


# ---- artifacts on the tiny model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tiny_workload):
    w = dataclasses.replace(tiny_workload, num_steps=2)
    model = build_stdit(STDiTConfig.from_workload(w), seed=0)
    return w, model, calibrate(model, w, num_prompts=2)


def test_asymmetric_static_bias_carries_the_zero_point_correction(setup):
    w, model, stats = setup
    sym = build_artifact(model, get_recipe("asq-w8a8"), stats, w.num_steps)
    asym = build_artifact(model, get_recipe("asq-asym-w8a8"), stats, w.num_steps)
    zs = [int(asym.get(0, n, "x_zero")) for n in asym.linears]
    assert any(z != 0 for z in zs) and all(-128 <= z <= 127 for z in zs)
    for n in asym.linears:
        z, wq = int(asym.get(0, n, "x_zero")), asym.get(0, n, "weight_q").to(torch.int64)
        assert torch.equal(asym.get(0, n, "weight_q"), sym.get(0, n, "weight_q"))  # weights unchanged
        xs, ws = float(asym.get(0, n, "x_scale")), asym.get(0, n, "w_scale").double()
        b = model.get_submodule(n).bias.detach().double()
        rows = torch.ones(wq.shape[0])
        if n.endswith(".attn.qkv") or n.endswith(".attn_temp.qkv") or n.endswith(".kv_linear"):
            continue  # V rows carry a consumer's folded factors: checked by the emulator's reference
        unfolded = asym.get(0, n, "bias_q").to(torch.int64) + z * wq.sum(dim=1)
        assert torch.equal(unfolded, torch.round(b * rows / (xs * ws)).to(torch.int64))


def test_searched_alpha_is_on_the_grid_and_beats_or_ties_the_fixed_one(setup):
    w, model, stats = setup
    art = build_artifact(model, get_recipe("asq-asearch-w8a8"), stats, w.num_steps)
    alphas = [round(float(art.get(0, n, "alpha")), 6) for n in art.linears]
    assert set(alphas) <= {round(a, 6) for a in ALPHA_GRID} and len(set(alphas)) > 1


def test_mixed_precision_weights_and_eager_equals_verified(setup):
    w, model, stats = setup
    art = build_artifact(model, get_recipe("vidit-q-w4a8"), stats, w.num_steps)
    for n in art.linears:
        big = int(art.get(0, n, "weight_q").abs().max())
        assert big <= 7 if not n.endswith((".fc1", ".fc2")) else big > 7
    z, y = eval_inputs(model, 1)
    for name in ("vidit-q-w4a8", "asq-asym-w6a6"):
        a = build_artifact(model, get_recipe(name), stats, w.num_steps)
        fast = sample(IntegerEmulator(model, a).model_fn, model, w, z, y)
        checked = sample(IntegerEmulator(model, a, verify=True).model_fn, model, w, z, y)
        assert torch.equal(fast, checked)
        fq = sample(FakeQuantModel(model, a).model_fn, model, w, z, y)
        assert sample_metrics(fast, fq)["sqnr_db"] > 20.0  # fake-quant models the zero points too


def test_rederive_checks_zero_points_and_mixed_precision(setup):
    from quantmodel.quant.rederive import rederive

    w, model, stats = setup
    for name in ("asq-asym-w6a6", "vidit-q-w4a8"):
        art = build_artifact(model, get_recipe(name), stats, w.num_steps)
        assert rederive(model, art, stats).ok
    art = build_artifact(model, get_recipe("asq-asym-w6a6"), stats, w.num_steps)
    key = f"0/{art.linears[0]}/x_zero"
    art.tensors[key] = art.tensors[key] + 1  # a zero point off by one
    rep = rederive(model, art, stats)
    assert not rep.ok and "x_zero" in rep.mismatches[art.linears[0]]
