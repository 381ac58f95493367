"""Fixed-point arithmetic of the quantized STDiT: scales, multiplier/shift, rounding, saturation.

One rounding mode everywhere in this file: **round half to even** (banker's rounding).

Why: it is what PyTorch (``torch.round``, ``quantize_per_tensor``), fbgemm and ONNX ``QuantizeLinear``
use, so float->int quantization here matches the PyTorch quantization stack bit for bit; it is
unbiased, so the residual stream (28 blocks x 100 steps of requantized adds) does not drift the
way round-half-up does; and its hardware cost over round-half-up is one AND of the shifted-out
LSB (the ``bit`` term in :func:`rounding_right_shift`). gemmlowp/TFLite round half away from
zero; with ties being rare (a tie needs the low ``s`` bits of the product to be exactly 100..0)
the two differ only on those ties.

Requantization of an int32 accumulator (the integer pipeline of a MAC array's output stage)::

    real_scale  ~=  multiplier * 2**-(31 + shift),   multiplier in [2**30, 2**31)   (int32)
    out = clamp(round_half_even(acc * multiplier / 2**(31 + shift)), qmin, qmax)

``acc * multiplier`` is formed exactly in int64 (|acc| <= 2**31, multiplier < 2**31 so the product
is below 2**62), then ONE rounding right shift by ``s = 31 + shift`` (no TFLite-style double
rounding), then saturation. ``shift`` is negative for real scales > 1. Scales so small that
``s >= 63`` give 0 (the exact quotient is below 1/2); scales >= 2**31 (``s < 0``) saturate any
nonzero accumulator, which is what the exact result does for int32 output ranges.

Symmetric quantization (weights per output channel, activations per tensor) uses the narrow
range ``[-(2**(b-1)-1), 2**(b-1)-1]`` (int8 holds 4/6/8-bit values), scale = absmax / qmax.

**Activation quantization (per tensor) is a multiply, as the chip's vector unit does it** (it has no
divider in the data path; the reciprocal is a constant prepared with the layer)::

    r = fp32(1 / s)                        # float64 quotient rounded once to float32, prepared once
    q = clamp(round_half_even(fp32(fp32(x) * r)), -qmax, qmax)

``fp32(x) * r`` is one float32 multiply (correctly rounded), then round half to even to an integer,
then saturation (:class:`ActQuantizer`, :func:`quantize_act`; ``ACT_QUANT`` names the definition).
It can differ from ``round(x / s)`` by one code where ``x / s`` is within float32 rounding of a half
integer. Weights (offline, per channel) keep :func:`quantize`: ``round_half_even(fl64(w / s))``.
"""

from __future__ import annotations

import contextlib
import math
import struct

import torch

from quantmodel.intarith import ckernels, cudafused
from workloads.errors import ConfigError

ROUNDING = "half_to_even"
SUPPORTED_BITS = (4, 6, 8)
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
MULT_BITS = 31  # multiplier is a Q0.31 fraction in [0.5, 1)
_CHUNK_ELEMS = 1 << 16  # 64K float64 = 512 KiB per temporary: stays in L2 between the passes


