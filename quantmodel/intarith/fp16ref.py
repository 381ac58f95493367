"""Independent numpy reference of the fp16 vector-unit kernels and of dynamic per-token quantization.

The integer ops have a float64 oracle (:mod:`quantmodel.intarith.reference`); this module is the oracle of
what runs between them in ``fp16`` mode, written from the documented semantics (docs/verify.md,
``quantmodel.intarith.intops``) in numpy, step by step: every value the vector unit stores is a float16,
each elementwise step is one float32 operation rounded once to float16 (``_h``), reductions are float32
sums in a zero-padded pairwise tree. It imports neither ``intops`` nor the C kernels, so a kernel that
drops a rounding, reorders a reduction or folds a factor wrongly disagrees with it.

Transcendentals are the one place where the definition names a library, not an operation: the chip's
exp / tanh are "the float32 function, rounded to fp16" (LayerNorm's reciprocal square root is two IEEE
operations, a float32 sqrt and a division, which is what torch's CPU ``rsqrt`` computes). Here they are computed in float64 and
rounded once to float32 (a correctly rounded float32 function); a float32 library may differ from that
in the last float32 bit, which changes the fp16 result only when the value lies within 2**-13 relative
of an fp16 rounding boundary. ``verify`` therefore compares the kernels without transcendentals
(LayerNorm, modulate, residual and gated adds, the smoothing multiply, dequantization, dynamic
quantization) bit for bit on CPU, and those with one (softmax, GELU; LayerNorm on CUDA, whose rsqrt is
approximate) allowing at most one fp16 ULP on a small
fraction of elements (:data:`TRANSCENDENTAL_TOLERANCE`).
"""

from __future__ import annotations

import numpy as np

F16_MAX = 65504.0
# LayerNorm / softmax / GELU: differences allowed against this reference, from a float32 libm's last bit
TRANSCENDENTAL_TOLERANCE = {"max_ulp": 1, "max_fraction": 1e-3}
GELU_C1 = np.float32(0.044715)
GELU_C2 = np.float32(0.7978845608028654)


def _h(x) -> np.ndarray:
    """One rounding of a float32 result to float16 (round to nearest even; beyond the range: inf)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(x, dtype=np.float32).astype(np.float16)


def _f(x) -> np.ndarray:
    return np.asarray(x).astype(np.float32)


def _fn32(fn, x: np.ndarray) -> np.ndarray:
    """A float32 transcendental, correctly rounded: float64 evaluation rounded once to float32."""
    return fn(x.astype(np.float64)).astype(np.float32)


def tree(x: np.ndarray) -> np.ndarray:
    """float32 sum over the last axis: zero-padded to a power of two, halves added level by level."""
    x = _f(x)
    n = x.shape[-1]
    if n == 1:
        return x[..., 0]
    width = 1 << (n - 1).bit_length()
    t = np.concatenate([x, np.zeros((*x.shape[:-1], width - n), np.float32)], axis=-1)
    while t.shape[-1] > 1:
        half = t.shape[-1] // 2
        t = t[..., :half] + t[..., half:]
    return t[..., 0]


def layernorm(x16: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm without affine: float32 mean and variance (tree sums), h((x - mean) * rstd) with
    ``rstd = 1 / sqrt(var + eps)``, a float32 square root then a float32 division (torch's CPU rsqrt)."""
    x = _f(x16)
    n = np.float32(x.shape[-1])
    mean = tree(x) / n
    d = x - mean[..., None]
    var = tree(d * d) / n
    rstd = np.float32(1) / np.sqrt(var + np.float32(eps))  # two IEEE float32 operations
    return _h(d * rstd[..., None])


def modulate(x16: np.ndarray, shift: np.ndarray, scale: np.ndarray, smooth: np.ndarray | None = None) -> np.ndarray:
    """``x * (1 + scale) + shift`` for x [B, N, C] fp16 and float32 shift/scale [B, 1, C]; a consumer's
    SmoothQuant factors s [C] fold in with ``inv = 1 / s`` as ``scale' = (1 + scale) * inv - 1``,
    ``shift' = shift * inv`` (float32). Steps: ``a = h(1 + h(scale'))``, ``h(h(x * a) + h(shift'))``."""
    scale, shift = _f(scale), _f(shift)
    if smooth is not None:
        inv = np.float32(1) / _f(smooth)
        scale = (np.float32(1) + scale) * inv - np.float32(1)
        shift = shift * inv
    a = _h(np.float32(1) + _f(_h(scale)))
    return _h(_f(_h(_f(x16) * _f(a))) + _f(_h(shift)))


