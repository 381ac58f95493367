"""Fixed-point core: multipliers, half-to-even requantization, symmetric quantization, vs the
independent float64 reference and exact rational arithmetic (Python's Fraction)."""

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantmodel.intarith import ckernels
from quantmodel.intarith import fixedpoint as fp
from quantmodel.intarith import reference as ref
from workloads.errors import ConfigError

I32 = (fp.INT32_MIN, fp.INT32_MAX)
SCALES = st.one_of(
    st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, 1.0, 2.0**-31, 2.0**-32, 2.0**-33, 2.0**31, 5e-324, 1 - 2.0**-53]),
)


def exact_requant(acc: int, mult: int, shift: int, qmin: int, qmax: int) -> int:
    """Oracle: round() of a Fraction is round half to even, exactly."""
    v = (
        round(Fraction(acc * mult) / Fraction(2) ** (31 + shift))
        if 31 + shift >= 0
        else acc * mult * 2 ** -(31 + shift)
    )
    return max(qmin, min(qmax, v))


@settings(max_examples=300, deadline=None)
@given(SCALES)
def test_multiplier_normalised_accurate_and_matches_reference(r):
    mult, shift = fp.quantize_multiplier(r)
    assert 2**30 <= mult < 2**31
    approx = Fraction(mult) / Fraction(2) ** (31 + shift)
    assert abs(approx - Fraction(r)) <= Fraction(r) * Fraction(1, 2**31)
    assert (mult, shift) == ref.quantize_multiplier(r)


def test_multiplier_zero_and_bad_scales():
    assert fp.quantize_multiplier(0.0) == (0, 0)
    acc = torch.tensor([5, -7, fp.INT32_MAX], dtype=torch.int32)
    assert fp.requantize(acc, 0, 0, -127, 127).tolist() == [0, 0, 0]
    for bad in (-1.0, float("nan"), float("inf"), "0.5", True):
        with pytest.raises(ConfigError):
            fp.quantize_multiplier(bad)
    assert fp.quantize_multiplier(3.0) == (3 * 2**29, -2)  # scale > 1: negative shift


def test_ties_round_half_to_even_both_signs():
    m, s = fp.quantize_multiplier(0.5)
    acc = torch.tensor([1, 3, 5, 7, -1, -3, -5, -7, 2, -2], dtype=torch.int32)
    want = [0, 2, 2, 4, 0, -2, -2, -4, 1, -1]
    assert fp.requantize(acc, m, s, *I32).tolist() == want
    assert ref.requantize(acc, m, s, *I32).long().tolist() == want


@pytest.mark.parametrize("total_shift", [1, 2, 17, 31, 32, 33, 45, 61, 62])
def test_ties_at_every_shift_match_fraction_oracle(total_shift):
    mult, shift = 2**30, total_shift - 31  # value = acc / 2^(total_shift - 30)
    k = total_shift - 30
    if k >= 1:
        vals = [(2 * j + 1) * 2 ** (k - 1) for j in range(-6, 6)]  # exact halves
    else:  # below one: use multiplier 3 * 2^29 so that acc * 1.5 * 2^-k has halves
        mult, vals = 3 * 2**29, list(range(-9, 10))
    vals = [v for v in vals if fp.INT32_MIN <= v <= fp.INT32_MAX]
    acc = torch.tensor(vals, dtype=torch.int64)
    want = [exact_requant(v, mult, shift, *I32) for v in vals]
    assert fp.requantize(acc, mult, shift, *I32).tolist() == want
    assert ref.requantize(acc, mult, shift, *I32).long().tolist() == want


@settings(max_examples=60, deadline=None)
@given(SCALES, st.integers(0, 2**31), st.sampled_from([(-127, 127), (-7, 7), (-31, 31), I32, (0, 255)]))
def test_requantize_matches_reference_and_oracle(r, seed, qrange):
    g = torch.Generator().manual_seed(seed)
    acc = torch.cat(
        [
            torch.randint(fp.INT32_MIN, fp.INT32_MAX, (400,), generator=g),
            torch.randint(-1000, 1000, (400,), generator=g),
            torch.tensor([fp.INT32_MIN, fp.INT32_MAX, 0, 1, -1]),
        ]
    ).to(torch.int32)
    m, s = fp.quantize_multiplier(r)
    got = fp.requantize(acc, m, s, *qrange)
    assert got.dtype == torch.int32
    assert torch.equal(got.long(), ref.requantize(acc, m, s, *qrange).long())
    for v in acc[-5:].tolist():
        assert int(fp.requantize(torch.tensor([v]), m, s, *qrange)) == exact_requant(v, m, s, *qrange)


