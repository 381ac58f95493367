"""Fused CUDA pipelines for the two elementwise steps every quantized linear pays (requantization of
the int32 accumulator and static activation quantization) and, through :func:`compiled`, for the
integer vector unit's kernels (softmax, LayerNorm, GELU, the modulate / gated-add tail).

Why: on a GPU the eager emulator spends most of its time in elementwise kernels (the float64
requantization pipeline of :class:`~quantmodel.intarith.fixedpoint.Requantizer` is about ten passes
over the accumulator, plus a host sync for its near-tie check), not in the int8 GEMMs. Here each step
is one ``torch.compile`` (Triton) kernel: requantization in exact int64 arithmetic (the quotient the
float64 path is proven to reproduce, so no tie check and no sync), activation quantization as the
same float32 multiply by the float32 reciprocal, clamp and round half to even. Integer and IEEE
operations only, so the values are those of the eager path by construction (the uncompiled functions
are tested equal to the eager path on the CPU, Inductor's CPU build of them too). On by default on
CUDA since the GPU tests (tests/quantmodel/test_cudafused.py, test_gpu.py) passed on an H100 with it
and the 16x256x256 video's final latent equalled the eager kernels' bit for bit; ``QUANTMODEL_CUDA_FUSED=0``
runs the eager kernels (to compare, or where Triton is missing).
"""

from __future__ import annotations

import os

import torch

SATURATE = 1 << 40  # beyond every int32 output range: clamps to qmin / qmax by the sign


def enabled(t: torch.Tensor) -> bool:
    return enabled_on(t.device)


def enabled_on(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("QUANTMODEL_CUDA_FUSED", "1") != "0"


def requant_exact(
    acc: torch.Tensor,  # int32 [R, N] (or any shape broadcasting with the constants)
    m: torch.Tensor,  # int64 [N] or []: Q0.31 multiplier, 0 <= m < 2**31
    sc: torch.Tensor,  # int64 [N] or []: total shift clamped to [0, 62]
    zero: torch.Tensor,  # bool [N] or []: the output is 0 (shift >= 63 or m == 0)
    sat: torch.Tensor,  # bool [N] or []: shift < 0 with m > 0, saturates by the sign of acc
    qmin: int,
    qmax: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """clamp(round_half_even(acc * m / 2**s), qmin, qmax) in int64: |acc * m| < 2**62, and the
    rounding shift is :func:`~quantmodel.intarith.fixedpoint.rounding_right_shift`'s."""
    p = acc.to(torch.int64) * m
    lsb = torch.bitwise_and(torch.bitwise_right_shift(p, sc), 1)
    half_m1 = torch.bitwise_right_shift(torch.bitwise_left_shift(torch.ones_like(sc), sc), 1) - 1
    r = torch.where(sc == 0, p, torch.bitwise_right_shift(p + lsb + half_m1, sc))
    r = torch.where(zero, torch.zeros_like(r), r)
    r = torch.where(sat, torch.sign(p) * SATURATE, r)
    return r.clamp(qmin, qmax).to(out_dtype)


def requant_bias_exact(acc, bias, m, sc, zero, sat, qmin: int, qmax: int, out_dtype: torch.dtype) -> torch.Tensor:
    """:func:`requant_exact` of ``acc + bias`` (int32 [R, N] + int32 [N]): the bias added in the same
    pass (int64, so the same sum as int32 wherever int32 holds it, which the GEMM's overflow bound
    proves), not as a separate pass over the accumulator."""
    return requant_exact(acc.to(torch.int64) + bias, m, sc, zero, sat, qmin, qmax, out_dtype)


def act_quant(x: torch.Tensor, recip: torch.Tensor, qmax: int, out_dtype: torch.dtype) -> torch.Tensor:
    """round_half_even(clamp(float32(x) * recip, -qmax, qmax)); ``recip`` a float32 0-dim tensor (a
    tensor, not a constant, so one compiled kernel serves every layer's scale)."""
    return (x.to(torch.float32) * recip).clamp(-qmax, qmax).round().to(out_dtype)


_compiled: dict = {}


def compiled(fn):
    """``fn`` compiled once (``torch.compile``, dynamic shapes: one kernel serves every layer's shape and
    constants). For functions of integer and IEEE ops without reassociation (the vector unit's int-mode
    kernels in :mod:`~quantmodel.intarith.intops`, the two pipelines here), so their values are the eager ones."""
    f = _compiled.get(fn)
    if f is None:
        f = _compiled[fn] = torch.compile(fn, dynamic=True)
    return f


def _fn(name: str):
    return compiled(globals()[name])


def requant_constants(m: torch.Tensor, s: torch.Tensor, device: torch.device) -> tuple:
    """(m, clamped s, zero mask, saturate mask) of a Requantizer's exact constants, on ``device``."""
    m = m.to(device, torch.int64)
    s = s.to(device, torch.int64)
    return m, s.clamp(0, 62), (s >= 63) | (m == 0), (s < 0) & (m > 0)


def requantize(acc: torch.Tensor, consts: tuple, qmin: int, qmax: int, out_dtype: torch.dtype) -> torch.Tensor:
    return _fn("requant_exact")(acc, *consts, qmin, qmax, out_dtype)


def requantize_bias(acc, bias, consts: tuple, qmin: int, qmax: int, out_dtype: torch.dtype) -> torch.Tensor:
    return _fn("requant_bias_exact")(acc, bias, *consts, qmin, qmax, out_dtype)


def quantize_act(x: torch.Tensor, recip: torch.Tensor, qmax: int, out_dtype: torch.dtype) -> torch.Tensor:
    return _fn("act_quant")(x, recip, qmax, out_dtype)
