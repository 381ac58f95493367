"""Independent float64 reference of every integer op (fixedpoint, intgemm, intops int mode).

Written with plain PyTorch float64 arithmetic only; it does not import the integer modules, so a
bug there cannot hide here. Every function returns float64 tensors holding integers.

Why float64 is exact here: a float64 holds every integer of magnitude <= 2**53 exactly, and a sum,
difference or product of such integers is exact when the true result is <= 2**53 (the rounding
has nothing to round), whatever the order of summation. Multiplying by a power of two is exact.
Each function keeps its intermediates below 2**53 (bounds noted in the code). Where the integer
code needs more (the requantization product ``acc * multiplier`` reaches 2**62), the product is
never formed: :func:`mul_round_half_even` splits the multiplier into 15/16-bit halves so that
every partial product is below 2**47, and carries the exact value as ``hi * 2**32 + lo`` with
0 <= lo < 2**32; the rounding shift then works on (hi, lo) with exact comparisons. Floor division
uses the float quotient and corrects it by one with exact products (:func:`floor_div`).
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64
TWO32 = 2.0**32
I32_MIN, I32_MAX = -(2.0**31), 2.0**31 - 1

# constants of the integer kernels' specification (see quantmodel/intarith/intops.py for their sources)
WORK_FRAC_BITS = 12
EXP_A, EXP_B, EXP_C = 0.3585, 1.353, 0.344
ERF_A, ERF_B = 0.2888, 1.769
GUARD_BITS, Q16 = 8, 16


def _t(x) -> torch.Tensor:
    return x.to(F64) if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=F64)


def floor_div(a: torch.Tensor, b) -> torch.Tensor:
    """floor(a / b) for integer-valued a, b > 0, |a|, b < 2**53: float quotient, corrected by one."""
    a, b = _t(a), _t(b)
    q = torch.floor(a / b)
    q = q - (q * b > a).to(F64)
    q = q + ((q + 1) * b <= a).to(F64)
    return q


def floor_pow2(a: torch.Tensor, k) -> torch.Tensor:
    """floor(a / 2**k): scaling by a power of two is exact."""
    return torch.floor(_t(a) * torch.pow(2.0, -_t(k)))


def quantize_multiplier(real_scale: float) -> tuple[int, int]:
    """(multiplier, shift) with real ~= multiplier * 2**-(31 + shift), multiplier in [2^30, 2^31):
    exponent from log2, corrected until the mantissa lies in range, then round half to even."""
    r = _t(real_scale)
    if float(r) == 0.0:
        return 0, 0
    e = int(torch.floor(torch.log2(r)))

    def mant(e_: int) -> torch.Tensor:  # r * 2**(30 - e_), in two exact power-of-two steps
        f = 30 - e_
        return r * 2.0 ** (f // 2) * 2.0 ** (f - f // 2)

    while float(mant(e)) >= 2.0**31:
        e += 1
    while float(mant(e)) < 2.0**30:
        e -= 1
    mult = float(torch.round(mant(e)))
    if mult == 2.0**31:
        mult, e = 2.0**30, e + 1
    return int(mult), -1 - e


def mul_round_half_even(a: torch.Tensor, b, s) -> torch.Tensor:
    """round_half_even(a * b / 2**s) exactly, for integers |a| <= 2**31, 0 <= |b| <= 2**31, s >= 0.

    b = bh * 2^16 + bl (0 <= bl < 2^16): a*bh < 2^46 and a*bl < 2^47 are exact; the product is
    rebuilt as hi * 2^32 + lo (0 <= lo < 2^32) by exact floor steps. For s >= 32 the quotient is
    floor(hi / 2^(s-32)) and the remainder is compared with 2^(s-1) as the pair
    (2 * rem_hi + carry, low 32 bits) against (2^(s-32), 0); for s < 32 the quotient is
    hi * 2^(32-s) + floor(lo / 2^s) (exact while below 2^53; larger values only saturate later).
    s >= 63 gives 0 (the product is below 2^62).
    """
    a, b = _t(a), _t(b)
    s = _t(s)
    bh = torch.floor(b / 2**16)
    bl = b - bh * 2**16
    big_a, big_b = a * bh, a * bl
    a_hi = torch.floor(big_a / 2**16)
    a_lo = big_a - a_hi * 2**16
    lo_t = a_lo * 2**16 + big_b
    carry = torch.floor(lo_t / TWO32)
    lo = lo_t - carry * TWO32
    hi = a_hi + carry  # value = hi * 2^32 + lo

    # branch s >= 32
    t = (s - 32).clamp(min=0)
    q1 = torch.floor(hi / torch.pow(2.0, t))
    rh = hi - q1 * torch.pow(2.0, t)
    two_lo = 2 * lo
    c2 = torch.floor(two_lo / TWO32)
    l2 = two_lo - c2 * TWO32
    top = 2 * rh + c2
    above1 = (top > torch.pow(2.0, t)) | ((top == torch.pow(2.0, t)) & (l2 > 0))
    tie1 = (top == torch.pow(2.0, t)) & (l2 == 0)
    # branch s < 32
    sl = s.clamp(max=31)
    flo = torch.floor(lo / torch.pow(2.0, sl))
    q2 = hi * torch.pow(2.0, 32 - sl) + flo
    rem2 = lo - flo * torch.pow(2.0, sl)
    half2 = torch.pow(2.0, sl - 1)
    above2 = (rem2 > half2) & (sl > 0)
    tie2 = (rem2 == half2) & (sl > 0)

    big = s >= 32
    q = torch.where(big, q1, q2)
    above = torch.where(big, above1, above2)
    tie = torch.where(big, tie1, tie2)
    odd = (q - 2 * torch.floor(q / 2)) == 1
    out = q + (above | (tie & odd)).to(F64)
    return torch.where(s >= 63, torch.zeros_like(out), out)


def requantize(acc, multiplier, shift, qmin: int, qmax: int) -> torch.Tensor:
    """clamp(round_half_even(acc * multiplier / 2**(31 + shift)), qmin, qmax), exactly."""
    acc, m = _t(acc), _t(multiplier)
    s = 31 + _t(shift)
    shifted = mul_round_half_even(acc, m, s.clamp(min=0))
    sat = torch.sign(acc * m) * 2.0**40  # s < 0: |acc * m * 2^-s| >= 2^31 unless acc == 0
    out = torch.where(s < 0, sat, shifted)
    return out.clamp(qmin, qmax)


def requantize_scale(acc, real_scale, qmin: int, qmax: int) -> torch.Tensor:
    """requantize with (multiplier, shift) from this module's own quantize_multiplier."""
    rs = _t(real_scale)
    if rs.dim() == 0:
        m, s = quantize_multiplier(float(rs))
        return requantize(acc, m, s, qmin, qmax)
    pairs = [quantize_multiplier(v) for v in rs.tolist()]
    return requantize(acc, [p[0] for p in pairs], [p[1] for p in pairs], qmin, qmax)


