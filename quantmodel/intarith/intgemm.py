"""Exact int8 x int8 -> int32 matrix products, with accumulator-overflow detection.

The chip's MAC array multiplies int8 operands and accumulates in int32 two's complement adders.
Wrapping adders make the final sum correct whenever it fits in int32, whatever happens to the
partial sums, so overflow is decided on the *final* sum: if it leaves int32 the hardware result is
wrong and :class:`AccumulatorOverflowError` is raised naming the layer (never silent wrap).

Cheap first: ``bound = K * max|a| * max|b| (+ max|bias|)``. With the dtype bounds (128 * 128) this
is below 2**31 for every K < 131072, so the usual case costs nothing; only when the bound exceeds
int32 are the real maxima scanned, and only if that bound still exceeds int32 is the exact sum
(computed in float64, exact below 2**53) checked element by element.

:class:`PreparedLinear` moves this decision to load time for a layer: the dtype bound holds for every
int8 input, so it is a static proof; layers where it fails keep the run-time check.

Paths (all exact, all give the same integers; ``backend=`` forces one, for tests):
- ``int_mm``: a 2-D product per call (CPU: :func:`quantmodel.intarith.gemmpaths.mm`, which takes
  ``torch._int_mm`` or an exact chunked float product, whichever was measured faster for the shape
  class on this CPU; CUDA: ``torch._int_mm``, which needs M > 16, K and N multiples of 8 and a
  column-major right operand, so CUDA operands are zero-padded, which adds zeros to the sums, and
  transposed in memory);
- ``float``: float32 products over K chunks of at most 1024 (every partial sum an integer of magnitude
  <= 2**24, exactly representable, so any summation order, FMA included, is exact), the chunks added
  in int32 (:func:`quantmodel.intarith.gemmpaths.matmul_float_exact`). Used for batched operands (attention)
  where a loop over 2-D GEMM calls would be slow.
"""

from __future__ import annotations

import torch

from quantmodel.intarith import ckernels, gemmpaths
from quantmodel.intarith.fixedpoint import Requantizer
from workloads.errors import ConfigError

INT32_MAX = 2**31 - 1
FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53
BACKENDS = ("auto", "int_mm", "float")


class AccumulatorOverflowError(ArithmeticError):
    """An int32 accumulator would overflow: the hardware result would be wrong."""

    def __init__(self, layer: str, max_abs: int, k: int):
        self.layer = layer
        self.max_abs = max_abs
        self.k = k
        super().__init__(
            f"int32 accumulator overflow in layer {layer!r}: |acc| reaches {max_abs} "
            f"> {INT32_MAX} (K={k}); lower the activation/weight range or split K"
        )


def _absmax(t: torch.Tensor) -> int:
    return int(t.abs().max().item()) if t.numel() else 0


def _bias_absmax(bias: torch.Tensor) -> int:
    """max|bias|, remembered on the tensor with its version counter (a layer's bias is scanned once,
    not per call; an in-place change bumps ``_version`` and forces a new scan)."""
    memo = getattr(bias, "_q1_absmax", None)
    if memo is not None and memo[0] == bias._version:
        return memo[1]
    v = _absmax(bias)
    try:
        bias._q1_absmax = (bias._version, v)
    except (AttributeError, RuntimeError):  # e.g. tensor subclasses without a __dict__
        pass
    return v


def _dtype_absmax(t: torch.Tensor) -> int:
    return 2 ** (torch.iinfo(t.dtype).bits - 1)


def accumulator_bound(
    k: int, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, scan: bool = False
) -> int:
    """Upper bound of |acc| for ``a @ b + bias``: dtype bounds of a, b (or their scanned maxima if
    ``scan``) plus the largest |bias|."""
    am = _absmax(a) if scan else _dtype_absmax(a)
    bm = _absmax(b) if scan else _dtype_absmax(b)
    cm = 0 if bias is None else _bias_absmax(bias)  # N values: scanned once per bias tensor
    return k * am * bm + cm


def _check_int8(name: str, t: torch.Tensor) -> None:
    if t.dtype != torch.int8:
        raise ConfigError(f"{name}.dtype", t.dtype, "torch.int8")