def test_requantize_per_channel_matches_reference_with_extreme_scales():
    g = torch.Generator().manual_seed(3)
    scales = torch.tensor([1e-12, 2.0**-40, 3e-5, 0.37, 1.0, 1.5, 2.0**20, 0.0, 1e30, 2.0**-62])
    mult, shift = fp.quantize_multipliers(scales)
    acc = torch.randint(fp.INT32_MIN, fp.INT32_MAX, (64, scales.numel()), generator=g, dtype=torch.int64)
    acc[0] = fp.INT32_MIN
    acc[1] = fp.INT32_MAX
    got = fp.requantize(acc.to(torch.int32), mult, shift, -127, 127)
    assert torch.equal(got.long(), ref.requantize(acc, mult, shift, -127, 127).long())
    assert (got[:, 0] == 0).all() and (got[:, 7] == 0).all()  # tiny and zero scales
    assert (got[2:, 8].abs() == 127).all()  # huge scale saturates every nonzero accumulator
    per_tensor = [fp.requantize(acc[:, j], int(mult[j]), int(shift[j]), -127, 127) for j in range(scales.numel())]
    assert torch.equal(got, torch.stack(per_tensor, dim=1))


def test_requantize_scale_convenience():
    acc = torch.arange(-50, 50, dtype=torch.int32).reshape(10, 10)
    scales = torch.linspace(0.01, 2.0, 10, dtype=torch.float64)
    got = fp.requantize_scale(acc, scales, -127, 127)
    assert torch.equal(got.long(), ref.requantize_scale(acc, scales, -127, 127).long())


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_quantize_ranges_ties_and_reference(bits):
    qmin, qmax = fp.qrange(bits)
    assert (qmin, qmax) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
    scale = 0.25
    x = torch.tensor([0.625, -0.625, 0.375, -0.375, 0.125, -0.125, 1e9, -1e9, 0.0])  # halves: 2.5, 1.5, 0.5
    q = fp.quantize(x, scale, bits)
    assert q.dtype == torch.int8
    assert q.tolist() == [2, -2, 2, -2, 0, 0, qmax, qmin, 0]
    g = torch.Generator().manual_seed(bits)
    y = torch.randn(33, 17, generator=g) * 3
    assert torch.equal(fp.quantize(y, 0.1, bits).double(), ref.quantize(y, 0.1, bits))


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_weight_per_channel_roundtrip_and_zero_channel(bits):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(12, 40, generator=g) * torch.logspace(-3, 2, 12).unsqueeze(1)
    w[5] = 0.0
    q, scale = fp.quantize_weight_per_channel(w, bits)
    assert q.shape == w.shape and scale.shape == (12,) and scale.dtype == torch.float32
    _, qmax = fp.qrange(bits)
    assert (q.abs() <= qmax).all() and (q.abs().amax(dim=1)[torch.arange(12) != 5] == qmax).all()
    assert (q[5] == 0).all() and scale[5] == 1.0
    err = (fp.dequantize(q, scale, axis=0).double() - w.double()).abs()
    assert (err <= scale.double().unsqueeze(1) / 2 * (1 + 1e-6)).all()
    assert torch.equal(q.double(), ref.quantize(w, scale, bits, axis=0))


def test_bad_quantize_arguments():
    with pytest.raises(ConfigError):
        fp.quantize(torch.ones(3), 0.0, 8)
    with pytest.raises(ConfigError):
        fp.quantize(torch.ones(3, 2), torch.ones(3), 8)  # per-channel needs an axis
    with pytest.raises(ConfigError):
        fp.qrange(1)
    with pytest.raises(ConfigError):
        fp.requantize(torch.ones(3), 2**30, 0, -127, 127)  # float accumulator


