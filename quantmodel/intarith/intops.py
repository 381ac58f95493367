"""The vector unit's non-linear ops, in two modes: ``fp16`` and ``int`` (integer only).

``fp16`` mode (a vector unit with fp16 storage and fp32 arithmetic): inputs are dequantized to
float16; every elementwise step is computed in float32 and rounded to float16 (round to nearest
even). Where both operands of +, - or * are fp16 values the kernels use torch's float16 ops: the
float32 result of such an op rounded to fp16 is the correctly rounded fp16 result (binary32 has
24 >= 2*11 + 2 significand bits, so double rounding is innocuous: Figueroa, "When is double
rounding innocuous?", SIGNUM 1995; Roux, "Innocuous double rounding of basic arithmetic
operations", JFR 2014), and so is torch's fp16 op (native fp16 or convert-compute-round), which is
also 3-4x faster on CPU; ``tests/quantmodel/test_intops.py`` checks the identity on every fp16 value (only
NaN payloads may differ). Reductions accumulate in float32 in a fixed pairwise-tree order (:func:`tree_sum`), so the
result does not depend on the library's summation order. Transcendentals (exp, tanh) are torch's
float32 functions rounded to fp16 (bit identity across devices is not promised for those).
Functions: ``softmax_fp16, layernorm_fp16, gelu_fp16, silu_fp16, modulate_fp16, gated_add_fp16``;
each takes and returns float16 tensors.

``int`` mode (I-BERT, Kim et al. 2021, and I-ViT, Li & Gu 2023, style): integer tensors with a
float scale in, ``(q_out, out_scale)`` out. Scales only enter through constants computed once
("at compile time") from them in float64; at run time there are only integer adds, multiplies,
shifts, compares and one integer division per row (softmax, LayerNorm) or element (SiLU).
Rounding: the polynomial kernels **floor** (as I-BERT: arithmetic right shifts and floor
division); the fixed-point modulate / gated residual use :mod:`quantmodel.intarith.fixedpoint`'s round half
to even with saturation. Inputs are first brought to a working scale ``S_w`` of about
``2**-WORK_FRAC_BITS`` by a floor right shift (a finer scale is coarsened; a coarser one is kept),
which bounds every intermediate below 2**53 (so the float64 reference in
:mod:`quantmodel.intarith.reference` is exact) and, except the LayerNorm sums, below 2**32.

| op | input | output | output scale |
| --- | --- | --- | --- |
| softmax_int | int32 [..., n], scale S (<= ln 2 after coarsening) | [0, 2^(b-1)-1] | 2^-(b-1) |
| layernorm_int | int32 [..., n], scale S | int32, abs < 2^30 | sqrt(n) / 2^30 |
| gelu_int | int32, scale S | int32 | S_w * a * (S_w^2 / 2) * 2^T / 2 |
| silu_int | int32, scale S | int32 | S_w |
| modulate_int / gated_add_int | int32 operands, scales | clamp to [qmin, qmax] | s_out (given) |

Constants: i-exp ``exp(p) ~ 0.3585 (p + 1.353)^2 + 0.344`` on p in (-ln2, 0] with
``exp(x) = 2^-z exp(p)`` (I-BERT Alg. 2); i-erf ``erf(x) ~ sign(x)[-0.2888 (min(|x|, 1.769) -
1.769)^2 + 1]`` (I-BERT Alg. 3; GELU = x/2 (1 + erf(x/sqrt 2)); the model's tanh GELU differs from
erf GELU by < 5e-4); i-sqrt: floor square root (I-BERT Alg. 4's integer Newton iterations; see :func:`isqrt`). SiLU's sigmoid is a
two-element softmax of (x, 0) built on i-exp (I-ViT's Shiftmax idea of reusing the exp kernel).
"""

from __future__ import annotations

import functools
import math

import torch

from quantmodel.intarith import ckernels, cudafused
from quantmodel.intarith.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    _is_f32,
    _requantizer,
    device_constant,
    per_tensor_consts,
    quantize_multiplier,
    requantize_scale,
)
from workloads.errors import ConfigError

MODES = ("fp16", "int")
WORK_FRAC_BITS = 12  # working precision of the polynomial kernels: S_w ~ 2^-12
EXP_A, EXP_B, EXP_C = 0.3585, 1.353, 0.344  # I-BERT i-exp polynomial (Kim et al. 2021, Sec. 3.4)
ERF_A, ERF_B = 0.2888, 1.769  # I-BERT i-erf: -0.2888 (min(|x|,1.769) - 1.769)^2 + 1 (Sec. 3.5)
SOFTMAX_NORM_BITS = 52  # factor = 2^52 // row_sum: e * factor <= 2^52
LN_VAR_BITS = 15  # LayerNorm rows are right-shifted so |y| <= 2^15 before squaring
LN_FACTOR_BITS = 50  # factor = 2^50 // std
LN_OUT_BITS = 30  # out = y * factor >> 20, scale sqrt(n) / 2^30
SAT_BITS = 22  # GELU/SiLU inputs saturate at |q_w| <= 2^22 (|x| <= 1024 at S_w = 2^-12)
GUARD_BITS = 8  # modulate / gated add work at s_out / 2^8 before the final rounding
GATE_FRAC_BITS = 16  # (1 + scale) and gate as Q16 fixed point
MAX_ROW = 2**20


# ---- fp16 mode ------------------------------------------------------------------------------------------
def _h(x: torch.Tensor) -> torch.Tensor:
    """Round a float32 result to fp16 (one rounding per vector-unit step)."""
    return x.to(torch.float16)


# Large tensors are processed in blocks of about CHUNK_ELEMS elements (rows for the row-wise kernels):
# the float32 temporaries of a kernel's steps then stay in the CPU's L2 cache instead of streaming
# through memory once per step (3x faster GELU on this project's CPU). Every step is elementwise or
# per row, so blocks give the same values; block starts are multiples of CHUNK_ALIGN elements, so
# torch's vectorised loops see the same element positions as on the whole tensor (a loop's scalar
# tail, whose exp/tanh may differ in the last bit from the vector code, stays the whole tensor's tail).
CHUNK_ELEMS = 1 << 16
CHUNK_ALIGN = 64
FP16_MAX = 65504.0