def _prepare(
    a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, layer: str, device: str | torch.device | None
):
    """Validate, move to the device, and decide overflow. Returns (a, b, bias, bound, wide): ``wide``
    is the exact int32 result when the cheap bound exceeded int32 (computed in float64 and checked),
    else None."""
    _check_int8("a", a)
    _check_int8("b", b)
    if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
        raise ConfigError("shapes", (tuple(a.shape), tuple(b.shape)), "[..., M, K] x [..., K, N]")
    if bias is not None and (bias.dtype != torch.int32 or bias.shape != (b.shape[-1],)):
        raise ConfigError("bias", (bias.dtype, tuple(bias.shape)), f"int32 [{b.shape[-1]}]")
    if device is not None:
        dev = torch.device(device)
        a, b = a.to(dev), b.to(dev)
        bias = bias.to(dev) if bias is not None else None
    elif b.device != a.device or (bias is not None and bias.device != a.device):
        b = b.to(a.device)
        bias = bias.to(a.device) if bias is not None else None
    k = a.shape[-1]
    bound = accumulator_bound(k, a, b, bias)
    if bound > INT32_MAX:
        bound = accumulator_bound(k, a, b, bias, scan=True)
    if bound <= INT32_MAX:
        return a, b, bias, bound, None
    # possible overflow: compute exactly in wide precision and check
    if bound >= FLOAT64_EXACT:
        raise AccumulatorOverflowError(layer, bound, k)
    wide = _float_matmul(a, b, torch.float64)
    if bias is not None:
        wide = wide + bias.to(torch.float64)
    max_abs = int(wide.abs().max().item()) if wide.numel() else 0
    if max_abs > INT32_MAX:
        raise AccumulatorOverflowError(layer, max_abs, k)
    return a, b, bias, bound, wide.to(torch.int32)