def test_rounding_right_shift_tensor_shift_equals_scalar():
    x = torch.tensor([-7, -6, -5, -3, -2, -1, 0, 1, 2, 3, 5, 6, 7] * 3, dtype=torch.int64)
    s = torch.tensor([0] * 13 + [1] * 13 + [2] * 13)
    got = fp.rounding_right_shift(x, s)
    want = torch.cat([fp.rounding_right_shift(x[:13], k) for k in range(3)])
    assert torch.equal(got, want)
    assert fp.rounding_right_shift(torch.tensor([6, 10, -6, -10]), 2).tolist() == [2, 2, -2, -2]


def test_requantize_leaves_input_untouched_and_handles_large_tensors():
    g = torch.Generator().manual_seed(11)
    acc = torch.randint(fp.INT32_MIN, fp.INT32_MAX, (300, 700), generator=g, dtype=torch.int64)  # > 1 chunk
    before = acc.clone()
    mult, shift = fp.quantize_multipliers(torch.rand(700, generator=g, dtype=torch.float64) * 1e-6)
    got = fp.requantize(acc, mult, shift, -127, 127, torch.int8)
    assert torch.equal(acc, before)
    assert got.dtype == torch.int8 and torch.equal(got.double(), ref.requantize(acc, mult, shift, -127, 127))


def test_prepared_requantizer_equals_requantize():
    g = torch.Generator().manual_seed(12)
    acc = torch.randint(fp.INT32_MIN, fp.INT32_MAX, (5, 9), generator=g, dtype=torch.int32)
    scales = torch.tensor([1e-3, 0.0, 2.0**40, 1e-25, 0.5, 3.0, 2.0**31, 2.0**30, 7e-8])  # incl. s == 0
    mult, shift = fp.quantize_multipliers(scales)
    rq = fp.Requantizer(mult, shift, -(2**31), 2**31 - 1)
    assert torch.equal(rq(acc), fp.requantize(acc, mult, shift, -(2**31), 2**31 - 1))
    assert torch.equal(rq(acc).double(), ref.requantize(acc, mult, shift, -(2**31), 2**31 - 1))


def test_requantize_memo_keeps_a_devices_requantizers_through_host_churn():
    """requantize() memoises prepared Requantizers per device: the host's ever-new per-step constants
    (staged operands) never evict a device's (a CUDA graph captured after them must find every
    constant the eager forward made), and nothing is evicted while a graph is being captured
    (``kept_constants``). The device here is ``meta``, which holds tensors without a GPU."""
    meta, cpu = torch.device("meta"), torch.device("cpu")
    dev_rq = fp._requantizer(1 << 30, 3, -127, 127, torch.int8, meta)
    for i in range(fp._CACHE_MAX + 5):  # more new host constants than the memo holds
        fp._requantizer((1 << 30) + i, 3, -127, 127, torch.int8, cpu)
    assert fp._requantizer(1 << 30, 3, -127, 127, torch.int8, meta) is dev_rq
    with fp.kept_constants() as kept:
        for i in range(fp._CACHE_MAX + 5):
            fp._requantizer((1 << 29) + i, 2, -127, 127, torch.int8, meta)
        assert fp._requantizer(1 << 30, 3, -127, 127, torch.int8, meta) is dev_rq  # not cleared meanwhile
    assert kept[-1] is dev_rq and len(kept) == fp._CACHE_MAX + 6
    fp._REQUANTIZERS.by_device.pop("meta")


# (acc, multiplier, s = 31 + shift): acc * multiplier is a few units from an odd multiple of 2**(s-1),
# so the float64 product acc * (multiplier * 2**-s) rounds onto or across the half integer and a plain
# float64 round would be off by one. Found by factoring (2j+1) * 2**(s-1) + d (sympy.divisors).
NEAR_TIES = [
    (1967848214, 1171758570, 62),
    (1770657511, 1302252409, 62),
    (2072967687, 1112339099, 62),
    (708377561, 1126293188, 48),
    (505796296, 1492807739, 48),
    (528736261, 1924194307, 48),
    (1283343006, 1154394974, 40),
    (1467737763, 1080388646, 40),
    (1399670075, 1094655688, 40),
]