# ---- ranges and scales ------------------------------------------------------------------------------
def qrange(bits: int) -> tuple[int, int]:
    """Symmetric narrow range of a signed ``bits``-bit integer: (-(2^(b-1)-1), 2^(b-1)-1)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ConfigError("bits", bits, "an integer bit-width in 2..16 (4, 6, 8 for int8 storage)")
    q = 2 ** (bits - 1) - 1
    return -q, q


def symmetric_scale(absmax: torch.Tensor | float, bits: int) -> torch.Tensor:
    """Scale ``absmax / qmax`` as float32 (the stored format); all-zero ranges get scale 1.0."""
    _, qmax = qrange(bits)
    a = torch.as_tensor(absmax, dtype=torch.float64)
    if not torch.isfinite(a).all() or (a < 0).any():
        raise ConfigError("absmax", a, "finite, non-negative values")
    s = torch.where(a > 0, a / qmax, torch.ones_like(a))
    return s.to(torch.float32)


# ---- activation quantization: multiply by a prepared float32 reciprocal ------------------------------
ACT_QUANT = "fp32-reciprocal-multiply"  # q = clamp(rhe(fp32(fp32(x) * fp32(1/s)))), see the module doc


def act_reciprocal(scale: float) -> float:
    """``fp32(1 / s)``: the float64 quotient rounded once to float32 (a python float holding it)."""
    if isinstance(scale, bool) or not _is_number(scale):
        raise ConfigError("scale", scale, "a finite positive number (per-tensor scale)")
    sf = float(scale)
    if not (math.isfinite(sf) and sf > 0):
        raise ConfigError("scale", scale, "a finite positive number (per-tensor scale)")
    r = struct.unpack("f", struct.pack("f", 1.0 / sf))[0] if 1.0 / sf < 3.4028234663852886e38 else math.inf
    if not math.isfinite(r):
        raise ConfigError("scale", scale, "a scale whose reciprocal is a finite float32")
    return r


class ActQuantizer:
    """Prepared per-tensor activation quantizer (the module doc's definition): build once per
    (layer, weight set) with the static scale, call per forward. ``out_dtype``: int8 up to 8 bits,
    int16 up to 16, int32 above (at most 31 bits)."""

    __slots__ = ("scale", "recip", "qmax", "out_dtype", "_recip_t")

    def __init__(self, scale: float, bits: int, out_dtype: torch.dtype | None = None):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 31:
            raise ConfigError("bits", bits, "an integer bit-width in 2..31")
        self.scale = float(scale)
        self.recip = act_reciprocal(scale)
        self.qmax = 2 ** (bits - 1) - 1
        self.out_dtype = out_dtype or (torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32)
        self._recip_t = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise ConfigError("x.dtype", x.dtype, "a floating-point activation")
        if self.qmax < 2**24 and cudafused.enabled(x):  # one fused kernel, the same steps
            if self._recip_t is None or self._recip_t.device != x.device:
                self._recip_t = torch.tensor(self.recip, dtype=torch.float32, device=x.device)
            return cudafused.quantize_act(x, self._recip_t, self.qmax, self.out_dtype)
        n = x.numel()
        in_kind = ckernels.IN_KIND_FLOAT.get(x.dtype)
        if in_kind is not None and self.qmax < 2**24 and ckernels.usable(x) and ckernels.lib() is not None:
            out = torch.empty(x.shape, dtype=self.out_dtype, device=x.device)  # one C loop, same steps
            ckernels.lib().qm_act_quant(
                x.data_ptr(),
                in_kind,
                n,
                self.recip,
                float(self.qmax),
                out.data_ptr(),
                ckernels.OUT_KIND[self.out_dtype],
                None,
                0,
            )
            return out
        if n <= _CHUNK_ELEMS or x.device.type != "cpu":
            return self._block(x).to(self.out_dtype)
        # elementwise: blocks of ~64K elements keep the float32 temporary in cache; the same values
        flat = x.reshape(-1)
        out = torch.empty(n, dtype=self.out_dtype, device=x.device)
        for i in range(0, n, _CHUNK_ELEMS):
            out[i : i + _CHUNK_ELEMS] = self._block(flat[i : i + _CHUNK_ELEMS])
        return out.reshape(x.shape)

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.float32)
        y = xf.mul_(self.recip) if xf is not x else x * self.recip  # one fp32 multiply, correctly rounded
        # clamp before rounding: the bounds are integers, so clamp(round(y)) == round(clamp(y))
        return y.clamp_(-self.qmax, self.qmax).round_()  # round_: half to even (integral float32)


class ZeroPointActQuantizer:
    """Asymmetric per-tensor activation quantizer with zero point z (``ActQuantizer``'s float32
    multiply and round half to even, then ``+ z``, saturated to the full signed range
    ``[-2^(b-1), 2^(b-1) - 1]``): codes stay int8 so the GEMM remains int8 x int8 (torch._int_mm has
    no uint8 operand). Computed as ``clamp(y, qmin - z, qmax - z)`` rounded, then ``+ z``: the bounds
    are integers, so clamping before rounding gives the same codes."""

    __slots__ = ("scale", "recip", "zero", "lo", "hi")

    def __init__(self, scale: float, zero: int, bits: int):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError("bits", bits, "an integer bit-width in 2..8")
        self.scale, self.recip, self.zero = float(scale), act_reciprocal(scale), int(zero)
        self.lo, self.hi = -(2 ** (bits - 1)) - self.zero, 2 ** (bits - 1) - 1 - self.zero

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise ConfigError("x.dtype", x.dtype, "a floating-point activation")
        y = x.to(torch.float32) * self.recip  # one fp32 multiply, correctly rounded
        return (y.clamp_(self.lo, self.hi).round_() + self.zero).to(torch.int8)


def dynamic_zero_points(rows: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token asymmetric quantization of rows [R, k] (the dynamic ``min_max`` quantizer):
    range [min(x, 0), max(x, 0)] per row, scale ``fp32((hi - lo) / (2^b - 1))`` (1 for an all-zero
    row), zero point ``z = clamp(-2^(b-1) - round(lo / s))``, codes ``clamp(round(fl64(x / s)) + z)``
    in the full signed range. Returns (codes int8 [R, k], scales f32 [R], zero points int32 [R])."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    x = rows.double()
    lo, hi = x.amin(dim=1).clamp(max=0), x.amax(dim=1).clamp(min=0)
    span = hi - lo
    s = torch.where(span > 0, span / (2**bits - 1), torch.ones_like(span)).to(torch.float32)  # [R]
    sd = s.double()
    z = (qmin - torch.round(lo / sd)).clamp(qmin, qmax)  # [R]
    q = (torch.round(x / sd[:, None]) + z[:, None]).clamp(qmin, qmax)
    return q.to(torch.int8), s, z.to(torch.int32)


def smooth_quantize_fp16(aq: ActQuantizer, x: torch.Tensor, inv_h: torch.Tensor) -> torch.Tensor | None:
    """``aq(fp16(fp16(x) * inv_h))`` for fp16/fp32 x [..., C] and float32 ``inv_h`` [C] holding fp16
    values (fp16 mode's explicit SmoothQuant multiply, then the activation quantizer) in one C loop;
    None when the C kernels do not apply (the caller runs the torch ops)."""
    in_kind = ckernels.IN_KIND_FLOAT.get(x.dtype)
    c = x.shape[-1] if x.dim() else 0
    if (
        in_kind is None
        or c == 0
        or aq.qmax >= 2**24
        or inv_h.dtype != torch.float32
        or inv_h.shape != (c,)
        or not ckernels.usable(x, inv_h)
        or ckernels.lib() is None
    ):
        return None
    out = torch.empty(x.shape, dtype=aq.out_dtype, device=x.device)
    ckernels.lib().qm_act_quant(
        x.data_ptr(),
        in_kind,
        x.numel(),
        aq.recip,
        float(aq.qmax),
        out.data_ptr(),
        ckernels.OUT_KIND[aq.out_dtype],
        inv_h.data_ptr(),
        c,
    )
    return out


def quantize_act(x: torch.Tensor, scale: float, bits: int) -> torch.Tensor:
    """Per-tensor activation quantization by the prepared-reciprocal definition (module doc)."""
    return ActQuantizer(scale, bits)(x)


# ---- float <-> int ------------------------------------------------------------------------------------
def quantize(x: torch.Tensor, scale: torch.Tensor | float, bits: int, axis: int | None = None) -> torch.Tensor:
    """Symmetric quantization ``clamp(round_half_even(x / scale), -qmax, qmax)`` -> int8 tensor.

    The division is done in float64 (exactly rounded), so the result depends only on the values of
    ``x`` and ``scale``, not on the device. ``scale`` is a scalar (per tensor) or a 1-D tensor of
    per-channel scales along ``axis`` of ``x``.
    """
    qmin, qmax = qrange(bits)
    out_dtype = torch.int8 if bits <= 8 else torch.int16
    if _is_number(scale):  # per tensor: checks in python, chunked in-place float64 pipeline
        sf = float(scale)
        if not (math.isfinite(sf) and sf > 0):
            raise ConfigError("scale", scale, "finite positive values")
        return _quantize_per_tensor(x, sf, qmin, qmax, out_dtype)
    s = _broadcast_scale(scale, x, axis)
    if (s <= 0).any() or not torch.isfinite(s).all():
        raise ConfigError("scale", scale, "finite positive values")
    q = torch.round(_as_f64(x) / s).clamp_(qmin, qmax)  # torch.round: half to even
    return q.to(out_dtype)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
        isinstance(v, torch.Tensor) and v.dim() == 0 and v.device.type == "cpu"
    )


def _as_f64(x: torch.Tensor) -> torch.Tensor:
    """x as float64 (values unchanged); half/bfloat16 go through float32, which is twice as fast."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float().double()
    return x.to(torch.float64)


def _quantize_per_tensor(x: torch.Tensor, s: float, qmin: int, qmax: int, out_dtype: torch.dtype) -> torch.Tensor:
    """clamp(round_half_even(fl64(x / s))) with the float64 temporaries in ~64K-element blocks
    (the same operations as the unblocked form, element by element: the same bits)."""
    n = x.numel()
    if n <= _CHUNK_ELEMS or x.device.type != "cpu":
        xd = _as_f64(x)
        xd = xd.clone() if xd is x else xd
        return xd.div_(s).round_().clamp_(qmin, qmax).to(out_dtype)
    flat = x.reshape(-1)
    out = torch.empty(n, dtype=out_dtype, device=x.device)
    buf = torch.empty(_CHUNK_ELEMS, dtype=torch.float64, device=x.device)
    for i in range(0, n, _CHUNK_ELEMS):
        xc = flat[i : i + _CHUNK_ELEMS]
        b = buf[: xc.numel()]
        b.copy_(xc.float() if xc.dtype in (torch.float16, torch.bfloat16) else xc)
        out[i : i + _CHUNK_ELEMS] = b.div_(s).round_().clamp_(qmin, qmax)
    return out.reshape(x.shape)


def dequantize(q: torch.Tensor, scale: torch.Tensor | float, axis: int | None = None) -> torch.Tensor:
    """``q * scale`` in float32 (the value a float consumer sees).

    Defined as the float64 product rounded once to float32. When |q| < 2**24 and the scale is a
    float32 value, the float64 product of these two 24-bit-mantissa numbers is exact, so its one
    rounding to float32 equals float32's own correctly rounded ``q * scale``: that cheaper product is
    used then (int8/int16 codes always, int32 after a min/max scan), with the same bits.
    """
    if _is_number(scale) and not q.is_floating_point() and q.device.type == "cpu":
        sf = float(scale)
        if _is_f32(sf):
            out = dequantize_c(q, sf, torch.float32)
            if out is not None:
                return out
        if _is_f32(sf) and (q.dtype in (torch.int8, torch.int16, torch.uint8) or _below_2_24(q)):
            return q.to(torch.float32).mul_(sf)
    s = _broadcast_scale(scale, q, axis)
    return (q.to(torch.float64) * s).to(torch.float32)


def dequantize_c(q: torch.Tensor, scale: float, out_dtype: torch.dtype) -> torch.Tensor | None:
    """The C loop of ``fp32(q) * scale`` (float32 ``scale``; int8/16/32 codes, int32 ones below 2**24),
    as float32, or as float16 saturated to +-65504 (``out_dtype``); None when it does not apply."""
    kind = ckernels.IN_KIND_INT.get(q.dtype)
    if kind is None or not _is_f32(scale) or not ckernels.usable(q) or ckernels.lib() is None:
        return None
    out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    if ckernels.lib().qm_dequant(
        q.data_ptr(), kind, q.numel(), scale, out.data_ptr(), 0 if out_dtype == torch.float32 else 1
    ):
        return None  # an int32 code beyond 2**24: the float64 definition below applies
    return out


def _is_f32(v: float) -> bool:
    """v is exactly a (finite) float32 value."""
    try:
        return math.isfinite(v) and struct.unpack("f", struct.pack("f", v))[0] == v
    except OverflowError:
        return False


def _below_2_24(q: torch.Tensor) -> bool:
    if q.numel() == 0:
        return True
    lo, hi = torch.aminmax(q)
    return -(2**24) < int(lo) and int(hi) < 2**24


def quantize_weight_per_channel(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric quantization of a weight ``[N_out, ...]`` (nn.Linear/Conv layout).

    Returns (q int8 same shape, scale float32 [N_out]). The float32 scale that is stored is the one
    used to quantize, so ``dequantize(q, scale, axis=0)`` is exactly what the chip sees.
    """
    if w.dim() < 2:
        raise ConfigError("weight.dim", w.dim(), ">= 2 (output channels first)")
    absmax = w.detach().to(torch.float64).abs().reshape(w.shape[0], -1).amax(dim=1)  # [N_out]
    scale = symmetric_scale(absmax, bits)
    return quantize(w, scale, bits, axis=0), scale


def _broadcast_scale(scale, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    s = torch.as_tensor(scale, dtype=torch.float64, device=x.device)
    if s.dim() == 0:
        return s
    if axis is None:
        raise ConfigError("axis", axis, "the channel axis when scale is a tensor")
    ax = axis % x.dim()
    if s.shape != (x.shape[ax],):
        raise ConfigError("scale.shape", tuple(s.shape), f"({x.shape[ax]},) for axis {axis}")
    view = [1] * x.dim()
    view[ax] = -1
    return s.reshape(view)


# ---- multiplier / shift -----------------------------------------------------------------------------
def quantize_multiplier(real_scale: float) -> tuple[int, int]:
    """``real_scale ~= multiplier * 2**-(31 + shift)`` with multiplier in [2^30, 2^31).

    Relative error <= 2**-31. ``real_scale == 0`` gives (0, 0) (every output is 0). Negative, NaN or
    infinite scales are refused. The multiplier's rounding is half to even (exact: the float64
    mantissa times 2^31 is an exact binary fraction).
    """
    if isinstance(real_scale, bool) or not isinstance(real_scale, (int, float)):
        raise ConfigError("real_scale", real_scale, "a finite non-negative number")
    r = float(real_scale)
    if not math.isfinite(r) or r < 0:
        raise ConfigError("real_scale", real_scale, "a finite non-negative number")
    if r == 0.0:
        return 0, 0
    m, e = math.frexp(r)  # r = m * 2**e, m in [0.5, 1)
    mult = round(m * 2**MULT_BITS)  # python round: half to even; exact product
    if mult == 2**MULT_BITS:  # m rounded up to 1.0
        mult //= 2
        e += 1
    return int(mult), int(-e)


def quantize_multipliers(real_scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel :func:`quantize_multiplier`: (multiplier int64 [N], shift int64 [N])."""
    vals = torch.as_tensor(real_scales, dtype=torch.float64).reshape(-1).tolist()
    pairs = [quantize_multiplier(v) for v in vals]
    mult = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
    shift = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    return mult, shift


# ---- rounding shift and requantization ---------------------------------------------------------------
def rounding_right_shift(x: torch.Tensor, s: int | torch.Tensor) -> torch.Tensor:
    """``round_half_even(x / 2**s)`` for int64 ``x`` with |x| < 2**62 and 0 <= s <= 62.

    ``(x + 2**(s-1) - 1 + lsb) >> s`` with ``lsb = (x >> s) & 1``: a remainder below one half
    floors, above one half carries, exactly one half carries only when the floored quotient is odd.
    """
    if isinstance(s, int):
        if s == 0:
            return x.clone()
        lsb = torch.bitwise_and(torch.bitwise_right_shift(x, s), 1)
        return torch.bitwise_right_shift(x + lsb + ((1 << (s - 1)) - 1), s)
    s = s.to(torch.int64)
    sc = s.clamp(min=1)
    lsb = torch.bitwise_and(torch.bitwise_right_shift(x, sc), 1)
    half_m1 = torch.bitwise_left_shift(torch.ones_like(sc), sc - 1) - 1
    out = torch.bitwise_right_shift(x + lsb + half_m1, sc)
    return torch.where(s == 0, x, out)


_CACHE_MAX = 1024  # per device: prepared Requantizers kept by requantize(), constants by device_constant()
_F64_EXP_BIAS = 1023


def _pow2_neg(s: torch.Tensor) -> torch.Tensor:
    """Exactly ``2.0 ** -s`` (float64) for int64 ``0 <= s <= 1022``, built from the exponent bits."""
    return torch.bitwise_left_shift(_F64_EXP_BIAS - s, 52).view(torch.float64)


def per_tensor_consts(multiplier: int, shift: int, qmin: int, qmax: int) -> tuple[float, float, int, int]:
    """(c, lim, m, s) of a per-tensor :class:`Requantizer` as plain python numbers (see its doc):
    the float64 factor c, the tie limit (2.0: no element needs the exact recomputation), the
    multiplier and the total shift s = 31 + shift. Pure, so the kernels that take these constants by
    value (a scale known only at run time) need no Requantizer object."""
    if not (INT32_MIN <= qmin <= qmax <= INT32_MAX):
        raise ConfigError("qmin,qmax", (qmin, qmax), "INT32_MIN <= qmin <= qmax <= INT32_MAX")
    if not 0 <= multiplier < 2**31:
        raise ConfigError("multiplier", multiplier, "values in [0, 2**31)")
    q = max(abs(qmin), abs(qmax))
    q_bits = max(q - 1, 0).bit_length()  # smallest b with Q <= 2**b (Q = 0: every output is 0)
    si = MULT_BITS + shift
    if si >= 63 or multiplier == 0:
        c = 0.0
    elif si < 0:
        c = 2.0**32
    else:
        c = math.ldexp(float(multiplier), -si)  # exact
    check = not (si <= 53 - q_bits or si >= 63 or multiplier == 0)
    return c, (0.5 - q * 2.0**-52) if check else 2.0, multiplier, si


class Requantizer:
    """Prepared :func:`requantize` for fixed (multiplier, shift, qmin, qmax): build once per layer,
    call per forward (saves the per-call validation and constant set-up, which dominate small
    layers). ``Requantizer(m, s, qmin, qmax, dtype)(acc) == requantize(acc, m, s, qmin, qmax, dtype)``.

    **Float64 fast path, bit-exact.** With ``s = 31 + shift`` in [0, 62] the constant
    ``c = m * 2**-s`` (m < 2**31) and every accumulator (|acc| <= 2**31) are exact float64 values,
    so ``v = fl(acc * c) = x (1 + d)`` with ``x = acc * m / 2**s`` the exact quotient and
    ``|d| <= u = 2**-53`` (round to nearest; x is 0 or >= 2**-62, never subnormal). The output
    ``f(y) = clamp(round_half_even(y), qmin, qmax)`` is monotone and changes value only at half
    integers ``h`` with ``qmin + 1/2 <= h <= qmax - 1/2``, so ``|h| <= Q - 1/2`` with
    ``Q = max(|qmin|, |qmax|)``. Hence ``f(v) != f(x)`` needs such an ``h`` between x and v, and
    ``x != h`` (a half integer below 2**52 is exact in float64, so x == h gives v == x). Then:

    1. ``|x| <= |h| + |x - h| <= Q - 1/2 + u|x|``, so ``|x| < Q`` (as ``Q u < 1/2``);
    2. ``x * 2**s = acc * m`` and ``h * 2**s`` are distinct integers (s >= 1; for s == 0, x is an
       integer and |x - h| >= 1/2), so ``|x - h| >= 2**-s``;
    3. ``|x - h| <= |x - v| <= u |x| < Q * 2**-53``.

    So ``Q <= 2**(53 - s)`` (a channel is *safe*) proves ``f(v) == f(x)`` for every accumulator:
    int8 outputs (Q = 127) for ``s <= 46`` (real scale >= 2**-16), int16 for ``s <= 38``. For the
    other channels, by 3., a wrong element has ``|v - h| <= |v - x| < Q * 2**-53``, i.e. its
    distance to the nearest integer ``|v - round(v)| > 1/2 - Q * 2**-53``; every element at least
    ``1/2 - Q * 2**-52`` from the nearest integer (a superset) is recomputed exactly in int64
    (``v - round(v)`` is exact in float64 below 2**52, and |v| < Q < 2**52 for every element that
    can be wrong). ``s >= 63`` (|x| < 1/2: zero) and ``s < 0`` (saturation of nonzero
    accumulators) use ``c = 0`` and ``c = 2**32``; ``m == 0`` uses ``c = 0``.
    """

    def __init__(
        self,
        multiplier: int | torch.Tensor,
        shift: int | torch.Tensor,
        qmin: int,
        qmax: int,
        out_dtype: torch.dtype = torch.int32,
        device: str | torch.device | None = None,
    ):
        if not (INT32_MIN <= qmin <= qmax <= INT32_MAX):
            raise ConfigError("qmin,qmax", (qmin, qmax), "INT32_MIN <= qmin <= qmax <= INT32_MAX")
        self.qmin, self.qmax, self.out_dtype = qmin, qmax, out_dtype
        q = max(abs(qmin), abs(qmax))
        q_bits = max(q - 1, 0).bit_length()  # smallest b with Q <= 2**b (Q = 0: every output is 0)
        tie_lim = 0.5 - q * 2.0**-52  # exact in float64 (Q < 2**31)
        if _is_int(multiplier) and _is_int(shift):  # per tensor: plain python arithmetic, no tensor ops
            self.c, self.lim, mi, si = per_tensor_consts(int(multiplier), int(shift), qmin, qmax)
            self.per_channel = False
            self.m = torch.tensor(mi, dtype=torch.int64, device=device)
            self.s = torch.tensor(si, dtype=torch.int64, device=device)
            self.check = self.lim != 2.0
            return
        m = torch.as_tensor(multiplier, dtype=torch.int64, device=device)
        sh = torch.as_tensor(shift, dtype=torch.int64, device=device)
        if bool(((m < 0) | (m >= 2**31)).any()):
            raise ConfigError("multiplier", multiplier, "values in [0, 2**31)")
        m, sh = torch.broadcast_tensors(m, sh)
        if m.numel() == 1:  # a one-element tensor broadcasts like a scalar
            self.__init__(int(m.reshape(())), int(sh.reshape(())), qmin, qmax, out_dtype, m.device)
            return
        if m.dim() > 1:
            raise ConfigError("multiplier.dim", m.dim(), "0 (per tensor) or 1 (per output channel)")
        s = MULT_BITS + sh
        self.per_channel = True
        self.m, self.s = m, s  # exact constants (int64) for the near-tie recomputation
        c = m.to(torch.float64) * _pow2_neg(s.clamp(0, 62))  # exact: 31-bit m times a power of two
        c = torch.where((s >= 63) | (m == 0), torch.zeros_like(c), c)
        c = torch.where((s < 0) & (m > 0), torch.full_like(c, 2.0**32), c)
        safe = (s <= 53 - q_bits) | (s >= 63) | (m == 0)  # safe: Q <= 2**(53 - s)
        self.check = not bool(safe.all())
        self.c = c
        self.lim = torch.where(safe, torch.full_like(c, 2.0), torch.full_like(c, tie_lim))

    def block(self, j0: int, j1: int) -> Requantizer:
        """The Requantizer of output channels ``j0:j1`` (itself when per tensor); memoised."""
        if not self.per_channel:
            return self
        blocks = self.__dict__.setdefault("_blocks", {})
        rq = blocks.get((j0, j1))
        if rq is None:
            rq = object.__new__(Requantizer)
            rq.qmin, rq.qmax, rq.out_dtype, rq.per_channel = self.qmin, self.qmax, self.out_dtype, True
            for k in ("c", "lim", "m", "s"):
                setattr(rq, k, getattr(self, k)[j0:j1])
            rq.check = bool((rq.lim < 1.0).any())
            blocks[(j0, j1)] = rq
        return rq

    def _exact(self, acc: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
        """round_half_even(acc * m / 2**s) in int64 for elements of channels ``cols`` (1 <= s <= 62)."""
        m, s = (self.m, self.s) if cols is None else (self.m[cols], self.s[cols])
        return rounding_right_shift(acc.to(torch.int64) * m, s.clamp(0, 62))

    def _to(self, dev: torch.device) -> None:
        self.__dict__.pop("_blocks", None)
        self.__dict__.pop("_ucols", None)
        for k in ("c", "lim", "m", "s"):
            t = getattr(self, k)
            if isinstance(t, torch.Tensor):
                setattr(self, k, t.to(dev))

    def _pass(self, a: torch.Tensor, v: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
        """The float64 pipeline on one block: ``v`` [R, C] holds ``a`` as float64; returns the
        rounded, clamped values (in ``v`` or ``r``)."""
        v.mul_(self.c)  # one rounding (see the class docstring)
        if not self.check:
            return v.round_().clamp_(self.qmin, self.qmax)  # round: half to even
        cols = self._unsafe_cols()
        if cols is not None:  # few unchecked channels: check only their columns
            vu = v.index_select(1, cols)  # [R, U]
            v.round_()
            ru = self._checked_round(a.index_select(1, cols), vu, None, self.lim[cols], cols)
            v.index_copy_(1, cols, ru)
            return v.clamp_(self.qmin, self.qmax)
        return self._checked_round(a, v, r, self.lim, None).clamp_(self.qmin, self.qmax)

    def _checked_round(self, a: torch.Tensor, v: torch.Tensor, r: torch.Tensor | None, lim, cols) -> torch.Tensor:
        """round_half_even of the exact quotients: float64 ``round(v)``, with the elements near a half
        integer (a superset of the wrong ones) recomputed in int64. ``v`` is overwritten."""
        r = torch.round(v, out=r) if r is not None else torch.round(v)
        near = v.sub_(r).abs_().ge_(lim)
        if bool(near.any()):
            rr, cc = near.nonzero(as_tuple=True)
            if self.per_channel:
                ch = cc if cols is None else cols[cc]
                r[rr, cc] = self._exact(a[rr, cc], ch).to(torch.float64)
            else:
                r[rr, cc] = self._exact(a[rr, cc], None).to(torch.float64)
        return r

    def _unsafe_cols(self) -> torch.Tensor | None:
        """Indices of the checked channels when they are at most a quarter of all (else None)."""
        if not self.per_channel:
            return None
        if "_ucols" not in self.__dict__:
            idx = (self.lim < 1.0).nonzero().reshape(-1)
            self._ucols = idx if 4 * idx.numel() <= self.lim.numel() else None
        return self._ucols

    def _c_consts(self, n: int, dev: torch.device):
        """(c, lim, m, s) as contiguous [N] CPU tensors for the C loop (per-tensor constants expanded
        once per width N); memoised."""
        memo = self.__dict__.setdefault("_cc", {})
        cs = memo.get(n)
        if cs is None:

            def vec(t, dt):
                t = torch.as_tensor(t, dtype=dt, device=dev)
                return (t.expand(n) if t.dim() == 0 else t).contiguous()

            cs = memo[n] = (
                vec(self.c, torch.float64),
                vec(self.lim, torch.float64),
                vec(self.m, torch.int64),
                vec(self.s, torch.int64),
            )
        return cs

    def fused(self, acc2: torch.Tensor, out2: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
        """``out2 = self(acc2 + bias)`` in one C loop (:mod:`quantmodel.intarith.ckernels`): acc2 int32 [R, N]
        with unit column stride, out2 [R, N] ``out_dtype`` with unit column stride (may be a column
        block of a wider tensor), bias int32 [N] contiguous or None (the int32 sum cannot wrap: the
        caller's accumulator bound includes the bias). The same operations as :meth:`_pass`, element by
        element. Returns False (nothing done) when the C kernels are not available or do not apply."""
        dll = ckernels.lib()
        if dll is None or acc2.dtype != torch.int32 or acc2.device.type != "cpu" or acc2.dim() != 2:
            return False
        kind = ckernels.OUT_KIND.get(self.out_dtype)
        if kind is None or out2.shape != acc2.shape or out2.dtype != self.out_dtype or out2.device.type != "cpu":
            return False
        r, n = acc2.shape
        if (n > 1 and (acc2.stride(1) != 1 or out2.stride(1) != 1)) or (
            bias is not None and (bias.dtype != torch.int32 or not bias.is_contiguous() or bias.shape != (n,))
        ):
            return False
        if r == 0 or n == 0:
            return True
        c, lim, m, s = self._c_consts(n, acc2.device)
        dll.qm_requant(
            acc2.data_ptr(),
            r,
            n,
            acc2.stride(0) if r > 1 else n,
            bias.data_ptr() if bias is not None else None,
            c.data_ptr(),
            lim.data_ptr() if self.check else None,  # no channel near a tie: no check
            m.data_ptr(),
            s.data_ptr(),
            float(self.qmin),
            float(self.qmax),
            out2.data_ptr(),
            kind,
            out2.stride(0) if r > 1 else n,
        )
        return True

    def __call__(self, acc: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Requantize ``acc`` [..., N]; ``out`` (optional, same shape, ``out_dtype``, may be a strided
        view) receives the result."""
        if acc.is_floating_point() or acc.is_complex() or acc.dtype == torch.bool:
            raise ConfigError("acc.dtype", acc.dtype, "an integer dtype (int32 accumulator)")
        if (
            acc.dtype == torch.int32
            and acc.device.type == "cpu"
            and acc.is_contiguous()
            and acc.dim() > 0
            and (not self.per_channel or self.c.shape[0] == acc.shape[-1])
        ):  # one C loop (same bits)
            n = acc.shape[-1]
            if out is None:
                res = torch.empty(acc.shape, dtype=self.out_dtype, device=acc.device)
                o2 = res.view(-1, n)
            elif out.shape == acc.shape and out.dtype == self.out_dtype and out.device == acc.device:
                res = out
                o2 = out.view(-1, n) if out.is_contiguous() else out if out.dim() == 2 else None
            else:
                res = o2 = None
            if o2 is not None and self.fused(acc.view(-1, n), o2):
                return res
        if self.per_channel:
            n = acc.shape[-1] if acc.dim() > 0 else 1
            if self.c.shape[0] != n:
                raise ConfigError("acc.shape[-1]", n, f"{self.c.shape[0]} (one per multiplier)")
            if self.c.device != acc.device:
                self._to(acc.device)
            a2 = acc.reshape(-1, n)  # [R, N]
        else:
            if self.m.device != acc.device:
                self._to(acc.device)
            # [numel, 1], or acc itself when writing into a 2-D block view of a wider output
            a2 = acc if out is not None and out.dim() == 2 and out.shape == acc.shape else acc.reshape(-1, 1)
        if cudafused.enabled(acc) and acc.numel():  # one exact int64 kernel, no tie check, no sync
            return self._cuda_fused(acc, a2, out)
        total_rows, ncols = a2.shape
        cpu = acc.device.type == "cpu"
        if out is None and (total_rows * ncols <= _CHUNK_ELEMS or not cpu):  # one block: fewest ops
            if acc.numel() == 0:
                return torch.empty(acc.shape, dtype=self.out_dtype, device=acc.device)
            return self._pass(a2, a2.to(torch.float64), None).to(self.out_dtype).reshape(acc.shape)
        if out is None:
            out = torch.empty(acc.shape, dtype=self.out_dtype, device=acc.device)
        elif out.shape != acc.shape or out.dtype != self.out_dtype:
            raise ConfigError("out", (tuple(out.shape), out.dtype), f"{tuple(acc.shape)} {self.out_dtype}")
        if acc.numel() == 0:
            return out
        if out.dim() == 2 and a2.shape == out.shape:
            o2 = out  # 2-D, possibly a column block of a wider output
        elif out.is_contiguous():
            o2 = out.view(a2.shape)
        else:
            raise ConfigError("out", "non-contiguous", "contiguous, or a 2-D view shaped like acc")
        # Row blocks of ~64K elements: the float64 temporaries stay in cache and are reused in place
        rows = min(total_rows, total_rows if not cpu else max(1, _CHUNK_ELEMS // ncols))
        buf = torch.empty((rows, ncols), dtype=torch.float64, device=acc.device)
        rbuf = torch.empty_like(buf) if self.check else None
        for i in range(0, total_rows, rows):
            a = a2[i : i + rows]
            k = a.shape[0]
            v = buf[:k]
            v.copy_(a)  # exact: |acc| <= 2**31
            res = self._pass(a, v, rbuf[:k] if rbuf is not None else None)
            o2[i : i + rows] = res
        return out

    def fuses_bias(self, device: torch.device, n: int) -> bool:
        """Whether :meth:`with_bias` applies on ``device`` to an [R, n] accumulator: the fused CUDA
        kernels, and one multiplier per column or per tensor."""
        return cudafused.enabled_on(device) and (not self.per_channel or self.m.shape == (n,))

    def with_bias(self, acc: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``self(acc + bias)`` for an int32 accumulator [R, N] and an int32 bias [N] whose sums the
        caller proved within int32: one fused CUDA kernel (see :meth:`fuses_bias`), no pass writing the
        biased accumulator."""
        consts = self.cuda_constants(acc.device)
        return cudafused.requantize_bias(acc, bias, consts, self.qmin, self.qmax, self.out_dtype)

    def cuda_constants(self, device: torch.device) -> tuple:
        """(m, clamped s, zero mask, saturate mask) on ``device``: what :func:`cudafused.requant_exact`
        reads (kept: a CUDA graph replays kernels that read them)."""
        consts = self.__dict__.get("_cu")
        if consts is None or consts[0].device != device:
            consts = self._cu = cudafused.requant_constants(self.m, self.s, device)
        return consts

    def _cuda_fused(self, acc: torch.Tensor, a2: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """:mod:`~quantmodel.intarith.cudafused`'s requantization of ``a2`` (``acc`` viewed [R, N] or
        [numel, 1]), into ``out`` when given."""
        res = cudafused.requantize(a2, self.cuda_constants(acc.device), self.qmin, self.qmax, self.out_dtype)
        if out is None:
            return res.reshape(acc.shape)
        if out.shape != acc.shape or out.dtype != self.out_dtype:
            raise ConfigError("out", (tuple(out.shape), out.dtype), f"{tuple(acc.shape)} {self.out_dtype}")
        out.copy_(res.reshape(acc.shape))
        return out


def _is_int(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point() and v.device.type == "cpu"


_KEEP: list = []  # while a CUDA graph is captured: every memoised constant handed out (see kept_constants)


@contextlib.contextmanager
def kept_constants():
    """Inside, every memoised device constant handed out (the Requantizers of :func:`requantize`, the
    values of :func:`device_constant`) is also appended to the yielded list. A CUDA graph captured
    inside reads them at every replay, so its owner holds the list: a memo may drop them (it is cleared
    when full) and their memory must not be reused."""
    kept: list = []
    _KEEP.append(kept)
    try:
        yield kept
    finally:
        _KEEP.remove(kept)


class _DeviceMemo:
    """Values made once per (device, key). One memo per device, so the host's per-step constants (the
    staged operands' requantizers: new values every step, some 170 a forward at full depth) never
    evict what a device forward asks for again every step; cleared when full, but never while a CUDA
    graph is captured (its forward would then remake what the eager forward before it had made,
    copying it to the device inside the capture)."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.by_device: dict = {}  # str(device) -> {key -> value}

    def get(self, device, key, make):
        memo = self.by_device.setdefault(str(device), {})
        v = memo.get(key)
        if v is None:
            if len(memo) >= self.max_size and not _KEEP:
                memo.clear()
            v = memo[key] = make()
        for kept in _KEEP:
            kept.append(v)
        return v


_REQUANTIZERS = _DeviceMemo(_CACHE_MAX)
_CONSTANTS = _DeviceMemo(_CACHE_MAX)


def device_constant(device: torch.device, key: tuple, make):
    """``make()`` (a tensor on ``device``) memoised by ``key``, a value key of what it holds: a
    kernel's per-layer constant built from Python numbers is copied to the device once, not on every
    call (on CUDA each copy is a host transfer, and one a CUDA graph capture cannot hold)."""
    return _CONSTANTS.get(device, key, make)


def _requantizer(multiplier, shift, qmin: int, qmax: int, out_dtype: torch.dtype, device: torch.device) -> Requantizer:
    """A prepared Requantizer, memoised by the *values* of its constants (never by object identity),
    so repeated :func:`requantize` calls with the same layer constants skip the set-up."""

    def val(t):
        if isinstance(t, torch.Tensor):
            return (str(t.dtype), tuple(t.shape), t.detach().cpu().numpy().tobytes())
        return ("py", int(t))

    key = (val(multiplier), val(shift), qmin, qmax, out_dtype)
    return _REQUANTIZERS.get(device, key, lambda: Requantizer(multiplier, shift, qmin, qmax, out_dtype, device))


def requantize(
    acc: torch.Tensor,
    multiplier: int | torch.Tensor,
    shift: int | torch.Tensor,
    qmin: int,
    qmax: int,
    out_dtype: torch.dtype = torch.int32,
) -> torch.Tensor:
    """``clamp(round_half_even(acc * multiplier / 2**(31 + shift)), qmin, qmax)``.

    acc: integer tensor [..., N] with values in int32 range (int32 accumulator, or int64 holding
    int32-range values). multiplier, shift: python ints (per tensor) or int64 tensors [N] (per output
    channel, broadcast over the last dim), as made by :func:`quantize_multiplier(s)`.
    qmin, qmax: saturation bounds within int32. Returns ``out_dtype`` (int32 default).
    For repeated calls with the same constants use :class:`Requantizer`.
    """
    if acc.is_floating_point():
        raise ConfigError("acc.dtype", acc.dtype, "an integer dtype (int32 accumulator)")
    return _requantizer(multiplier, shift, qmin, qmax, out_dtype, acc.device)(acc)


def requantize_scale(
    acc: torch.Tensor, real_scale: float | torch.Tensor, qmin: int, qmax: int, out_dtype: torch.dtype = torch.int32
) -> torch.Tensor:
    """:func:`requantize` with the multiplier(s) derived from a float scale (scalar or [N])."""
    if isinstance(real_scale, torch.Tensor) and real_scale.dim() > 0:
        m, s = quantize_multipliers(real_scale)
        return requantize(acc, m.to(acc.device), s.to(acc.device), qmin, qmax, out_dtype)
    m, s = quantize_multiplier(float(real_scale))
    return requantize(acc, m, s, qmin, qmax, out_dtype)


def floor_shift(x: torch.Tensor, s: int) -> torch.Tensor:
    """``floor(x / 2**s)`` (arithmetic right shift); the rounding of the I-BERT style kernels."""
    return torch.bitwise_right_shift(x, s) if s > 0 else x.clone()