def _flat_chunked(fn, x: torch.Tensor, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """fn (elementwise, ``out_dtype`` out) applied blockwise over the flattened x."""
    n = x.numel()
    if n <= CHUNK_ELEMS or x.device.type != "cpu":
        return fn(x)
    flat = x.reshape(-1)
    out = torch.empty(n, dtype=out_dtype, device=x.device)
    for i in range(0, n, CHUNK_ELEMS):
        out[i : i + CHUNK_ELEMS] = fn(flat[i : i + CHUNK_ELEMS])
    return out.reshape(x.shape)


def _row_chunked(fn, x: torch.Tensor, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """fn (row-wise over the last dim, ``out_dtype`` out) applied to blocks of rows of x."""
    n = x.shape[-1] if x.dim() else 1
    rows = x.numel() // max(n, 1)
    block = (CHUNK_ELEMS // max(n, 1)) // CHUNK_ALIGN * CHUNK_ALIGN  # rows per block, aligned
    if x.numel() <= CHUNK_ELEMS or x.device.type != "cpu" or block == 0 or rows <= block:
        return fn(x)
    x2 = x.reshape(rows, n)
    out = torch.empty((rows, n), dtype=out_dtype, device=x.device)
    for i in range(0, rows, block):
        out[i : i + block] = fn(x2[i : i + block])
    return out.reshape(x.shape)


def tree_sum(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sum over ``dim`` in float32 by a fixed pairwise tree (pad to a power of two with zeros, add
    halves): a defined order, the same on every device. Returns float32."""
    x = x.to(torch.float32).movedim(dim, -1)
    n = x.shape[-1]
    if n <= 1:
        return x[..., 0] if n == 1 else x.sum(-1)
    width = 1 << (n - 1).bit_length()
    h = width // 2
    # level 1 of the zero-padded tree without the padded copy: t[i] = x[i] + x[i + h] where i + h < n,
    # else x[i] + 0 (a real add of +0: it maps -0 to +0 exactly as the padded tree does)
    t = torch.empty((*x.shape[:-1], h), dtype=torch.float32, device=x.device)
    torch.add(x[..., : n - h], x[..., h:], out=t[..., : n - h])
    if n - h < h:
        torch.add(x[..., n - h : h], 0.0, out=t[..., n - h :])
    while h > 1:  # further levels in place: t[i] += t[i + h/2] (disjoint halves)
        h //= 2
        t[..., :h].add_(t[..., h : 2 * h])
    return t[..., 0]


def softmax_fp16(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax in fp16: x - max, exp, fp32 tree sum, one reciprocal per row, multiply."""
    if dim in (-1, x.dim() - 1):
        return _row_chunked(_softmax_fp16_last, x)
    return _softmax_fp16_last(x.movedim(dim, -1)).movedim(-1, dim)


def _c_ok(*ts: torch.Tensor):
    """The compiled kernels, when every tensor is a contiguous CPU tensor (else None: torch ops)."""
    return ckernels.lib() if ckernels.usable(*ts) else None


def _softmax_fp16_c(dll, x: torch.Tensor, scale: float | None = None, f32_out: bool = False) -> torch.Tensor:
    """:func:`_softmax_fp16_last` (of ``_hs(x * scale)`` for float32 x) as two C loops around torch's
    float32 exp: the same operations, and torch.exp on a tensor of the block's shape (same lanes).
    ``f32_out``: the fp16 values returned widened to float32 (what a float32 product reads next)."""
    n = x.shape[-1]
    rows = x.numel() // n
    d = torch.empty(x.shape, dtype=torch.float32)
    ws = torch.empty(n, dtype=torch.float32)
    is16 = x.dtype == torch.float16
    dll.qm_softmax_pre(
        x.data_ptr(), int(is16), 1.0 if scale is None else scale, int(scale is not None), rows, n, d.data_ptr()
    )
    torch.exp(d, out=d)
    if f32_out:
        dll.qm_softmax_post(d.data_ptr(), rows, n, None, ws.data_ptr())
        return d
    out = torch.empty(x.shape, dtype=torch.float16)
    dll.qm_softmax_post(d.data_ptr(), rows, n, out.data_ptr(), ws.data_ptr())
    return out


def softmax_fp16_scaled(x: torch.Tensor, scale: float, f32_out: bool = False) -> torch.Tensor:
    """``softmax_fp16(fp16(clamp(x * scale, +-65504)))`` over the last dim for float32 x (attention
    scores times 1/sqrt(D), saturating conversion, softmax): fused when the C kernels apply.
    ``f32_out``: the same fp16 values, returned as float32 (exact widening)."""
    if x.dtype == torch.float32 and x.dim() > 0 and x.shape[-1] > 0 and _c_ok(x) is not None:
        if f32_out and x.numel() <= CHUNK_ELEMS:
            return _softmax_fp16_c(ckernels.lib(), x, scale, True)
        out = _row_chunked(lambda b: _softmax_fp16_c(ckernels.lib(), b, scale), x)
    else:
        out = softmax_fp16(x.mul(scale).clamp_(-FP16_MAX, FP16_MAX).to(torch.float16))
    return out.float() if f32_out else out


def _softmax_fp16_last(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    if dim in (-1, x.dim() - 1) and x.dtype == torch.float16 and x.numel() and _c_ok(x) is not None:
        return _softmax_fp16_c(ckernels.lib(), x)
    x = _h(x).movedim(dim, -1)
    d = x - x.amax(-1, keepdim=True)  # fp16 op = fp32 op rounded to fp16 (see module doc)
    e = _h(torch.exp(d.float()))
    r = 1.0 / tree_sum(e)  # fp32 [...]
    return _h(torch.mul(e, r.unsqueeze(-1))).movedim(-1, dim)  # fp16 * fp32 -> fp32 product, rounded


def layernorm_fp16(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim: fp32 mean and variance (tree sums), fp16 output."""
    return _row_chunked(lambda b: _layernorm_fp16(b, eps), x)


def layernorm_modulate_fp16(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    inv: torch.Tensor | None = None,
    aq=None,
) -> torch.Tensor:
    """``modulate_fp16(layernorm_fp16(x, eps), shift', scale')`` for x [B, N, C] fp16 and float32
    shift/scale [B, 1, C], where (``inv`` float32 [C] given: a consumer's SmoothQuant factors 1/s)
    ``scale' = (1 + scale) * inv - 1`` and ``shift' = shift * inv`` in float32 (else unchanged):
    one C pass for all of it when the kernels apply, the same fp16 values. ``aq`` (a
    :class:`~quantmodel.intarith.fixedpoint.ActQuantizer` with int8 output): the result is ``aq`` of those fp16
    values, quantized in the same pass."""
    dll = ckernels.lib()
    if (
        dll is not None
        and x.dtype == torch.float16
        and x.dim() == 3
        and x.shape[-1] > 0
        and x.device.type == "cpu"
        and all(
            t.dtype == torch.float32
            and t.dim() == 3
            and t.shape[1] == 1
            and t.shape[2] == x.shape[2]
            and t.shape[0] in (1, x.shape[0])
            and t.stride(2) == 1
            for t in (shift, scale)
        )
        and (inv is None or (inv.dtype == torch.float32 and inv.is_contiguous() and inv.shape == (x.shape[2],)))
        and shift.stride(0) == scale.stride(0)
        and shift.shape[0] == scale.shape[0]
    ):
        x = x.contiguous()
        b_, n_, c = x.shape
        pstride = scale.stride(0) if scale.shape[0] > 1 else 0
        if aq is None or (aq.out_dtype == torch.int8 and aq.qmax < 2**24):
            return _layernorm_fp16_c(dll, x, eps, (scale, shift, pstride, inv), n_, aq)
    if inv is not None:
        scale = (1 + scale) * inv - 1
        shift = shift * inv
    y = modulate_fp16(layernorm_fp16(x, eps), shift, scale)
    return y if aq is None else aq(y)


def _layernorm_fp16_c(dll, x: torch.Tensor, eps: float, mod=None, rows_per_batch: int = 1, aq=None) -> torch.Tensor:
    """:func:`_layernorm_fp16` as two C loops around torch's float32 rsqrt (of the [rows] vector of
    var + eps, as eager), optionally followed by the modulation (see layernorm_modulate_fp16)."""
    n = x.shape[-1]
    rows = x.numel() // n
    ws = torch.empty(2 * rows + 4 * n, dtype=torch.float32)  # mean [rows], var + eps [rows], scratch
    wp = ws.data_ptr()
    dll.qm_ln_stats(x.data_ptr(), rows, n, eps, wp, wp + 4 * rows, wp + 8 * rows)
    rstd = ws[rows : 2 * rows]
    torch.rsqrt(rstd, out=rstd)
    out = torch.empty(x.shape, dtype=torch.float16 if aq is None else torch.int8)
    qr, qm = (0.0, 0.0) if aq is None else (aq.recip, float(aq.qmax))
    if mod is None:
        dll.qm_ln_apply(
            x.data_ptr(), rows, n, wp, rstd.data_ptr(), out.data_ptr(), 0, None, None, 0, None, 1, wp + 8 * rows, qr, qm
        )
    else:
        scale, shift, pstride, inv = mod
        dll.qm_ln_apply(
            x.data_ptr(),
            rows,
            n,
            wp,
            rstd.data_ptr(),
            out.data_ptr(),
            1,
            scale.data_ptr(),
            shift.data_ptr(),
            pstride,
            None if inv is None else inv.data_ptr(),
            rows_per_batch,
            wp + 8 * rows,
            qr,
            qm,
        )
    return out


def residual_fp16(x: torch.Tensor, y: torch.Tensor, y_scale: float | None, gate: torch.Tensor | None):
    """fp16 residual ``x + gate * y`` (gated_add_fp16 with gate = fp16(gate)) or ``x + y`` in one C pass,
    x [B, N, C] fp16, y fp16 (``y_scale`` None) or int8/int16 codes at the float32 scale ``y_scale``
    (dequantized as the emulator's saturating fp16 conversion), gate float32 [B, 1, C]. Returns None
    when the C kernels do not apply (the caller runs the torch ops)."""
    dll = ckernels.lib()
    if dll is None or x.dtype != torch.float16 or x.dim() != 3 or y.shape != x.shape or x.numel() == 0:
        return None
    kind = {torch.float16: 1, torch.int8: 0, torch.int16: 2}.get(y.dtype)
    if kind is None or (kind == 1) != (y_scale is None) or x.device.type != "cpu" or y.device.type != "cpu":
        return None
    if y_scale is not None and not _is_f32(y_scale):  # the float32 product is the dequantization only then
        return None
    b_, n_, c = x.shape
    if gate is not None and not (
        gate.dtype == torch.float32
        and gate.dim() == 3
        and gate.shape[1] == 1
        and gate.shape[2] == c
        and gate.shape[0] in (1, b_)
        and gate.stride(2) == 1
    ):
        return None
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty(x.shape, dtype=torch.float16)
    ws = torch.empty(3 * c, dtype=torch.float32)
    gs = 0 if gate is None or gate.shape[0] == 1 else gate.stride(0)
    dll.qm_residual_fp16(
        x.data_ptr(),
        y.data_ptr(),
        kind,
        1.0 if y_scale is None else y_scale,
        None if gate is None else gate.data_ptr(),
        gs,
        b_,
        n_,
        c,
        out.data_ptr(),
        ws.data_ptr(),
    )
    return out


def _layernorm_fp16(x: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float16 and x.numel() and _c_ok(x) is not None:
        return _layernorm_fp16_c(ckernels.lib(), x, eps)
    x = _h(x)
    n = x.shape[-1]
    mean = tree_sum(x) / n  # fp32 [...]
    d = x.float() - mean.unsqueeze(-1)  # fp32 (vector unit keeps the centred value in fp32)
    var = tree_sum(d * d) / n
    rstd = torch.rsqrt(var + eps)
    return _h(d * rstd.unsqueeze(-1))


def gelu_fp16(x: torch.Tensor) -> torch.Tensor:
    """tanh-approximated GELU, each step rounded to fp16."""
    return _flat_chunked(_gelu_fp16, x)


def _gelu_fp16(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float16 and _c_ok(x) is not None:  # two C loops around torch's float32 tanh
        dll = ckernels.lib()
        inner = torch.empty(x.shape, dtype=torch.float32)
        dll.qm_gelu_pre(x.data_ptr(), x.numel(), inner.data_ptr())
        torch.tanh(inner, out=inner)
        out = torch.empty(x.shape, dtype=torch.float16)
        dll.qm_gelu_post(x.data_ptr(), x.numel(), inner.data_ptr(), out.data_ptr())
        return out
    x = _h(x).float()
    inner = _h(0.7978845608028654 * (x + _h(0.044715 * _h(x * x * x).float()).float()))
    t = _h(torch.tanh(inner.float()))
    return _h(0.5 * x * (1.0 + t.float()))


def silu_fp16(x: torch.Tensor) -> torch.Tensor:
    x = _h(x).float()
    return _h(x * _h(torch.sigmoid(x)).float())


def _batch_rows_chunked(fn, x: torch.Tensor, full: tuple, per_batch: tuple) -> torch.Tensor:
    """fn(x, *full, *per_batch) (elementwise, fp16 out) for x [B, N, C]: ``full`` tensors shaped like
    x, ``per_batch`` ones [B, 1, C] (broadcast over N); in blocks of rows of one batch element."""
    shapes_ok = (
        x.dim() == 3
        and all(t.shape == x.shape for t in full)
        and all(
            t.dim() == 3 and t.shape[0] == x.shape[0] and t.shape[1] == 1 and t.shape[2] == x.shape[2]
            for t in per_batch
        )
    )
    if not shapes_ok or x.numel() <= CHUNK_ELEMS or x.device.type != "cpu":
        return fn(x, *full, *per_batch)
    b_, n, c = x.shape
    block = max(1, CHUNK_ELEMS // c)
    out = torch.empty(x.shape, dtype=torch.float16, device=x.device)
    for b in range(b_):
        pb = [t[b] for t in per_batch]  # [1, C]
        for i in range(0, n, block):
            out[b, i : i + block] = fn(x[b, i : i + block], *(t[b, i : i + block] for t in full), *pb)
    return out


def modulate_fp16(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, one fp16 rounding per step."""
    one_p = _h(1.0 + _h(scale).float())
    out = _axpy_c(_h(x), None, one_p, _h(shift), 1)
    if out is not None:
        return out
    return _batch_rows_chunked(_mul_add_fp16, _h(x), (), (one_p, _h(shift)))


def _mul_add_fp16(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x * a + b  # two fp16 ops, each = fp32 op rounded to fp16


def gated_add_fp16(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + gate * y, one fp16 rounding per step."""
    out = _axpy_c(_h(x), _h(y), _h(gate), None, 0)
    if out is not None:
        return out
    return _batch_rows_chunked(_gated_add_fp16, _h(x), (_h(y),), (_h(gate),))


def _axpy_c(x: torch.Tensor, y, g: torch.Tensor, c2, op: int):
    """One C loop of x + h(g * y) (op 0) or h(x * g) + c2 (op 1) for x (and y) [B, N, C] fp16 and
    per-batch g, c2 [B, 1, C]; None when the shapes or the kernels do not fit."""
    if x.dim() != 3 or x.numel() == 0 or (y is not None and y.shape != x.shape):
        return None
    b_, n_, c = x.shape
    per = [t for t in (g, c2) if t is not None]
    if any(t.dim() != 3 or t.shape[1] != 1 or t.shape[2] != c or t.shape[0] not in (1, b_) for t in per):
        return None
    g, c2 = (None if t is None else t.expand(b_, 1, c).contiguous() for t in (g, c2))
    x, y = x.contiguous(), None if y is None else y.contiguous()
    if _c_ok(x, *(t for t in (y, g, c2) if t is not None)) is None:
        return None
    out = torch.empty(x.shape, dtype=torch.float16)
    ws = torch.empty(4 * c, dtype=torch.float32)
    ckernels.lib().qm_fp16_axpy(
        x.data_ptr(),
        None if y is None else y.data_ptr(),
        g.data_ptr(),
        None if c2 is None else c2.data_ptr(),
        b_,
        n_,
        c,
        op,
        out.data_ptr(),
        ws.data_ptr(),
    )
    return out


def _gated_add_fp16(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return x + gate * y  # two fp16 ops, each = fp32 op rounded to fp16


# ---- int mode: shared pieces ------------------------------------------------------------------------
def _check_scale(name: str, s: float) -> float:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
        raise ConfigError(name, s, "a finite positive float")
    return float(s)


def _check_int(name: str, q: torch.Tensor, keep32: bool = False) -> torch.Tensor:
    """q as int64 (int32 kept as is with ``keep32``: callers that stay in range)."""
    if q.is_floating_point() or q.dtype == torch.bool:
        raise ConfigError(f"{name}.dtype", q.dtype, "an integer dtype")
    if keep32 and q.dtype in (torch.int8, torch.int16, torch.int32):
        return q.to(torch.int32)
    return q.to(torch.int64)


def working_shift(scale: float, frac_bits: int = WORK_FRAC_BITS) -> int:
    """k >= 0 with scale * 2^k <= 2^-frac_bits < scale * 2^(k+1) (0 when scale is already coarser)."""
    k, target = 0, 2.0**-frac_bits
    while scale * 2.0 ** (k + 1) <= target:
        k += 1
    return k


def _to_working(q: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    k = working_shift(scale)
    return torch.bitwise_right_shift(q, k), scale * 2.0**k  # floor


def exp_constants(s_w: float) -> tuple[int, int, int]:
    """(q_ln2, q_b, q_c) of i-exp at input scale s_w; output scale is EXP_A * s_w^2."""
    if s_w > math.log(2):
        raise ConfigError("exp input scale", s_w, "<= ln 2 (finer input resolution)")
    return (math.floor(math.log(2) / s_w), math.floor(EXP_B / s_w), math.floor(EXP_C / (EXP_A * s_w * s_w)))


def i_exp(q: torch.Tensor, s_w: float) -> torch.Tensor:
    """exp of q * s_w for q <= 0 (int64): floor arithmetic; result int64 < 2^28, scale EXP_A*s_w^2.

    x = -z ln2 + p, p in (-ln2, 0]: z = floor(-q / q_ln2), q_p = q + z q_ln2,
    poly = (q_p + q_b)^2 + q_c, out = poly >> z (z capped at 40, where poly >> z is 0).
    """
    return _i_exp_q(q, *exp_constants(s_w))


def _i_exp_q(q: torch.Tensor, q_ln2: int, q_b: int, q_c: int) -> torch.Tensor:
    """:func:`i_exp` from its integer constants (integer ops only: compiled as is on CUDA)."""
    z = torch.div(-q, q_ln2, rounding_mode="floor")
    q_p = q + z * q_ln2
    a = q_p + q_b
    poly = a * a + q_c
    return torch.bitwise_right_shift(poly, z.clamp(max=40))


# ---- int mode ops ------------------------------------------------------------------------------------
def softmax_int(q: torch.Tensor, scale: float, out_bits: int = 8) -> tuple[torch.Tensor, float]:
    """Integer softmax over the last dim (I-BERT): q int [..., n] at ``scale`` (the 1/sqrt(D) of
    attention folded in) -> probabilities in [0, 2^(out_bits-1)-1] (int32; int8 for 8 bits) with
    scale 2^-(out_bits-1). A probability of 1 saturates to 127/128 (8 bits); all floor.
    """
    scale = _check_scale("scale", scale)
    if out_bits not in (4, 6, 8):
        raise ConfigError("out_bits", out_bits, "4, 6 or 8")
    _check_int("q", q, keep32=True)
    if q.dim() == 0 or q.shape[-1] > MAX_ROW:
        raise ConfigError("softmax row length", q.shape[-1] if q.dim() else 0, f"<= {MAX_ROW}")
    p = out_bits - 1
    k = working_shift(scale)
    consts = (k, *exp_constants(scale * 2.0**k), p)
    if q.dtype == torch.int32 and q.numel() and _c_ok(q) is not None:  # one C pass per row, same integers
        out = torch.empty(q.shape, dtype=torch.int32)
        n = q.shape[-1]
        ebuf = torch.empty(n, dtype=torch.int64)
        ckernels.lib().qm_softmax_int(q.data_ptr(), q.numel() // n, n, *consts, out.data_ptr(), ebuf.data_ptr())
        return out, 2.0**-p
    if cudafused.enabled(q) and q.numel():  # one compiled kernel, the same integer ops
        return cudafused.compiled(_softmax_int_rows)(q, *consts), 2.0**-p
    # rows are independent: blocks of rows keep the int64 temporaries in cache (the same integers)
    return _row_chunked(lambda b: _softmax_int_rows(b, *consts), q, torch.int32), 2.0**-p


def _softmax_int_rows(q: torch.Tensor, k: int, q_ln2: int, q_b: int, q_c: int, p: int) -> torch.Tensor:
    """softmax_int's row pipeline from its integer constants (integer ops only)."""
    x = q.to(torch.int64)
    d = x - x.amax(dim=-1, keepdim=True)  # <= 0, |d| < 2^32
    e = _i_exp_q(torch.bitwise_right_shift(d, k), q_ln2, q_b, q_c)  # [..., n] < 2^28 (floor to S_w)
    total = e.sum(dim=-1, keepdim=True)  # >= poly(0) > 0
    factor = torch.div(torch.full_like(total, 2**SOFTMAX_NORM_BITS), total, rounding_mode="floor")
    out = torch.bitwise_right_shift(e * factor, SOFTMAX_NORM_BITS - p).clamp_(max=2**p - 1)
    return out.to(torch.int32)


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(v)) for int64 0 <= v < 2^62: the float64 square root, floored, then one integer
    correction each way. Exact: fl(sqrt(fl(v))) is within sqrt(v) * 2^-52 < 2^-21 of sqrt(v), so its
    floor is isqrt(v) or one off, and r*r, (r+1)^2 < 2^63. The hardware's integer Newton iterations
    (I-BERT Alg. 4) give the same integer; this form has no data-dependent loop (no host sync on a GPU)."""
    v = v.to(torch.int64)
    r = torch.sqrt(v.to(torch.float64)).floor().to(torch.int64)
    r = r - (r * r > v).to(torch.int64)
    return r + ((r + 1) * (r + 1) <= v).to(torch.int64)


def ln_eps_table(scale: float, n: int, eps: float) -> list[int]:
    """eps in units of the integer variance after a row shift k: floor(eps n / (S^2 4^k)), <= 2^50."""
    return [math.floor(min(eps * n / (scale * scale) / 4.0**k, 2.0**50)) for k in range(19)]


def layernorm_int(q: torch.Tensor, scale: float, eps: float = 1e-6) -> tuple[torch.Tensor, float]:
    """LayerNorm without affine over the last dim (I-BERT): int32 out, scale sqrt(n) / 2^30.

    mean = floor(sum / n); y = q - mean; each row is shifted right by k (floor) so |y_k| <= 2^15
    (k from the row's bit length: a leading-zero count); var = sum(y_k^2) + eps_k;
    std = isqrt(var) (>= 1); out = (y_k * (2^50 // std)) >> 20.
    """
    scale = _check_scale("scale", scale)
    if q.is_floating_point() or q.dtype == torch.bool:
        raise ConfigError("q.dtype", q.dtype, "an integer dtype")
    n = q.shape[-1] if q.dim() else 1
    if n > MAX_ROW:
        raise ConfigError("layernorm row length", n, f"<= {MAX_ROW}")
    eps_k = device_constant(  # int64 [19], on the device once per (scale, n, eps)
        q.device,
        ("ln_eps", scale, n, eps),
        lambda: torch.tensor(ln_eps_table(scale, n, eps), dtype=torch.int64, device=q.device),
    )
    if q.dtype == torch.int32 and q.numel() and _c_ok(q) is not None:  # one C pass per row, same integers
        out = torch.empty(q.shape, dtype=torch.int32)
        ckernels.lib().qm_layernorm_int(q.data_ptr(), q.numel() // n, n, eps_k.data_ptr(), out.data_ptr())
        return out, math.sqrt(n) / 2.0**LN_OUT_BITS
    x = _check_int("q", q)
    run = cudafused.compiled(_layernorm_int_rows) if cudafused.enabled(q) and q.numel() else _layernorm_int_rows
    return run(x, eps_k), math.sqrt(n) / 2.0**LN_OUT_BITS


def _layernorm_int_rows(x: torch.Tensor, eps_k: torch.Tensor) -> torch.Tensor:
    """layernorm_int's row pipeline: x int64 [..., n], eps_k int64 [19] (:func:`ln_eps_table`) -> int32
    (integer ops and one exactly corrected float64 square root: compiled as is on CUDA)."""
    n = x.shape[-1]
    mean = torch.div(x.sum(dim=-1, keepdim=True), n, rounding_mode="floor")
    y = x - mean  # |y| < 2^32
    amax = y.abs().amax(dim=-1, keepdim=True)
    k = torch.zeros_like(amax)  # #{j < 18: amax >= 2^(15+j)}: the row's leading-zero count
    for j in range(18):
        k = k + (amax >= 2 ** (LN_VAR_BITS + j)).to(torch.int64)
    y_k = torch.bitwise_right_shift(y, k)
    var = (y_k * y_k).sum(dim=-1, keepdim=True) + eps_k[k]  # < 2^51
    std = isqrt(var.clamp(min=1))
    factor = torch.div(torch.full_like(std, 2**LN_FACTOR_BITS), std, rounding_mode="floor")
    out = torch.bitwise_right_shift(y_k * factor, LN_FACTOR_BITS - LN_OUT_BITS)
    return out.to(torch.int32)


def gelu_constants(s_w: float) -> tuple[int, int, int, float]:
    """(q_bb, q_one, T, out_scale) of i-GELU at working scale s_w (erf input scale s_w / sqrt 2)."""
    s_e = s_w / math.sqrt(2.0)
    q_bb = math.floor(ERF_B / s_e)
    q_one = math.floor(1.0 / (ERF_A * s_e * s_e))
    t = (2 * q_one - 1).bit_length()  # smallest T with 2^T >= 2 q_one
    return q_bb, q_one, t, s_w * (ERF_A * s_e * s_e) * 2.0**t / 2.0


def gelu_int(q: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """i-GELU (I-BERT): x/2 (1 + i-erf(x / sqrt 2)), floor; int32 out with |out| <= |q_w|."""
    scale = _check_scale("scale", scale)
    _check_int("q", q, keep32=True)
    k = working_shift(scale)
    s_w = scale * 2.0**k
    q_bb, q_one, t, out_scale = gelu_constants(s_w)
    if q.dtype in (torch.int16, torch.int32) and _c_ok(q) is not None:  # one C pass, same integers
        q32 = q.to(torch.int32).contiguous()
        out = torch.empty(q.shape, dtype=torch.int32)
        ckernels.lib().qm_gelu_int(q32.data_ptr(), q32.numel(), k, 2**SAT_BITS, q_bb, q_one, t, out.data_ptr())
        return out, out_scale
    if cudafused.enabled(q) and q.numel():  # one compiled kernel, the same integer ops
        return cudafused.compiled(_gelu_int_block)(q, k, q_bb, q_one, t), out_scale
    # elementwise: cache-sized blocks give the same integers
    return _flat_chunked(lambda b: _gelu_int_block(b, k, q_bb, q_one, t), q, torch.int32), out_scale


def _gelu_int_block(q: torch.Tensor, k: int, q_bb: int, q_one: int, t: int) -> torch.Tensor:
    x = _check_int("q", q, keep32=True)
    x_w = torch.bitwise_right_shift(x, k).clamp_(-(2**SAT_BITS), 2**SAT_BITS)  # floor
    # erf + q_one = 2 q_one - (u - q_bb)^2 (x > 0), (u - q_bb)^2 (x < 0); at x = 0 the product is 0
    # whichever is taken. Both are <= 2 q_one: int32 when that fits, the product x_w * (...) int64.
    small = 2 * q_one < 2**31 and q_bb * q_bb < 2**31
    x_w = x_w.to(torch.int32 if small else torch.int64)
    d = x_w.abs().clamp_(max=q_bb).sub_(q_bb)
    d2 = d.mul_(d)  # (u - q_bb)^2
    f = torch.where(x_w >= 0, 2 * q_one - d2, d2)
    out = torch.bitwise_right_shift(x_w.to(torch.int64) * f, t)
    return out.to(torch.int32)


SIG_BITS = 15  # sigmoid as Q15


def silu_int(q: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """SiLU x * sigmoid(x): sigmoid = e^min(x,0) / (e^min(x,0) + e^min(-x,0)) with i-exp, as Q15
    (floor division), then (x * sig) >> 15 (floor); int32 out at the working scale S_w."""
    scale = _check_scale("scale", scale)
    x_w, s_w = _to_working(_check_int("q", q), scale)
    x_w = x_w.clamp(-(2**SAT_BITS), 2**SAT_BITS)
    e1 = i_exp(x_w.clamp(max=0), s_w)
    e2 = i_exp((-x_w).clamp(max=0), s_w)
    sig = torch.div(torch.bitwise_left_shift(e1, SIG_BITS), e1 + e2, rounding_mode="floor")
    out = torch.bitwise_right_shift(x_w * sig, SIG_BITS)
    return out.to(torch.int32), s_w


def _sat32(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(INT32_MIN, INT32_MAX)


def _q16(q: torch.Tensor, s: float) -> torch.Tensor:
    """A tensor at scale s as Q16 fixed point (half even, saturated to int32), as float64 integers."""
    return requantize_scale(q, s * 2.0**GATE_FRAC_BITS, INT32_MIN, INT32_MAX, torch.float64)


def _at(q: torch.Tensor, s_in: float, s_t: float) -> torch.Tensor:
    """q rescaled from s_in to s_t (half even, saturated to int32), as float64 integers."""
    return requantize_scale(q, s_in / s_t, INT32_MIN, INT32_MAX, torch.float64)


def _madd_finish(a: torch.Tensor, f: torch.Tensor, r: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The modulate / gated-add tail on float64 integers, broadcasting a, f and r [B or 1, N or 1, C]:
    p = sat32(round_half_even(a * f / 2^16)), then clamp(round_half_even(sat32(p + r) / 2^8), qmin, qmax)
    as int32 (one compiled kernel on CUDA).

    Exact in float64 for |a|, |f|, |r| <= 2^31: the product's rounding is the proof of
    :class:`~quantmodel.intarith.fixedpoint.Requantizer` (acc = a, multiplier = f, s = 16; the sign of f
    does not enter the relative error bound; outputs saturate at 2^31 <= 2^(53 - 16), so no near-tie
    check is needed), ``fl(a * f) * 2^-16`` equals ``fl(a * f * 2^-16)`` (a power of two), and
    ``(p + r) / 2^8`` is exact."""
    p = (a * f * 2.0**-GATE_FRAC_BITS).round().clamp(INT32_MIN, INT32_MAX)
    acc = (p + r).clamp(INT32_MIN, INT32_MAX)
    return (acc * 2.0**-GUARD_BITS).round().clamp(qmin, qmax).to(torch.int32)


def _at_consts(real: float, device: torch.device) -> tuple:
    """The device constants of ``_at``'s requantizer for ``real`` (cudafused.requant_exact's m, s,
    zero, saturate), prepared once per value (the static scales repeat every forward)."""
    m, sh = quantize_multiplier(float(real))
    return _requantizer(m, sh, INT32_MIN, INT32_MAX, torch.float64, device).cuda_constants(device)


def _madd_at(q, m_, s_, z_, sat_, f, r, qmin: int, qmax: int) -> torch.Tensor:
    """``_madd_finish(_at(q), f, r)`` with ``_at`` as its CUDA kernel computes it (exact int64
    requantization to int32 range, as float64): the same values, one pass (the float64 intermediate
    is never written)."""
    a = cudafused.requant_exact(q, m_, s_, z_, sat_, INT32_MIN, INT32_MAX, torch.float64)
    return _madd_finish(a, f, r, qmin, qmax)


def _madd_at2(qa, ma, sa, za, sata, f, qb, mb, sb, zb, satb, qmin: int, qmax: int) -> torch.Tensor:
    """``_madd_finish(_at(qa), f, _at(qb))`` in one pass, as :func:`_madd_at`."""
    a = cudafused.requant_exact(qa, ma, sa, za, sata, INT32_MIN, INT32_MAX, torch.float64)
    b = cudafused.requant_exact(qb, mb, sb, zb, satb, INT32_MIN, INT32_MAX, torch.float64)
    return _madd_finish(a, f, b, qmin, qmax)


def modulate_int(
    q_x: torch.Tensor,
    s_x: float,
    q_shift: torch.Tensor,
    s_shift: float,
    q_scale: torch.Tensor,
    s_scale: float,
    s_out: float,
    qmin: int,
    qmax: int,
) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift in fixed point -> int32 in [qmin, qmax] at s_out.

    Work scale s_t = s_out / 2^8: x_t = requant(x -> s_t); m = requant(scale -> Q16) + 2^16;
    p = round(x_t * m / 2^16); sh_t = requant(shift -> s_t); out = clamp(round((p + sh_t) / 2^8)).
    Every rounding is half to even; intermediates saturate to int32. Error vs exact, in output
    units: <= 0.5 + (|x| 2^-17 + s_t (|1 + scale| / 2 + 1.5)) / s_out (the Q16 factor limits very
    fine output scales; |1 + scale| must stay below 2^15). Operands broadcast
    (shift/scale [B, 1, C] against x [B, N, C]); all operands int32-range integer tensors.
    The integers are carried in float64 (exact: every value is below 2^32, see _madd_finish).
    """
    for name, s in (("s_x", s_x), ("s_shift", s_shift), ("s_scale", s_scale), ("s_out", s_out)):
        _check_scale(name, s)
    _check_int("q_x", q_x, keep32=True), _check_int("q_scale", q_scale, keep32=True)
    _check_int("q_shift", q_shift, keep32=True)
    m, r = modulate_factors(q_shift, s_shift, q_scale, s_scale, s_out)
    return modulate_apply(q_x, s_x, m, r, s_out, qmin, qmax)


def modulate_apply(
    q_x: torch.Tensor, s_x: float, m: torch.Tensor, r: torch.Tensor, s_out: float, qmin: int, qmax: int
) -> torch.Tensor:
    """:func:`modulate_int` given its per-step operands (``m``, ``r`` from :func:`modulate_factors`, on
    q_x's device): the part that touches the activations, with no host-side work that depends on data
    (so a CUDA graph can replay it with new operands)."""
    s_t = s_out / 2.0**GUARD_BITS
    out = _fix_madd_c(q_x, s_x / s_t, m, None, None, r, qmin, qmax)
    if out is not None:
        return out
    if cudafused.enabled(q_x) and q_x.numel():  # one compiled kernel: _at fused into the tail
        return cudafused.compiled(_madd_at)(q_x, *_at_consts(s_x / s_t, q_x.device), m, r, qmin, qmax)
    x_t = _at(q_x, s_x, s_t)
    run = cudafused.compiled(_madd_finish) if cudafused.enabled(x_t) and x_t.numel() else _madd_finish
    return run(x_t, m, r, qmin, qmax)


def modulate_factors(
    q_shift: torch.Tensor, s_shift: float, q_scale: torch.Tensor, s_scale: float, s_out: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """modulate_int's per-step operands as float64 integers: ``m`` = sat32(Q16(scale) + 2^16) (the
    factor 1 + scale) and the shift requantized to the work scale s_out / 2^8."""
    s_t = s_out / 2.0**GUARD_BITS
    return _sat32(_q16(q_scale, s_scale) + 2**GATE_FRAC_BITS), _at(q_shift, s_shift, s_t)


def gate_q16(q_gate: torch.Tensor, s_gate: float) -> torch.Tensor:
    """gated_add_int's gate as Q16 fixed point (float64 integers)."""
    return _q16(q_gate, s_gate)


def gated_add_int(
    q_x: torch.Tensor,
    s_x: float,
    q_y: torch.Tensor,
    s_y: float,
    q_gate: torch.Tensor,
    s_gate: float,
    s_out: float,
    qmin: int,
    qmax: int,
) -> torch.Tensor:
    """Gated residual x + gate * y in fixed point -> int32 in [qmin, qmax] at s_out.

    s_t = s_out / 2^8: y_t = requant(y -> s_t); g = requant(gate -> Q16); p = round(y_t * g / 2^16);
    out = clamp(round((requant(x -> s_t) + p) / 2^8)); half to even, int32 saturation inside.
    The integers are carried in float64 (exact, see _madd_finish).
    """
    for name, s in (("s_x", s_x), ("s_y", s_y), ("s_gate", s_gate), ("s_out", s_out)):
        _check_scale(name, s)
    _check_int("q_x", q_x, keep32=True), _check_int("q_y", q_y, keep32=True)
    _check_int("q_gate", q_gate, keep32=True)
    return gated_add_apply(q_x, s_x, q_y, s_y, gate_q16(q_gate, s_gate), s_out, qmin, qmax)


def gated_add_apply(
    q_x: torch.Tensor, s_x: float, q_y: torch.Tensor, s_y: float, g: torch.Tensor, s_out: float, qmin: int, qmax: int
) -> torch.Tensor:
    """:func:`gated_add_int` given its Q16 gate ``g`` (:func:`gate_q16`, on q_y's device), as
    :func:`modulate_apply`."""
    s_t = s_out / 2.0**GUARD_BITS
    out = _fix_madd_c(q_y, s_y / s_t, g, q_x, s_x / s_t, None, qmin, qmax)
    if out is not None:
        return out
    if cudafused.enabled(q_y) and q_y.numel():  # one compiled kernel: both _at fused into the tail
        cy, cx = _at_consts(s_y / s_t, q_y.device), _at_consts(s_x / s_t, q_y.device)
        return cudafused.compiled(_madd_at2)(q_y, *cy, g, q_x, *cx, qmin, qmax)
    y_t = _at(q_y, s_y, s_t)
    run = cudafused.compiled(_madd_finish) if cudafused.enabled(y_t) and y_t.numel() else _madd_finish
    return run(y_t, g, _at(q_x, s_x, s_t), qmin, qmax)


@functools.lru_cache(maxsize=4096)
def _rq_consts(real: float) -> tuple[float, float, int, int]:
    """(c, lim, m, s) of the prepared per-tensor Requantizer that ``_at`` uses for ``real`` (a pure
    function of the float: memoised, the static scales repeat every forward)."""
    m, sh = quantize_multiplier(float(real))
    return per_tensor_consts(m, sh, INT32_MIN, INT32_MAX)


def fix_madd_args(qa, real_a: float, f, qb, real_b: float, r_bc, qmin: int, qmax: int, out, ws) -> tuple:
    """The arguments of ckernels ``qm_fix_madd`` (see :func:`_fix_madd_c`) for contiguous int32 qa / qb
    [B, N, C], float64 f / r_bc [B, 1, C], int32 out like qa and a float64 workspace of 2 * C."""
    b_, n_, c = qa.shape
    ca, la, ma, sa = _rq_consts(float(real_a))
    cb, lb, mb, sb = _rq_consts(float(real_b)) if qb is not None else (0.0, 2.0, 0, 0)
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    return (
        ptr(qa),
        ca,
        la,
        ma,
        sa,
        ptr(f),
        ptr(qb),
        cb,
        lb,
        mb,
        sb,
        ptr(r_bc),
        b_,
        n_,
        c,
        float(qmin),
        float(qmax),
        ptr(out),
        ptr(ws),
    )


def _fix_madd_c(q_a: torch.Tensor, real_a: float, f: torch.Tensor, q_b, real_b, r_bc, qmin: int, qmax: int):
    """The fixed-point modulate / gated add pipeline in one C pass (see ckernels ``qm_fix_madd``):
    ``_madd_finish(_at(q_a), f, R)`` with R = ``_at(q_b)`` (q_b given, same shape as
    q_a) or the per-(batch, channel) float64 integers ``r_bc`` [B, 1, C]; f float64 [B or 1, 1, C or 1].
    q_a [B, N, C]. None when the shapes or the kernels do not fit (the caller runs the torch ops)."""
    dll = ckernels.lib()
    if dll is None or q_a.dim() != 3 or q_a.device.type != "cpu" or q_a.numel() == 0:
        return None
    b_, n_, c = q_a.shape
    if q_b is not None and q_b.shape != q_a.shape:
        return None

    def per_bc(t):  # [B or 1, 1, C or 1] (or fewer leading dims) -> contiguous float64 [B, 1, C]
        if t.dim() == 3 and t.shape[0] == b_ and t.shape[1] == 1 and t.shape[2] == c:
            return t.to(torch.float64).contiguous()
        sh = (1,) * (3 - t.dim()) + tuple(t.shape)
        if len(sh) != 3 or sh[0] not in (1, b_) or sh[1] != 1 or sh[2] not in (1, c):
            return None
        return t.to(torch.float64).reshape(sh).expand(b_, 1, c).contiguous()

    f = per_bc(f)
    r_bc = None if r_bc is None else per_bc(r_bc)
    if f is None or (q_b is None and r_bc is None):
        return None
    qa = q_a.to(torch.int32).contiguous()
    qb = None if q_b is None else q_b.to(torch.int32).contiguous()
    out = torch.empty(qa.shape, dtype=torch.int32)
    ws = torch.empty(2 * c, dtype=torch.float64)
    dll.qm_fix_madd(*fix_madd_args(qa, real_a, f, qb, real_b, r_bc, qmin, qmax, out, ws))
    return out