def quantize(x: torch.Tensor, scale, bits: int, axis: int | None = None) -> torch.Tensor:
    """clamp(round_half_even(x / scale), -qmax, qmax) in float64."""
    q = 2.0 ** (bits - 1) - 1
    s = _t(scale)
    if s.dim() == 1:
        view = [1] * x.dim()
        view[axis % x.dim()] = -1
        s = s.reshape(view)
    return torch.round(_t(x) / s).clamp(-q, q)


def act_reciprocal(scale: float) -> float:
    """fp32(1/s): the float64 reciprocal rounded to float32 by torch's conversion."""
    return float(torch.tensor(1.0, dtype=F64).div(float(scale)).to(torch.float32))


def quantize_act(x: torch.Tensor, scale: float, bits: int) -> torch.Tensor:
    """Per-tensor activation quantization as the vector unit does it: the float64 product of the two
    float32 values fp32(x) and r = fp32(1/s) is exact (24 + 24 significand bits <= 53), rounding it
    to float32 gives the hardware's float32 product, then round half to even and clamp."""
    q = 2.0 ** (bits - 1) - 1
    r = act_reciprocal(scale)
    prod = x.to(torch.float32).to(F64) * r  # exact
    return torch.round(prod.to(torch.float32).to(F64)).clamp(-q, q)


def quantize_act_zp(x: torch.Tensor, scale: float, zero: int, bits: int) -> torch.Tensor:
    """Asymmetric per-tensor activation quantization: :func:`quantize_act`'s product, rounded half to
    even, plus the zero point, clamped to the full signed range [-2^(b-1), 2^(b-1) - 1]."""
    r = act_reciprocal(scale)
    prod = x.to(torch.float32).to(F64) * r  # exact
    return (torch.round(prod.to(torch.float32).to(F64)) + zero).clamp(-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)