def add(x16: np.ndarray, y16: np.ndarray, gate: np.ndarray | None = None) -> np.ndarray:
    """Residual add ``h(x + y)``, or the gated one ``h(x + h(h(gate) * y))`` (gate float32 [B, 1, C])."""
    y = _f(y16)
    if gate is not None:
        y = _f(_h(_f(_h(gate)) * y))
    return _h(_f(x16) + y)


def softmax(x32: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Attention softmax over the last axis: scores ``h(clamp(x * scale))`` (float32 x), ``d = h(s - max)``,
    ``e = h(exp(d))``, ``r = 1 / tree(e)`` (float32), ``h(e * r)``."""
    s = _f(x32)
    if scale is not None:
        s = s * np.float32(scale)
    s = _f(_h(np.clip(s, -F16_MAX, F16_MAX)))
    d = _f(_h(s - s.max(axis=-1, keepdims=True)))
    e = _f(_h(_fn32(np.exp, d)))
    r = np.float32(1) / tree(e)
    return _h(e * r[..., None])


def gelu(x16: np.ndarray) -> np.ndarray:
    """tanh GELU: ``t = h(x*x*x)``, ``t = h(c1 t)``, ``u = h(c2 (x + t))``, ``th = h(tanh u)``, ``h((x/2)(1 + th))``."""
    x = _f(x16)
    t = _f(_h(x * x * x))
    t = _f(_h(GELU_C1 * t))
    u = _f(_h(GELU_C2 * (x + t)))
    th = _f(_h(_fn32(np.tanh, u)))
    return _h((np.float32(0.5) * x) * (np.float32(1) + th))


def smooth_multiply(x: np.ndarray, smooth: np.ndarray) -> np.ndarray:
    """The explicit SmoothQuant multiply ``h(h(x) * h(1 / s))`` (1/s a float32 quotient)."""
    return _h(_f(_h(_f(x))) * _f(_h(np.float32(1) / _f(smooth))))


def dequant(q: np.ndarray, scale: float) -> np.ndarray:
    """An integer GEMM output as the vector unit reads it: ``h(clamp(fp32(q * scale), +-65504))`` (the
    float64 product rounded once to float32: for int8/int16 codes and a float32 scale, the float32 product)."""
    return _h(np.clip((q.astype(np.float64) * float(scale)).astype(np.float32), -F16_MAX, F16_MAX))


def dynamic_quant(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token (row) dynamic quantization of x [R, K]: scale ``fp32(max|x| / qmax)`` (1.0 for a zero row),
    codes ``clamp(round_half_even(x / scale))`` in float64. Returns (int8 codes [R, K], float32 scales [R])."""
    qmax = 2 ** (bits - 1) - 1
    a = np.abs(x.astype(np.float64)).max(axis=1)
    s = np.where(a > 0, a / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint(x.astype(np.float64) / s.astype(np.float64)[:, None]), -qmax, qmax)
    return q.astype(np.int8), s


def dynamic_rescale(acc: np.ndarray, s_row: np.ndarray, w_scale: np.ndarray, bias: np.ndarray, fp16: bool):
    """The int32 sums [R, N] back to floats: ``(fp32(acc) * s_row) * w_scale + bias`` in float32 steps,
    then (fp16 mode) the saturating fp16 conversion."""
    y = (acc.astype(np.float32) * _f(s_row)[:, None]) * _f(w_scale)[None, :] + _f(bias)[None, :]
    return _h(np.clip(y, -F16_MAX, F16_MAX)) if fp16 else y


def dynamic_linear(x: np.ndarray, w_t: np.ndarray, w_scale, bias, bits: int, fp16: bool):
    """A dynamic recipe's linear on float input x [R, K] with int8 weights w_t [K, N]: (codes, scales,
    exact int64 sums, output)."""
    q, s = dynamic_quant(x, bits)
    acc = q.astype(np.int64) @ w_t.astype(np.int64)
    return q, s, acc, dynamic_rescale(acc, s, w_scale, bias, fp16)


def ulp_diff(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Distance in fp16 ULPs (steps between representable values; +0 and -0 count as equal)."""

    def key(v):
        b = np.asarray(v, dtype=np.float16).view(np.int16).astype(np.int64)
        return np.where(b < 0, -(b & 0x7FFF), b)  # monotone integer line through the fp16 values

    return np.abs(key(got) - key(want))