@pytest.mark.parametrize("qrange", [(-127, 127), (-32767, 32767), I32])
def test_near_tie_fallback_is_exact_per_tensor_and_per_channel(qrange):
    naive_wrong = 0
    cols_acc, cols_m, cols_s = [], [], []
    for acc_v, mult, s in NEAR_TIES:
        acc = torch.tensor([acc_v, -acc_v, acc_v - 1, 7, 0], dtype=torch.int32)
        want = [exact_requant(int(v), mult, s - 31, *qrange) for v in acc.tolist()]
        naive = torch.round(acc.double() * (mult * 2.0**-s)).clamp(*qrange)  # float64 without the fallback
        naive_wrong += int((naive != torch.tensor(want, dtype=torch.float64)).sum())
        assert fp.requantize(acc, mult, s - 31, *qrange).tolist() == want
        assert ref.requantize(acc, mult, s - 31, *qrange).long().tolist() == want
        cols_acc.append(acc), cols_m.append(mult), cols_s.append(s - 31)
    if qrange != I32:  # tie half integers beyond the clamp do not matter: only check where they do
        assert naive_wrong > 0
    # per channel, mixed with safe channels (real scale 1e-3): near-tie channels in the majority (whole
    # tensor checked) and in the minority (only their columns checked)
    for n_safe in (1, 40):
        safe_acc = torch.tensor([123456, -98765, 5, -5, 0]).unsqueeze(1).expand(5, n_safe)
        acc = torch.cat([torch.stack(cols_acc, dim=1), safe_acc], dim=1).to(torch.int32)  # [5, 9 + n_safe]
        m_safe, s_safe = fp.quantize_multiplier(1e-3)
        mult = torch.tensor(cols_m + [m_safe] * n_safe)
        shift = torch.tensor(cols_s + [s_safe] * n_safe)
        got = fp.requantize(acc, mult, shift, *qrange)
        assert torch.equal(got.long(), ref.requantize(acc, mult, shift, *qrange).long())


