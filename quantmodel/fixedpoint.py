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
"""

from __future__ import annotations

import math

import torch

from workloads.errors import ConfigError

ROUNDING = "half_to_even"
SUPPORTED_BITS = (4, 6, 8)
INT32_MIN = -(2 ** 31)
INT32_MAX = 2 ** 31 - 1
MULT_BITS = 31  # multiplier is a Q0.31 fraction in [0.5, 1)


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


# ---- float <-> int ------------------------------------------------------------------------------------
def quantize(x: torch.Tensor, scale: torch.Tensor | float, bits: int, axis: int | None = None) -> torch.Tensor:
    """Symmetric quantization ``clamp(round_half_even(x / scale), -qmax, qmax)`` -> int8 tensor.

    The division is done in float64 (exactly rounded), so the result depends only on the values of
    ``x`` and ``scale``, not on the device. ``scale`` is a scalar (per tensor) or a 1-D tensor of
    per-channel scales along ``axis`` of ``x``.
    """
    qmin, qmax = qrange(bits)
    s = _broadcast_scale(scale, x, axis)
    if (s <= 0).any() or not torch.isfinite(s).all():
        raise ConfigError("scale", scale, "finite positive values")
    q = torch.round(x.to(torch.float64) / s).clamp_(qmin, qmax)  # torch.round: half to even
    return q.to(torch.int8 if bits <= 8 else torch.int16)


def dequantize(q: torch.Tensor, scale: torch.Tensor | float, axis: int | None = None) -> torch.Tensor:
    """``q * scale`` in float32 (the value a float consumer sees)."""
    s = _broadcast_scale(scale, q, axis)
    return (q.to(torch.float64) * s).to(torch.float32)


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
    mult = round(m * 2 ** MULT_BITS)  # python round: half to even; exact product
    if mult == 2 ** MULT_BITS:  # m rounded up to 1.0
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


class Requantizer:
    """Prepared :func:`requantize` for fixed (multiplier, shift, qmin, qmax): build once per layer,
    call per forward (saves the per-call validation and constant set-up, which dominate small
    layers). ``Requantizer(m, s, qmin, qmax, dtype)(acc) == requantize(acc, m, s, qmin, qmax, dtype)``.
    """

    def __init__(self, multiplier: int | torch.Tensor, shift: int | torch.Tensor, qmin: int, qmax: int,
                 out_dtype: torch.dtype = torch.int32, device: str | torch.device | None = None):
        if not (INT32_MIN <= qmin <= qmax <= INT32_MAX):
            raise ConfigError("qmin,qmax", (qmin, qmax), "INT32_MIN <= qmin <= qmax <= INT32_MAX")
        m = torch.as_tensor(multiplier, dtype=torch.int64, device=device)
        sh = torch.as_tensor(shift, dtype=torch.int64, device=device)
        if bool(((m < 0) | (m >= 2 ** 31)).any()):
            raise ConfigError("multiplier", multiplier, "values in [0, 2**31)")
        s = MULT_BITS + sh
        self.qmin, self.qmax, self.out_dtype = qmin, qmax, out_dtype
        self.m = m
        self.sc = s.clamp(1, 62)
        self.half_m1 = torch.bitwise_left_shift(torch.ones_like(self.sc), self.sc - 1) - 1
        self.zero = s >= 63  # |acc * m| < 2**62: the quotient is below 1/2 in magnitude
        self.sat = s < 0  # |acc * m| >= 2**30 for acc != 0, times >= 2: beyond int32, saturate by sign
        self.keep = s == 0
        self.special = bool((self.zero | self.sat | self.keep).any())

    def __call__(self, acc: torch.Tensor) -> torch.Tensor:
        if acc.is_floating_point():
            raise ConfigError("acc.dtype", acc.dtype, "an integer dtype (int32 accumulator)")
        out = torch.empty(acc.shape, dtype=self.out_dtype, device=acc.device)
        if acc.numel() == 0:
            return out
        m, sc, half_m1 = self.m.to(acc.device), self.sc.to(acc.device), self.half_m1.to(acc.device)
        # Row chunks of ~64K elements: the int64 temporaries stay in cache and are updated in place
        # (same arithmetic as rounding_right_shift; about 3x faster than whole-tensor temporaries).
        a2 = acc.reshape(-1, acc.shape[-1]) if acc.dim() > 0 else acc.reshape(1, 1)
        o2 = out.view(a2.shape)
        rows = max(1, (1 << 16) // max(1, a2.shape[1]))
        for i in range(0, a2.shape[0], rows):
            p = a2[i:i + rows].to(torch.int64, copy=True)  # never modify the caller's tensor
            p.mul_(m)
            if self.special:
                p0 = p.clone()
            lsb = torch.bitwise_right_shift(p, sc).bitwise_and_(1)
            p.add_(lsb).add_(half_m1).bitwise_right_shift_(sc)
            if self.special:
                dev = p.device
                p = torch.where(self.keep.to(dev), p0, p)
                p = torch.where(self.zero.to(dev), torch.zeros_like(p), p)
                p = torch.where(self.sat.to(dev), torch.sign(p0) * (2 ** 40), p)
            o2[i:i + rows] = p.clamp_(self.qmin, self.qmax)
        return out


def requantize(acc: torch.Tensor, multiplier: int | torch.Tensor, shift: int | torch.Tensor,
               qmin: int, qmax: int, out_dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """``clamp(round_half_even(acc * multiplier / 2**(31 + shift)), qmin, qmax)``.

    acc: integer tensor [..., N] with values in int32 range (int32 accumulator, or int64 holding
    int32-range values). multiplier, shift: python ints (per tensor) or int64 tensors [N] (per output
    channel, broadcast over the last dim), as made by :func:`quantize_multiplier(s)`.
    qmin, qmax: saturation bounds within int32. Returns ``out_dtype`` (int32 default).
    For repeated calls with the same constants use :class:`Requantizer`.
    """
    return Requantizer(multiplier, shift, qmin, qmax, out_dtype, acc.device)(acc)


def requantize_scale(acc: torch.Tensor, real_scale: float | torch.Tensor, qmin: int, qmax: int,
                     out_dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """:func:`requantize` with the multiplier(s) derived from a float scale (scalar or [N])."""
    if isinstance(real_scale, torch.Tensor) and real_scale.dim() > 0:
        m, s = quantize_multipliers(real_scale)
        return requantize(acc, m.to(acc.device), s.to(acc.device), qmin, qmax, out_dtype)
    m, s = quantize_multiplier(float(real_scale))
    return requantize(acc, m, s, qmin, qmax, out_dtype)


def floor_shift(x: torch.Tensor, s: int) -> torch.Tensor:
    """``floor(x / 2**s)`` (arithmetic right shift); the rounding of the I-BERT style kernels."""
    return torch.bitwise_right_shift(x, s) if s > 0 else x.clone()
