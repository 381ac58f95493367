"""Exact int8 GEMMs: both paths equal the float64 reference, overflow is detected, never wrapped."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantmodel.intarith import fixedpoint as fp
from quantmodel.intarith import reference as ref
from quantmodel.intarith.intgemm import (
    AccumulatorOverflowError,
    PreparedLinear,
    int_linear,
    int_linear_requant,
    int_matmul,
)
from workloads.errors import ConfigError


def rand_i8(shape, g, lo=-128, hi=128):
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int8)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 70),
    st.integers(1, 40),
    st.sampled_from([(), (3,), (2, 2)]),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_int_matmul_equals_reference_both_paths(m, k, n, lead, with_bias, seed):
    g = torch.Generator().manual_seed(seed)
    a = rand_i8((*lead, m, k), g)
    b = rand_i8((k, n), g)
    bias = torch.randint(-(2**20), 2**20, (n,), generator=g, dtype=torch.int32) if with_bias else None
    want, overflow = ref.matmul(a, b, bias)
    assert not overflow
    got = int_matmul(a, b, bias)
    assert got.dtype == torch.int32 and got.shape == (*lead, m, n)
    assert torch.equal(got.double(), want)
    assert torch.equal(int_matmul(a, b, bias, backend="float"), got)  # _int_mm path == fallback
    bb = rand_i8((*lead, k, n), g)  # batched right operand (attention)
    got_b = int_matmul(a, bb)
    assert torch.equal(got_b.double(), ref.matmul(a, bb)[0])
    assert torch.equal(int_matmul(a, bb, backend="int_mm"), got_b)


def test_float64_fallback_for_long_k_batched():
    g = torch.Generator().manual_seed(1)
    a = rand_i8((2, 5, 2000), g)  # K * 128 * 128 > 2^24: float32 is not exact, float64 is used
    b = rand_i8((2, 2000, 6), g)
    assert torch.equal(int_matmul(a, b).double(), ref.matmul(a, b)[0])
    assert torch.equal(int_matmul(a, b), int_matmul(a, b, backend="int_mm"))


def test_overflow_detected_with_layer_name_and_safe_case_passes():
    k = 140_000
    a = torch.full((4, k), 127, dtype=torch.int8)
    b = torch.full((k, 3), 127, dtype=torch.int8)
    with pytest.raises(AccumulatorOverflowError, match="blocks.0.mlp.fc2") as e:
        int_matmul(a, b, layer="blocks.0.mlp.fc2")
    assert e.value.max_abs == k * 127 * 127 and e.value.layer == "blocks.0.mlp.fc2"
    # same K and magnitudes, alternating signs: the bound exceeds int32 but the sums do not
    sign = torch.where(torch.arange(k) % 2 == 0, 1, -1).to(torch.int8)
    safe = int_matmul(a * sign, b)
    assert torch.equal(safe.double(), ref.matmul(a * sign, b)[0])
    # largest K that is safe by the dtype bound alone: no scan, exact result
    k2 = 131_071
    ok = int_matmul(torch.full((1, k2), -128, dtype=torch.int8), torch.full((k2, 1), -128, dtype=torch.int8))
    assert int(ok) == k2 * 128 * 128


def test_bias_overflow_detected():
    a = torch.full((2, 1000), 127, dtype=torch.int8)
    b = torch.full((1000, 2), 127, dtype=torch.int8)
    bias = torch.tensor([0, fp.INT32_MAX - 1000 * 127 * 127 + 1], dtype=torch.int32)
    with pytest.raises(AccumulatorOverflowError, match="cross_attn"):
        int_matmul(a, b, bias, layer="blocks.1.cross_attn.proj")
    bias[1] -= 1  # exactly INT32_MAX: fits
    assert int(int_matmul(a, b, bias)[0, 1]) == fp.INT32_MAX


def test_all_zero_inputs_and_bad_inputs():
    z = int_matmul(torch.zeros(3, 8, dtype=torch.int8), torch.zeros(8, 5, dtype=torch.int8))
    assert z.dtype == torch.int32 and not z.any()
    with pytest.raises(ConfigError):
        int_matmul(torch.zeros(3, 8), torch.zeros(8, 5, dtype=torch.int8))
    with pytest.raises(ConfigError):
        int_matmul(torch.zeros(3, 8, dtype=torch.int8), torch.zeros(7, 5, dtype=torch.int8))
    with pytest.raises(ConfigError):
        int_matmul(
            torch.zeros(3, 8, dtype=torch.int8), torch.zeros(8, 5, dtype=torch.int8), torch.zeros(5, dtype=torch.int64)
        )


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_quantized_linear_pipeline_matches_reference(bits):
    """float -> int8 activations, per-channel int weights, int32 bias, GEMM, per-channel requant."""
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(2, 9, 48, generator=g) * 2
    w = torch.randn(24, 48, generator=g) * 0.2
    s_x = float(fp.symmetric_scale(x.abs().max(), 8))
    q_x = fp.quantize(x, s_x, 8)
    q_w, s_w = fp.quantize_weight_per_channel(w, bits)
    bias = torch.randint(-5000, 5000, (24,), generator=g, dtype=torch.int32)
    s_out = 0.02
    real = s_x * s_w.double() / s_out
    mult, shift = fp.quantize_multipliers(real)
    w_t = q_w.t().contiguous()
    acc = int_linear(q_x, w_t, bias, layer="blocks.0.attn.qkv")
    got = fp.requantize(acc, mult, shift, *fp.qrange(8))
    want = ref.linear_requant(q_x, w_t, bias, mult, shift, *fp.qrange(8))
    assert torch.equal(got.double(), want)
    # float sanity: within the rigorous quantization-error bound of the float linear layer
    y = (x.double() @ w.double().t() + bias.double() * s_x * s_w.double()) / s_out
    sw = s_w.double()
    bound = 48 * (x.abs().max() * sw / 2 + w.abs().amax(dim=1).double() * s_x / 2 + s_x * sw / 4) / s_out + 0.5 + 1e-6
    inside = y.abs() < 127
    assert ((got.double() - y).abs() <= bound)[inside].all()
    high = y > 127 + bound  # surely above the range: saturated, not wrapped
    assert high.any() and (got[high] == 127).all()


@pytest.mark.parametrize("per_channel", [True, False])
def test_wide_column_blocks_and_fused_requant_match_reference(per_channel):
    """CPU splits wide products (N > 768, M >= 256) into column blocks; the fused GEMM + requant
    writes each block straight into the output. Both equal the reference; scales span the float64
    fast path and its near-tie recomputation (tiny scales) and saturation."""
    g = torch.Generator().manual_seed(5)
    m, k, n = 260, 24, 801
    x = rand_i8((2, m // 2, k), g)
    w_t = rand_i8((k, n), g)
    bias = torch.randint(-(2**20), 2**20, (n,), generator=g, dtype=torch.int32)
    acc = int_linear(x, w_t, bias)
    want_acc, _ = ref.matmul(x.reshape(m, k), w_t, bias)
    assert torch.equal(acc.reshape(m, n).double(), want_acc)
    if per_channel:
        scales = torch.rand(n, generator=g, dtype=torch.float64) * 1e-3
        scales[::7] *= 1e-9  # s > 46: the checked path
        scales[3] = 0.0
        scales[5] = 2.0**40
        mult, shift = fp.quantize_multipliers(scales)
    else:
        mult, shift = fp.quantize_multiplier(3e-14)
    for qmin, qmax, dtype in ((-127, 127, torch.int8), (-32767, 32767, torch.int32)):
        rq = fp.Requantizer(mult, shift, qmin, qmax, dtype)
        got = int_linear_requant(x, w_t, bias, rq, layer="blocks.0.mlp.fc1")
        want = ref.requantize(want_acc, mult, shift, qmin, qmax)
        assert got.dtype == dtype and got.shape == (2, m // 2, n)
        assert torch.equal(got.reshape(m, n).double(), want)
        assert torch.equal(rq(acc), got)
        for b in (bias, None):  # the load-time prepared layer: the same integers
            prep = PreparedLinear(w_t, b, rq, "blocks.0.mlp.fc1")
            assert prep.proved and torch.equal(prep(x), int_linear_requant(x, w_t, b, rq))
            assert torch.equal(prep(x[:1, :5]), int_linear_requant(x[:1, :5], w_t, b, rq))  # one column block


def test_fused_requant_detects_overflow():
    k = 140_000
    a = torch.full((2, k), 127, dtype=torch.int8)
    b = torch.full((k, 3), 127, dtype=torch.int8)
    rq = fp.Requantizer(2**30, 0, -127, 127, torch.int8)
    with pytest.raises(AccumulatorOverflowError, match="blocks.2.attn.proj"):
        int_linear_requant(a, b, None, rq, layer="blocks.2.attn.proj")
    prep = PreparedLinear(b, None, rq, "blocks.2.attn.proj")  # no static proof: checked at run time
    assert not prep.proved
    with pytest.raises(AccumulatorOverflowError, match="blocks.2.attn.proj"):
        prep(a)
    small = torch.full((2, k), 1, dtype=torch.int8)  # these inputs fit: the exact result
    assert torch.equal(prep(small), int_linear_requant(small, b, None, rq))