def dynamic_quant_zp(rows: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token asymmetric quantization of float rows [R, k], spelled out per row in float64:
    ``lo = min(min x, 0)``, ``hi = max(max x, 0)``, ``s = fp32((hi - lo) / (2^b - 1))`` (1 when hi == lo),
    ``z = clamp(-2^(b-1) - rne(lo / s))``, ``q = clamp(rne(x / s) + z)``. Returns (q, s, z) as float64."""
    qmin, qmax = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    x = rows.to(F64)
    qs, ss, zs = [], [], []
    for r in x:
        lo, hi = min(float(r.min()), 0.0), max(float(r.max()), 0.0)
        s = float(torch.tensor((hi - lo) / (2.0**bits - 1) if hi > lo else 1.0, dtype=F64).to(torch.float32))
        z = min(max(qmin - float(torch.round(torch.tensor(lo / s, dtype=F64))), qmin), qmax)
        qs.append(torch.clamp(torch.round(r / s) + z, qmin, qmax))
        ss.append(s)
        zs.append(z)
    return torch.stack(qs), torch.tensor(ss, dtype=F64), torch.tensor(zs, dtype=F64)


def linear_zp(q, zero, w_t) -> torch.Tensor:
    """``sum_k (q - z) w`` per output: the GEMM of asymmetric codes with the zero point taken out,
    in float64 (per-tensor z: an int; per-token z [R]: a tensor), bound checked by :func:`matmul`."""
    z = _t(zero)
    if z.dim() == 1:
        z = z[:, None]
    return matmul(_t(q) - z, w_t)[0]


def dequantize(q: torch.Tensor, scale, axis: int | None = None) -> torch.Tensor:
    s = _t(scale)
    if s.dim() == 1:
        view = [1] * q.dim()
        view[axis % q.dim()] = -1
        s = s.reshape(view)
    return _t(q) * s


def matmul(a: torch.Tensor, b: torch.Tensor, bias=None) -> tuple[torch.Tensor, bool]:
    """Exact integer a @ b (+ bias) in float64 and whether any sum leaves int32.

    Exact while K * max|a| * max|b| + max|bias| < 2**53 (checked): all partial sums are integers
    below 2**53, so the summation order does not matter.
    """
    a, b = _t(a), _t(b)
    k = a.shape[-1]
    bound = k * float(a.abs().max()) * float(b.abs().max()) if a.numel() and b.numel() else 0.0
    if bias is not None:
        bound += float(_t(bias).abs().max())
    if bound >= 2.0**53:
        raise ValueError("reference matmul: bound beyond float64's exact integers")
    out = a @ b
    if bias is not None:
        out = out + _t(bias)
    return out, bool((out.abs() > I32_MAX).any()) if out.numel() else False


def linear_requant(a, b, bias, multiplier, shift, qmin: int, qmax: int) -> torch.Tensor:
    """GEMM + int32 bias + per-tensor or per-channel requantization, in float64."""
    acc, overflow = matmul(a, b, bias)
    if overflow:
        raise ValueError("reference: int32 accumulator overflow")
    return requantize(acc, multiplier, shift, qmin, qmax)


# ---- integer non-linear kernels -------------------------------------------------------------------
def working_shift(scale: float, frac_bits: int = WORK_FRAC_BITS) -> int:
    """Largest k >= 0 with scale * 2^k <= 2^-frac_bits (from log2, corrected exactly)."""
    target = 2.0**-frac_bits
    k = max(0, int(math.floor(math.log2(target / scale))))
    while k > 0 and scale * 2.0**k > target:
        k -= 1
    while scale * 2.0 ** (k + 1) <= target:
        k += 1
    return k


def _working(x, scale: float) -> tuple[torch.Tensor, float]:
    k = working_shift(scale)
    return floor_pow2(x, k), scale * 2.0**k


def i_exp(x: torch.Tensor, s_w: float) -> torch.Tensor:
    """I-BERT i-exp for x <= 0 (integers at scale s_w): every intermediate < 2^29."""
    q_ln2 = math.floor(math.log(2) / s_w)
    q_b = math.floor(EXP_B / s_w)
    q_c = math.floor(EXP_C / (EXP_A * s_w * s_w))
    z = floor_div(-x, q_ln2)
    q_p = x + z * q_ln2
    poly = (q_p + q_b) ** 2 + q_c
    return floor_pow2(poly, z.clamp(max=40))


def softmax_int(q, scale: float, out_bits: int = 8) -> tuple[torch.Tensor, float]:
    x = _t(q)
    d = x - x.amax(dim=-1, keepdim=True)
    d_w, s_w = _working(d, scale)
    e = i_exp(d_w, s_w)
    total = e.sum(dim=-1, keepdim=True)  # < n * 2^28
    factor = floor_div(torch.full_like(total, 2.0**52), total)
    p = out_bits - 1
    return floor_pow2(e * factor, 52 - p).clamp(max=2.0**p - 1), 2.0**-p  # e * factor <= 2^52


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(v)) for integers 0 <= v < 2^52: correctly rounded sqrt, corrected by one."""
    r = torch.floor(torch.sqrt(v))
    r = r - (r * r > v).to(F64)
    r = r + ((r + 1) * (r + 1) <= v).to(F64)
    return r


def layernorm_int(q, scale: float, eps: float = 1e-6) -> tuple[torch.Tensor, float]:
    x = _t(q)
    n = x.shape[-1]
    mean = floor_div(x.sum(dim=-1, keepdim=True), n)  # |sum| < 2^51
    y = x - mean
    amax = y.abs().amax(dim=-1, keepdim=True)
    k = (torch.floor(torch.log2(amax.clamp(min=1))) - 14).clamp(min=0)
    k = k + (amax >= torch.pow(2.0, 15 + k)).to(F64)
    k = k - ((k > 0) & (amax < torch.pow(2.0, 14 + k))).to(F64)
    y_k = floor_pow2(y, k)  # |y_k| <= 2^15
    eps_k = torch.floor(torch.clamp(eps * n / (scale * scale) / torch.pow(4.0, k), max=2.0**50))
    var = (y_k * y_k).sum(dim=-1, keepdim=True) + eps_k  # < 2^51
    std = isqrt(var.clamp(min=1))
    factor = floor_div(torch.full_like(std, 2.0**50), std)
    return floor_pow2(y_k * factor, 20), math.sqrt(n) / 2.0**30  # |y_k * factor| <~ 2^50


def gelu_int(q, scale: float) -> tuple[torch.Tensor, float]:
    x_w, s_w = _working(_t(q), scale)
    x_w = x_w.clamp(-(2.0**22), 2.0**22)
    s_e = s_w / math.sqrt(2.0)
    q_bb = math.floor(ERF_B / s_e)
    q_one = math.floor(1.0 / (ERF_A * s_e * s_e))
    t = math.ceil(math.log2(2 * q_one))
    while 2.0**t < 2 * q_one:
        t += 1
    while t > 0 and 2.0 ** (t - 1) >= 2 * q_one:
        t -= 1
    u = x_w.abs().clamp(max=q_bb)
    erf = torch.sign(x_w) * (q_one - (u - q_bb) ** 2)
    out = floor_pow2(x_w * (erf + q_one), t)  # |x_w| * 2 q_one <= 2^22 * 2^30
    return out, s_w * (ERF_A * s_e * s_e) * 2.0**t / 2.0


def silu_int(q, scale: float) -> tuple[torch.Tensor, float]:
    x_w, s_w = _working(_t(q), scale)
    x_w = x_w.clamp(-(2.0**22), 2.0**22)
    e1 = i_exp(x_w.clamp(max=0), s_w)
    e2 = i_exp((-x_w).clamp(max=0), s_w)
    sig = floor_div(e1 * 2.0**15, e1 + e2)  # < 2^43
    return floor_pow2(x_w * sig, 15), s_w


def _sat32(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(I32_MIN, I32_MAX)


def modulate_int(q_x, s_x, q_shift, s_shift, q_scale, s_scale, s_out, qmin, qmax) -> torch.Tensor:
    s_t = s_out / 2.0**GUARD_BITS
    x_t = requantize_scale(q_x, s_x / s_t, I32_MIN, I32_MAX)
    m = _sat32(requantize_scale(q_scale, s_scale * 2.0**Q16, I32_MIN, I32_MAX) + 2.0**Q16)
    p = _sat32(mul_round_half_even(x_t, m, Q16))
    acc = _sat32(p + requantize_scale(q_shift, s_shift / s_t, I32_MIN, I32_MAX))
    return mul_round_half_even(acc, 1.0, GUARD_BITS).clamp(qmin, qmax)


def gated_add_int(q_x, s_x, q_y, s_y, q_gate, s_gate, s_out, qmin, qmax) -> torch.Tensor:
    s_t = s_out / 2.0**GUARD_BITS
    y_t = requantize_scale(q_y, s_y / s_t, I32_MIN, I32_MAX)
    g = requantize_scale(q_gate, s_gate * 2.0**Q16, I32_MIN, I32_MAX)
    p = _sat32(mul_round_half_even(y_t, g, Q16))
    acc = _sat32(p + requantize_scale(q_x, s_x / s_t, I32_MIN, I32_MAX))
    return mul_round_half_even(acc, 1.0, GUARD_BITS).clamp(qmin, qmax)