@pytest.mark.parametrize("scale", [0.0123, float(torch.tensor(0.0123, dtype=torch.float32)), 2.0**-20])
def test_dequantize_and_blocked_quantize_equal_the_float64_definitions(scale):
    """dequantize's float32 product (int8/int16 codes, int32 codes below 2**24, float32 scales) and
    quantize's blocked per-tensor pipeline (> 64K elements) give the bits of their float64 definitions."""
    g = torch.Generator().manual_seed(4)
    q32 = torch.randint(-(2**25), 2**25, (3000,), generator=g, dtype=torch.int32)
    for q in (q32, q32 // 4, q32.clamp(-32767, 32767).to(torch.int16), q32.clamp(-127, 127).to(torch.int8)):
        want = (q.double() * scale).float()
        assert torch.equal(fp.dequantize(q, scale).view(torch.int32), want.view(torch.int32))
    x = torch.randn(70_000, generator=g) * 100 * scale
    x[:1000] = (torch.arange(-500, 500) + 0.5) * scale  # exact ties x / s = k + 1/2 where representable
    for xx in (x, x.half()):
        got = fp.quantize(xx, scale, 8)
        assert torch.equal(got.double(), ref.quantize(xx, scale, 8))
        assert torch.equal(got, torch.round(xx.double() / scale).clamp(-127, 127).to(torch.int8))


# ---- activation quantization: multiply by the prepared float32 reciprocal ----------------------------
def test_activation_quantization_multiplies_by_fp32_reciprocal_ties_even():
    aq = fp.ActQuantizer(0.25, 8)
    assert aq.recip == 4.0 and aq.out_dtype == torch.int8
    x = torch.tensor([0.625, -0.625, 0.375, -0.375, 0.125, -0.125, 1e9, -1e9, 0.0])  # 2.5, 1.5, 0.5
    assert aq(x).tolist() == [2, -2, 2, -2, 0, 0, 127, -127, 0]
    # the definition is the multiply, not the division: 0.35f / 0.1f = 3.4999999 in float64 (-> 3), but
    # 0.35f * fp32(1/0.1f) = 0.35f * 10 = 3.49999994, whose float32 rounding is the tie 3.5 (-> 4)
    s = float(torch.tensor(0.1, dtype=torch.float32))
    x = torch.tensor([0.35, -0.35], dtype=torch.float32)
    assert fp.act_reciprocal(s) == 10.0
    assert fp.quantize_act(x, s, 8).tolist() == [4, -4] and fp.quantize(x, s, 8).tolist() == [3, -3]
    assert ref.quantize_act(x, s, 8).tolist() == [4.0, -4.0]


@pytest.mark.parametrize("bits", [4, 8, 16, 24])
def test_activation_quantization_equals_reference_on_every_fp16_value(bits):
    bits_all = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    h = bits_all.view(torch.float16)
    h = h[torch.isfinite(h)]  # every finite fp16 value
    g = torch.Generator().manual_seed(bits)
    f32 = torch.randn(150_000, generator=g) * torch.logspace(-6, 6, 150_000)  # > one 64K block
    f64 = f32.double() * (1 + 1e-9)  # float64 input: rounded to float32 first
    for s in (float(torch.tensor(0.1, dtype=torch.float32)), 3.0 / 7.0, 2.0**-20):
        aq = fp.ActQuantizer(s, bits)
        for x in (h, f32, f64):
            got = aq(x)
            assert got.dtype == (torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32)
            assert torch.equal(got.double(), ref.quantize_act(x, s, bits)), (s, x.dtype)


def test_activation_quantizer_refuses_bad_arguments():
    for s in (0.0, -1.0, float("inf"), float("nan"), 1e-300, True):
        with pytest.raises(ConfigError):
            fp.ActQuantizer(s, 8)
    with pytest.raises(ConfigError):
        fp.ActQuantizer(0.1, 32)
    with pytest.raises(ConfigError):
        fp.ActQuantizer(0.1, 8)(torch.ones(3, dtype=torch.int32))


# ---- compiled C loops (quantmodel.intarith.ckernels) == the eager torch definitions, bit for bit ---------------
needs_c = pytest.mark.skipif(
    ckernels.lib() is None, reason="C kernels unavailable (no compiler) or disabled (QUANTMODEL_CKERNELS=0)"
)


@needs_c
@pytest.mark.parametrize("out_dtype", [torch.int8, torch.int16, torch.int32, torch.float64])
def test_compiled_requantize_equals_torch_path_and_oracle(out_dtype):
    """Safe, near-tie (checked) and saturating channels, per channel and per tensor, whole tensors and
    column blocks of a wider output, with the bias fused: the same values as the torch ops."""
    g = torch.Generator().manual_seed(3)
    q = {torch.int8: 127, torch.int16: 32767}.get(out_dtype, fp.INT32_MAX)
    tie_m = [m for _, m, _ in NEAR_TIES]
    tie_s = [s - 31 for _, _, s in NEAR_TIES]
    m_safe, s_safe = fp.quantize_multiplier(0.37)
    m_sat, s_sat = fp.quantize_multiplier(3.0e9)  # real scale > 2**31: saturates
    mult = torch.tensor(tie_m + [m_safe, m_sat, 0])
    shift = torch.tensor(tie_s + [s_safe, s_sat, 0])
    n = mult.numel()
    acc = torch.randint(-(2**31), 2**31, (37, n), generator=g, dtype=torch.int64).to(torch.int32)
    acc[:9, :9] = torch.tensor([a for a, _, _ in NEAR_TIES], dtype=torch.int32).expand(9, 9)  # the near ties
    acc[9, :] = 0
    bias = torch.randint(-(2**20), 2**20, (n,), generator=g, dtype=torch.int32)
    acc_b = acc.clamp(-(2**31) + 2**20, 2**31 - 1 - 2**20)  # the sum with the bias stays in int32
    for m, s in ((mult, shift), (tie_m[0], tie_s[0]), (m_safe, s_safe)):
        rq = fp.Requantizer(m, s, -q, q, out_dtype)
        got = rq(acc)
        with ckernels.disabled():
            want = rq(acc)
        assert got.dtype == out_dtype and torch.equal(got, want)
        wide = torch.zeros((37, n + 5), dtype=out_dtype)  # a column block of a wider output
        assert rq.fused(acc_b, wide[:, 2 : 2 + n], bias)
        with ckernels.disabled():
            want_b = rq(acc_b + bias)
        assert torch.equal(wide[:, 2 : 2 + n], want_b) and not wide[:, :2].any() and not wide[:, 2 + n :].any()
    exact = [
        [exact_requant(int(a), mi, si, -q, q) for a in acc[:, j].tolist()]
        for j, (mi, si) in enumerate(zip(mult.tolist(), shift.tolist()))
    ]
    assert fp.Requantizer(mult, shift, -q, q, out_dtype)(acc).t().long().tolist() == exact


@needs_c
def test_compiled_activation_quantize_and_dequantize_equal_torch_path():
    every_fp16 = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    every_fp16 = every_fp16[torch.isfinite(every_fp16)]
    g = torch.Generator().manual_seed(5)
    x32 = torch.randn(70001, generator=g) * 50
    for scale, bits in ((0.0123, 8), (2.0**-7, 8), (0.3, 6), (1e-3, 16), (2.0**-20, 24)):
        aq = fp.ActQuantizer(scale, bits, torch.int32 if bits > 16 else None)
        for x in (every_fp16, x32, x32[:70000].reshape(7, 10000)[:, :1000]):  # the last: not contiguous
            got = aq(x)
            with ckernels.disabled():
                assert torch.equal(got, aq(x))
    for c in (1, 7, 64, 1500):  # fp16-mode smoothing multiply fused with the quantizer
        inv_h = (torch.rand(c, generator=g) * 4 + 0.01).half().float()
        aq = fp.ActQuantizer(0.05, 8)
        for x in ((torch.randn(3, 5, c, generator=g) * 9).half(), torch.randn(3, 5, c, generator=g) * 9):
            want = aq((x.half().float() * inv_h).half())
            assert torch.equal(fp.smooth_quantize_fp16(aq, x, inv_h), want)
    s = float(torch.tensor(0.0123, dtype=torch.float32))
    for q in (
        torch.randint(-127, 128, (999,), generator=g, dtype=torch.int8),
        torch.randint(-32767, 32768, (70001,), generator=g, dtype=torch.int16),
        torch.randint(-(2**24) + 1, 2**24, (5000,), generator=g, dtype=torch.int32),
        torch.tensor([2**24 + 1, -7], dtype=torch.int32),
    ):  # beyond 2**24: the float64 definition
        got = fp.dequantize(q, s)
        with ckernels.disabled():
            assert torch.equal(got, fp.dequantize(q, s))
        if q.dtype != torch.int32 or q.abs().max() < 2**24:
            big = float(torch.tensor(s * 1e4, dtype=torch.float32))  # saturating fp16 (the emulator's)
            h = fp.dequantize_c(q, big, torch.float16)
            assert torch.equal(h, (q.double() * big).float().clamp(-65504, 65504).half())


def test_per_tensor_consts_are_the_requantizers_constants():
    """fixedpoint.per_tensor_consts (the constants the C kernels take by value) = a per-tensor
    Requantizer's c / lim / m / s, over shifts from saturation (s < 0) to all-zero (s >= 63), a zero
    multiplier, and int8 to int32 output ranges; bad arguments are refused as Requantizer refuses them."""
    from quantmodel.intarith.fixedpoint import Requantizer, per_tensor_consts

    for qmin, qmax in ((-127, 127), (-32767, 32767), (-(2**31), 2**31 - 1), (0, 0)):
        for mult in (0, 2**30, 2**31 - 1, 1518500250):
            for shift in range(-40, 40, 3):
                rq = Requantizer(mult, shift, qmin, qmax)
                c, lim, m, s = per_tensor_consts(mult, shift, qmin, qmax)
                assert (c, lim, m, s) == (rq.c, rq.lim, int(rq.m), int(rq.s)) and rq.check == (lim != 2.0)
    with pytest.raises(ConfigError):
        per_tensor_consts(2**31, 0, -127, 127)
    with pytest.raises(ConfigError):
        per_tensor_consts(2**30, 0, 5, -5)