def int_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    layer: str = "?",
    device: str | torch.device | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Exact ``a @ b (+ bias)`` as int32: a int8 [..., M, K], b int8 [K, N] or [..., K, N].

    bias: int32 [N] (added to the int32 accumulator, overflow included in the check).
    device: where to compute (default: a's device); the result stays there.
    Raises AccumulatorOverflowError(layer) when any sum leaves int32.
    """
    if backend not in BACKENDS:
        raise ConfigError("backend", backend, ", ".join(BACKENDS))
    a, b, bias, _, wide = _prepare(a, b, bias, layer, device)
    if wide is not None:
        return wide
    use_int_mm = backend == "int_mm" or (backend == "auto" and b.dim() == 2)
    if use_int_mm:
        if b.dim() == 2:  # one GEMM over all leading rows, bias fused
            k = a.shape[-1]
            acc = _int_mm_2d(a.reshape(-1, k), b, bias)
            return acc.reshape(*a.shape[:-1], b.shape[-1])
        acc = _int_mm_nd(a, b)
    else:
        acc = gemmpaths.matmul_float_exact(a, b)  # float32 over K chunks: exact for any K
    if bias is not None:
        acc = acc.add_(bias)  # in int32 (acc is a fresh tensor); cannot wrap, the bound includes it
    return acc


def int_linear(
    x: torch.Tensor,
    w_t: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    layer: str = "?",
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Linear layer ``x @ w_t + bias``: x int8 [..., K], w_t int8 [K, N] (transposed nn.Linear weight;
    store it contiguous once), bias int32 [N] -> int32 [..., N]."""
    lead = x.shape[:-1]
    out = int_matmul(x.reshape(-1, x.shape[-1]), w_t, bias, layer=layer, device=device)
    return out.reshape(*lead, w_t.shape[-1])


def int_linear_requant(
    x: torch.Tensor,
    w_t: torch.Tensor,
    bias: torch.Tensor | None,
    rq: Requantizer,
    *,
    layer: str = "?",
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``rq(int_linear(x, w_t, bias))`` fused: x int8 [..., K], w_t int8 [K, N], bias int32 [N] or None,
    ``rq`` a prepared per-channel or per-tensor :class:`~quantmodel.intarith.fixedpoint.Requantizer`
    -> ``rq.out_dtype`` [..., N]; the same integers, overflow detection included.

    On CPU the product is formed in column blocks (see :func:`_column_blocks`) and each block's
    int32 sums are requantized while they are still in cache, straight into the output: no full
    int32 accumulator is written or read back.
    """
    k, n = x.shape[-1], w_t.shape[-1]
    lead = x.shape[:-1]
    x2, w_t, bias, _, wide = _prepare(x.reshape(-1, k), w_t, bias, layer, device)
    if w_t.dim() != 2:
        raise ConfigError("w_t.dim", w_t.dim(), "2 ([K, N])")
    if wide is None and bias is not None and x2.shape[0] and rq.fuses_bias(x2.device, n):
        return rq.with_bias(_int_mm_2d(x2, w_t), bias).reshape(*lead, n)  # CUDA: bias added in the requantization
    if wide is not None or x2.device.type != "cpu" or x2.shape[0] == 0:
        acc = wide if wide is not None else _int_mm_2d(x2, w_t, bias)
        return rq(acc).reshape(*lead, n)
    out = torch.empty((x2.shape[0], n), dtype=rq.out_dtype, device=x2.device)
    blocks = _column_blocks(x2.shape[0], n)
    if bias is None or bias.is_contiguous():  # bias add + requantization in one C loop (same integers)
        done = True
        for j0, j1 in blocks:
            wb = w_t if len(blocks) == 1 else _weight_block(w_t, j0, j1)
            if not rq.block(j0, j1).fused(gemmpaths.mm(x2, wb), out[:, j0:j1], None if bias is None else bias[j0:j1]):
                done = False
                break
        if done:
            return out.reshape(*lead, n)
    if len(blocks) == 1:
        rq(_mm_bias(x2, w_t, bias), out=out)
    else:
        for j0, j1 in blocks:
            acc = _mm_bias(x2, w_t[:, j0:j1].contiguous(), None if bias is None else bias[j0:j1])
            rq.block(j0, j1)(acc, out=out[:, j0:j1])
    return out.reshape(*lead, n)


class PreparedLinear:
    """``int_linear_requant(x, w_t, bias, rq)`` of one layer with the per-call set-up moved to load
    time: the same integers, the same overflow guarantee.

    Overflow: the dtype bound ``K * 128 * 128 + max|bias|`` is evaluated once here; when it is below
    2**31 no int32 sum of any int8 input can overflow (a static proof), so calls skip the check. When
    the proof fails, or off the CPU / without the C kernels, every call goes through
    :func:`int_linear_requant` (its runtime check: scanned maxima, then the exact wide sum)."""

    def __init__(self, w_t: torch.Tensor, bias: torch.Tensor | None, rq: Requantizer, layer: str = "?"):
        if w_t.dtype != torch.int8 or w_t.dim() != 2:
            raise ConfigError("w_t", (w_t.dtype, tuple(w_t.shape)), "int8 [K, N]")
        self.w_t, self.bias, self.rq, self.layer = device_layout(w_t), bias, rq, layer
        k, n = w_t.shape
        self.k, self.n = k, n
        cm = 0 if bias is None else _bias_absmax(bias)
        self.proved = k * 128 * 128 + cm <= INT32_MAX and (
            bias is None or (bias.dtype == torch.int32 and bias.shape == (n,) and bias.is_contiguous())
        )
        self._plans: dict = {}  # row count -> column-block plan (C arguments resolved once)
        self.rq_size = torch.empty((), dtype=rq.out_dtype).element_size()
        self.fast = (
            self.proved
            and w_t.device.type == "cpu"
            and rq.out_dtype in ckernels.OUT_KIND
            and (bias is None or bias.device.type == "cpu")
        )

    def _plan(self, m: int):
        """The C calls of an [m, K] input, per column block: ``(j0, weight block, C arguments after the
        accumulator pointer and row count)``, with every constant pointer resolved once (per row count)."""
        plan = self._plans.get(m)
        if plan is None:
            blocks = _column_blocks(m, self.n)
            kind = ckernels.OUT_KIND[self.rq.out_dtype]
            qmin, qmax = float(self.rq.qmin), float(self.rq.qmax)
            plan = []
            for j0, j1 in blocks:
                rqb = self.rq.block(j0, j1)
                c, lim, mm, ss = rqb._c_consts(j1 - j0, self.w_t.device)
                wb = self.w_t if len(blocks) == 1 else self.w_t[:, j0:j1].contiguous()
                bb = None if self.bias is None else self.bias[j0:j1].contiguous()
                keep = (wb, bb, c, lim, mm, ss)  # the pointers below stay valid while these live
                args = (
                    j1 - j0,
                    j1 - j0,
                    None if bb is None else bb.data_ptr(),
                    c.data_ptr(),
                    lim.data_ptr() if rqb.check else None,
                    mm.data_ptr(),
                    ss.data_ptr(),
                    qmin,
                    qmax,
                )
                plan.append((j0 * self.rq_size, wb, args, kind, keep))
            self._plans[m] = plan
        return plan

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x int8 [..., K] -> ``rq.out_dtype`` [..., N]."""
        dll = ckernels.lib()
        if (
            not self.fast
            or dll is None
            or x.dtype != torch.int8
            or x.device.type != "cpu"
            or x.shape[-1] != self.k
            or x.numel() == 0
        ):
            return int_linear_requant(x, self.w_t, self.bias, self.rq, layer=self.layer)
        x2 = x.reshape(-1, self.k)
        m, n = x2.shape[0], self.n
        out = torch.empty((*x.shape[:-1], n), dtype=self.rq.out_dtype)
        optr = out.data_ptr()
        req = dll.qm_requant
        for off, wb, args, kind, _ in self._plan(m):
            acc = gemmpaths.mm(x2, wb)  # [M, block] int32, exact (cannot overflow: proved at load time)
            req(acc.data_ptr(), m, *args, optr + off, kind, n)
        return out


def _weight_block(w_t: torch.Tensor, j0: int, j1: int) -> torch.Tensor:
    """``w_t[:, j0:j1]`` contiguous, remembered on the weight tensor (with its version counter) so a
    layer's column blocks are copied once, not per call."""
    memo = getattr(w_t, "_q1_blocks", None)
    if memo is None or memo[0] != w_t._version:
        memo = (w_t._version, {})
        try:
            w_t._q1_blocks = memo
        except (AttributeError, RuntimeError):
            return w_t[:, j0:j1].contiguous()
    blk = memo[1].get((j0, j1))
    if blk is None:
        blk = memo[1][(j0, j1)] = w_t[:, j0:j1].contiguous()
    return blk


def _float_matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.matmul(a.to(dtype), b.to(dtype))


_BLOCK_N = 384  # column block of the CPU int8 GEMM (see _column_blocks)
_WIDE_N = 768  # wider outputs are split on CPU
_BLOCK_MIN_M = 256  # only tall products: small ones are overhead-bound


def _column_blocks(m: int, n: int) -> list[tuple[int, int]]:
    """Column ranges for the CPU ``_int_mm``: measured on this project's CPU (oneDNN, torch 2.13),
    2048x384x1152 takes ~5 ms whole but ~2.8 ms as three 384-column products, 2048x384x1536 ~7 ms vs
    ~3.7 ms (benchmarks/bench_emulator.py); up to 768 columns the whole product is as fast."""
    if n <= _WIDE_N or m < _BLOCK_MIN_M:
        return [(0, n)]
    nb = -(-n // _BLOCK_N)
    step = -(-n // nb)
    return [(j, min(n, j + step)) for j in range(0, n, step)]


def _mm_bias(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    acc = gemmpaths.mm(a, b)
    return acc if bias is None else acc.add_(bias)  # int32, cannot wrap: the bound includes the bias


def device_layout(w_t: torch.Tensor) -> torch.Tensor:
    """A [K, N] weight in the layout its device's GEMM reads without a copy: row-major on the CPU
    (the column blocks slice it), column-major on CUDA (cuBLASLt's int8 "TN" wants the right operand
    so). Store weights this way once, at load time; the values are the same."""
    if w_t.device.type == "cuda":
        return w_t if w_t.t().is_contiguous() else w_t.t().contiguous().t()
    return w_t.contiguous()


def _int_mm_2d(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """[M, K] x [K, N] (+ bias [N]) -> [M, N] int32."""
    if a.device.type != "cuda":
        blocks = _column_blocks(a.shape[0], b.shape[1])
        if len(blocks) == 1:
            return _mm_bias(a, b, bias)
        out = torch.empty((a.shape[0], b.shape[1]), dtype=torch.int32, device=a.device)
        for j0, j1 in blocks:
            blk = gemmpaths.mm(a, _weight_block(b, j0, j1))
            if bias is None:
                out[:, j0:j1] = blk
            else:
                torch.add(blk, bias[j0:j1], out=out[:, j0:j1])
        return out
    m, k = a.shape
    n = b.shape[1]
    mp, kp, np_ = max(m, 17), -(-k // 8) * 8, -(-n // 8) * 8
    if (mp, kp, np_) != (m, k, n):  # zero padding: extra terms are 0 * x, sums unchanged
        a = torch.nn.functional.pad(a, (0, kp - k, 0, mp - m))
        b = torch.nn.functional.pad(b, (0, np_ - n, 0, kp - k))
    # cuBLASLt int8 wants the right operand column-major (its "TN" layout): no copy for a weight
    # stored by device_layout
    acc = torch._int_mm(a.contiguous(), device_layout(b))[:m, :n]
    return acc if bias is None else acc + bias


def _int_mm_nd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    m, k = a.shape[-2], a.shape[-1]
    if b.dim() == 2:  # one GEMM over all leading rows
        lead = a.shape[:-2]
        return _int_mm_2d(a.reshape(-1, k), b).reshape(*lead, m, b.shape[-1])
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = a.expand(*batch, m, k).reshape(-1, m, k)
    b3 = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    out = torch.stack([_int_mm_2d(a3[i], b3[i]) for i in range(a3.shape[0])])
    return out.reshape(*batch, m, b.shape[-1])
