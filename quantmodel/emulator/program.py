"""The emulator's transformer blocks compiled once into a flat list of kernel calls.

Why: on stdit-tiny every op works on a few thousand values, so an eager forward spends as much time
in Python (type checks, dict lookups, argument preparation) and in allocating tensors as in the
kernels themselves. A :class:`BlockProgram` resolves all of that once per (weight set, input
shapes): :class:`ProgramOps`, the recording backend of the block written once in
:mod:`quantmodel.emulator.block`, binds each C kernel (:mod:`quantmodel.intarith.ckernels`) to its
pointers and constants, and keeps the few torch ops that remain (the int8 GEMMs, the float attention
products, torch's float32 exp / tanh / rsqrt, strided copies) as ``out=`` calls. A forward copies its
inputs in and runs the list. The intermediates share one arena laid out by live range
(:func:`_plan_arena`), so the working set of a forward stays in the CPU caches.

Values: each step is the call the eager backend (:class:`~quantmodel.emulator.integer.IntegerEmulator`)
makes for that op (or a C loop with the same operations in the same order), with the same constants and
tensors of the same shapes (so torch's vectorised exp / tanh see the same lanes), so the program's output
equals the eager forward bit for bit (tests/quantmodel/test_emuprogram.py compares them over recipes,
steps, modes, thread counts and shapes). The int mode's per-step parameters (the modulation quantized
to 16 bits) are computed per forward, in one C call per op (``qm_mod_operands``).

Scales taken on line: dynamic recipes in ``int`` mode quantize every integer kernel's input at the
scale of its own abs-max, so those scales (and the kernel constants derived from them) exist only when
the program runs. Each is a :class:`Cell`: the step that measures the range (a C pass, ``qm_dyn_act_quant``,
which also writes the codes, ``qm_mod_absmax`` / ``qm_gated_absmax_p``: the same float values the eager path
builds to take its max) sets it, and the steps that read it derive their constants from it at run time, in C
where that saves a Python step (``qm_fix_madd_r``, ``qm_ln_eps_table``). On the ``ckernel`` GEMM path a
dynamic linear layer is one C call (``qm_dyn_linear_s8``: quantize, GEMM, rescale).

Scope: CPU with the C kernels, not verifying; every recipe in both vector-unit modes: static and dynamic,
symmetric or with zero points (static per tensor, dynamic per token), with or without smoothing /
channel balancing, with float or integer attention products. ``verify`` runs take the eager path:
:func:`build` returns None (as it does for a layer outside :meth:`ProgramOps.lp`'s scope).
"""

from __future__ import annotations

import bisect
import functools
import math

import torch

from quantmodel.emulator import datapath
from quantmodel.emulator.block import IntVal, head_layout, head_views, run_blocks, vmap
from quantmodel.emulator.datapath import PARAM_BITS, RES_BITS, RES_HEADROOM
from quantmodel.intarith import ckernels, fixedpoint, gemmpaths, intops
from quantmodel.intarith.intops import FP16_MAX
from quantmodel.quant.artifact import OUT_BITS, QK_OUT_BITS

ALIGN_BYTES = 64  # arena offsets: cache-line aligned


class Cell:
    """A scale known only when the program runs (dynamic recipes take it from the tensor's abs-max):
    the step that measures it sets ``v``; the later steps that depend on it read it."""

    __slots__ = ("v",)

    def __init__(self):
        self.v = 1.0


def _v(s) -> float:
    return s.v if isinstance(s, Cell) else s


class _Builder:
    """Allocates the program's buffers and appends its steps (zero-argument callables), remembering
    what each step touches: the tensors and raw pointers among a kernel call's arguments, or the tensors
    named for a Python step.

    Without ``offsets`` every buffer is a fresh tensor (the planning pass); with them, buffer ``i`` is a
    view of ``arena`` at ``offsets[i]`` (see :func:`_plan_arena`)."""

    def __init__(self, arena: torch.Tensor | None = None, offsets: list | None = None):
        self.steps: list = []
        self.touches: list = []  # per step: what it reads or writes
        self.bufs: list = []  # the buffers, in request order
        self.keep: list = []  # every tensor a bound pointer refers to stays alive with the program
        self.arena, self.offsets = arena, offsets

    def buf(self, shape, dtype) -> torch.Tensor:
        shape = torch.Size([shape] if isinstance(shape, int) else shape)
        if self.offsets is None:
            t = torch.empty(shape, dtype=dtype)
        else:
            off = self.offsets[len(self.bufs)]
            t = self.arena[off : off + shape.numel() * dtype.itemsize].view(dtype).view(shape)
        self.bufs.append(t)
        self.keep.append(t)
        return t

    def const(self, t: torch.Tensor) -> torch.Tensor:
        self.keep.append(t)
        return t

    def call(self, fn, *args, **kwargs) -> None:
        self.steps.append(functools.partial(fn, *args, **kwargs))
        owner = getattr(fn, "__self__", None)  # a tensor method (copy_) writes its tensor
        bound = (*fn.args, *fn.keywords.values()) if isinstance(fn, functools.partial) else ()  # pointers bound earlier
        self.touches.append((*bound, *args, *kwargs.values(), *((owner,) if isinstance(owner, torch.Tensor) else ())))

    def py(self, fn, *tensors: torch.Tensor) -> None:
        """A Python step that reads or writes (only) ``tensors``."""
        self.steps.append(fn)
        self.touches.append(tensors)


def _plan_arena(bld: _Builder, pinned: list) -> tuple[list, int]:
    """Offsets that let buffers share memory when their live ranges (first to last step touching them)
    do not overlap: the working set then stays in the CPU caches instead of spanning one buffer per op.
    ``pinned`` buffers live throughout (the inputs written before the first step, the output read after
    the last). First fit in order of first use. Returns (offsets, arena bytes)."""
    n = len(bld.bufs)
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), i) for i, t in enumerate(bld.bufs))
    starts = [sp[0] for sp in spans]
    first, last = [len(bld.steps)] * n, [-1] * n
    for k, items in enumerate(bld.touches):
        for a in items:
            addr = a.data_ptr() if isinstance(a, torch.Tensor) else a if type(a) is int else None
            if addr is None:
                continue
            j = bisect.bisect_right(starts, addr) - 1
            if j >= 0 and addr < spans[j][1]:
                i = spans[j][2]
                first[i], last[i] = min(first[i], k), max(last[i], k)
    pin = {id(t) for t in pinned}
    for i, t in enumerate(bld.bufs):
        if id(t) in pin or last[i] < 0:  # pinned, or never touched (kept whole, to be safe)
            first[i], last[i] = -1, len(bld.steps)
    offsets, placed, total = [0] * n, [], 0
    for i in sorted(range(n), key=lambda i: (first[i], i)):
        size = -(-bld.bufs[i].numel() * bld.bufs[i].element_size() // ALIGN_BYTES) * ALIGN_BYTES
        busy = sorted((o, o + sz) for o, sz, f, la in placed if f <= last[i] and first[i] <= la)
        off = 0
        for lo, hi in busy:  # first gap that fits
            if off + size <= lo:
                break
            off = max(off, hi)
        offsets[i] = off
        placed.append((off, size, first[i], last[i]))
        total = max(total, off + size)
    return offsets, total


class BlockProgram:
    """All blocks of one (weight set, batch, tokens, text length). ``run`` takes the block input (the
    embedded tokens, float32), the projected text and t0 and returns the last block's output as the
    emulator holds it before the final layer: fp16 values (``fp16`` mode) or the dequantized float32
    residual codes (``int`` mode); a buffer of the program: read it before the next run."""

    def __init__(self, builder: _Builder, x_in, y_in, t0_in, out, saturate_inputs: bool):
        self.builder, self.steps = builder, builder.steps  # the builder keeps the buffers alive
        self.x_in, self.y_in, self.t0_in, self.out = x_in, y_in, t0_in, out
        self.saturate = saturate_inputs

    def run(self, x: torch.Tensor, y: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
        if self.saturate:  # fp16 mode: the emulator's saturating fp16 conversion (clamp, then round)
            x, y = x.clamp(-FP16_MAX, FP16_MAX), y.clamp(-FP16_MAX, FP16_MAX)
        self.x_in.copy_(x)
        self.y_in.copy_(y)
        self.t0_in.copy_(t0)
        for s in self.steps:
            s()
        return self.out


def build(emu, x_shape: tuple, y_shape: tuple, pool: dict) -> BlockProgram | None:
    """The program of ``emu``'s current weight set for block input [B, N, C] and text [B, L, C], or
    None when the emulator's configuration is outside the scope in the module doc. Compiled twice: once
    with a fresh tensor per buffer to find the live ranges, then into one arena (:func:`_plan_arena`).
    ``pool``: per shapes, the arena of the emulator's earlier programs, reused (programs run one at a
    time), so per-step weight sets (TSQ+TSW) share one arena."""
    dll = ckernels.lib()
    if dll is None or emu.verifier is not None or emu.device.type != "cpu" or emu.mode not in ("fp16", "int"):
        return None
    try:
        first = ProgramOps(emu, dll, _Builder()).compile(emu.model, x_shape, y_shape)
    except _Unsupported:
        return None
    offsets, nbytes = _plan_arena(first.builder, [first.x_in, first.y_in, first.t0_in, first.out])
    arena = pool.get("arena")
    if arena is None or arena.numel() < nbytes:
        arena = pool["arena"] = torch.empty(nbytes, dtype=torch.uint8)
    prog = ProgramOps(emu, dll, _Builder(arena, offsets)).compile(emu.model, x_shape, y_shape)
    if len(prog.steps) != len(first.steps) or [(t.shape, t.dtype) for t in prog.builder.bufs] != [
        (t.shape, t.dtype) for t in first.builder.bufs
    ]:  # the plan is only valid for the same program
        raise RuntimeError("emuprogram: the two compile passes differ (internal error)")
    return prog


class _Unsupported(Exception):
    pass


class ProgramOps:
    """The recording backend of :mod:`quantmodel.emulator.block`: each op appends to the builder the
    kernel calls the eager backend (:class:`~quantmodel.emulator.integer.IntegerEmulator`) makes for
    it, on buffers of the builder; raises :class:`_Unsupported` for anything outside the program's
    scope."""

    def __init__(self, emu, dll, bld: _Builder):
        self.emu, self.dll, self.b = emu, dll, bld
        self.res_dtype = torch.int32 if emu.mode == "int" else None  # codes the int-mode adds widen anyway
        self.memo: dict = {}
        self.res_bits, self.res_headroom, self.param_bits = RES_BITS, RES_HEADROOM, PARAM_BITS
        self.dyn_int = not emu.static and emu.mode == "int"  # every int-mode scale taken on line

    # ---- pieces ---------------------------------------------------------------------------------------
    def c_gemm(self, a: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> tuple | None:
        """(packed w, int16 scratch for a) when the GEMM path chosen for a [M, K] by w [K, N] is the C kernel
        (bound per program: w packed once, a's int16 copy in a program buffer), else None."""
        m, k = a.shape
        n = w.shape[1]
        if gemmpaths.choose(m, k, n) != "ckernel" or not (a.is_contiguous() and out.is_contiguous()) or 0 in (m, k, n):
            return None
        bp = self.b.const(gemmpaths._packed(w, self.dll))
        return bp, self.b.buf(self.dll.qm_gemm_pack_a_size(m, k), torch.int16)

    def mm(self, a: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> None:
        """gemmpaths.mm(a, w, out=out) of int8 a [M, K] by w [K, N]: on the C kernel path its call bound here
        (:meth:`c_gemm`), the same kernel without the per-call dispatch; a path forced at run time
        (gemmpaths.forced) still wins."""
        bound = self.c_gemm(a, w, out)
        if bound is None:
            self.b.call(gemmpaths.mm, a, w, out=out)
            return
        bp, ap = bound
        m, k = a.shape
        gemm = functools.partial(
            self.dll.qm_gemm_s8, a.data_ptr(), m, k, bp.data_ptr(), w.shape[1], out.data_ptr(), ap.data_ptr()
        )
        forced, mm = gemmpaths._FORCED, gemmpaths.mm

        def step():
            if forced[0] is None:
                gemm()
            else:
                mm(a, w, out=out)

        self.b.py(step, a, out, ap)

    def lp(self, name: str):
        """A static layer's prepared parameters (int8 codes, symmetric or with a zero point; fast prepared
        GEMM), else out of scope."""
        p = self.emu.linear_params(name)
        int8 = p is not None and (p.zq is not None or (p.xq is not None and p.xq.out_dtype == torch.int8))
        if not int8 or not p.static or not p.gemm.fast:
            raise _Unsupported(name)
        return p

    def lp_dyn(self, name: str):
        """A dynamic-recipe layer: float32 bias and weight scales, and a K for which no int8 sum can
        overflow int32 (so the eager path's run-time check cannot fire)."""
        p = self.emu.linear_params(name)
        if (
            p is None
            or p.static
            or p.bias is None
            or p.bias.dtype != torch.float32
            or p.w_scale.dtype != torch.float32
            or p.w_t.shape[0] * 128 * 128 >= 2**31
        ):
            raise _Unsupported(name)
        return p

    def dyn_linear(self, name: str, x) -> torch.Tensor:
        """IntegerEmulator.linear of a dynamic recipe: per-token scales from the row's abs-max, int8 codes,
        the int8 GEMM, the float32 rescale with bias; fp16 mode converts to fp16 (saturating). Int mode's
        integer inputs are dequantized first."""
        emu, bld = self.emu, self.b
        p = self.lp_dyn(name)
        if isinstance(x, IntVal):
            x = self.dequant(x.q, x.scale)
        if p.smooth is not None and p.fold in ("mul", "text"):
            x = self.dyn_smooth(p, x)
        if emu.asym:
            return self.dyn_linear_zp(name, p, x)
        fp16 = emu.mode == "fp16"
        k, n = p.w_t.shape
        rows = x.numel() // k
        q, s_row = bld.buf((rows, k), torch.int8), bld.buf(rows, torch.float32)
        acc = bld.buf((rows, n), torch.int32)
        out = bld.buf((*x.shape[:-1], n), torch.float16 if fp16 else torch.float32)
        quant = functools.partial(
            self.dll.qm_dyn_quant,
            x.data_ptr(),
            ckernels.IN_KIND_FLOAT[x.dtype],
            rows,
            k,
            emu.qa,
            q.data_ptr(),
            s_row.data_ptr(),
        )

        def step():
            if quant():  # a non-finite activation: the eager definition reports it
                emu.linear(name, x.clone())
                raise RuntimeError(f"emuprogram: {name}: non-finite input not reported")

        consts = [bld.const(t.contiguous()).data_ptr() for t in (p.w_scale, p.bias)]
        rescale = functools.partial(self.dll.qm_dyn_rescale, acc.data_ptr(), rows, n, s_row.data_ptr(), *consts)
        return self.dyn_gemm(p, quant, step, self.dll.qm_dyn_linear_s8, rescale, consts, q, acc, out, (x, q, s_row))

    def dyn_gemm(self, p, quant, quant_step, fused_c, rescale, consts, q, acc, out, touched) -> torch.Tensor:
        """What both dynamic linears do after setting up their quantizer: quantize (``quant``, into the
        codes ``q`` [rows, K]), the int8 GEMM into ``acc`` and the ``rescale`` into ``out``, as one fused
        C call (``fused_c``, taking the quantizer's arguments, the GEMM's and ``consts``) where the C GEMM
        takes the shape, else as three steps. ``touched``: what the quantizer's step reads or writes."""
        bld, fp16 = self.b, int(self.emu.mode == "fp16")
        w_t = bld.const(p.w_t.contiguous())
        bound = self.c_gemm(q, w_t, acc)
        if bound is not None:  # quantize, GEMM and rescale in one C call (what the steps below do)
            fused = functools.partial(
                fused_c,
                *quant.args,
                bound[0].data_ptr(),
                acc.shape[1],
                acc.data_ptr(),
                bound[1].data_ptr(),
                *consts,
                out.data_ptr(),
                fp16,
            )
            rs = functools.partial(rescale, out.data_ptr(), fp16)
            self.fused_linear(fused, quant_step, q, w_t, acc, rs, *touched, acc, out, bound[1])
            return out
        bld.py(quant_step, *touched)
        self.mm(q, w_t, acc)
        bld.call(rescale.func, *rescale.args, out.data_ptr(), fp16)  # every pointer seen by the planner
        return out

    def fused_linear(self, fused, quant_step, q, w, acc, rescale, *touched: torch.Tensor) -> None:
        """One step running a dynamic linear's fused C call; with a GEMM path forced at run time, or on a
        non-finite input, the separate steps instead (the quantizer's step reports the input)."""
        forced, mm = gemmpaths._FORCED, gemmpaths.mm

        def step():
            if forced[0] is None and not fused():
                return
            quant_step()
            mm(q, w, out=acc)
            rescale()

        self.b.py(step, *touched)

    def dyn_smooth(self, p, x: torch.Tensor) -> torch.Tensor:
        """The explicit channel-balancing multiply of :meth:`IntegerEmulator.linear`'s dynamic branch:
        fp16 mode ``fp16(fp16(x) * fp16(1/s))`` (an fp16 buffer), int mode the float32 ``x / s``."""
        bld = self.b
        if self.emu.mode != "fp16":
            out = bld.buf(x.shape, torch.float32)
            bld.call(torch.div, x, bld.const(p.smooth), out=out)
            return out
        if x.dtype != torch.float16:  # _h(x): float32 values rounded to fp16 first
            xh = bld.buf(x.shape, torch.float16)
            bld.call(xh.copy_, x)
            x = xh
        f = bld.buf(x.shape, torch.float32)
        bld.call(f.copy_, x)
        bld.call(torch.mul, f, bld.const((1.0 / p.smooth).to(torch.float16).float()), out=f)
        h = bld.buf(x.shape, torch.float16)
        bld.call(h.copy_, f)
        return h

    def dyn_linear_zp(self, name: str, p, x: torch.Tensor) -> torch.Tensor:
        """IntegerEmulator._dynamic_zp (asymmetric per-token codes and zero points, the int8 GEMM, the
        rank-1 zero-point correction, the float32 rescale) as two C loops around the GEMM; a row the C
        loop does not take (a non-finite value) is quantized by the torch definition, as eager."""
        emu, bld = self.emu, self.b
        fp16 = emu.mode == "fp16"
        k, n = p.w_t.shape
        rows = x.numel() // k
        q, s_row = bld.buf((rows, k), torch.int8), bld.buf(rows, torch.float32)
        z, acc = bld.buf(rows, torch.int32), bld.buf((rows, n), torch.int32)
        out = bld.buf((*x.shape[:-1], n), torch.float16 if fp16 else torch.float32)
        quant = functools.partial(
            self.dll.qm_dyn_quant_zp,
            x.data_ptr(),
            ckernels.IN_KIND_FLOAT[x.dtype],
            rows,
            k,
            emu.a_bits,
            q.data_ptr(),
            s_row.data_ptr(),
            z.data_ptr(),
        )

        def step():
            if quant():
                rq, rs, rz = fixedpoint.dynamic_zero_points(x.reshape(rows, k).float(), emu.a_bits)
                q.copy_(rq), s_row.copy_(rs), z.copy_(rz)

        consts = [bld.const(t.contiguous()).data_ptr() for t in (p.colsum, p.w_scale, p.bias)]
        rescale = functools.partial(
            self.dll.qm_dyn_rescale_zp, acc.data_ptr(), rows, n, s_row.data_ptr(), z.data_ptr(), *consts
        )
        return self.dyn_gemm(
            p, quant, step, self.dll.qm_dyn_linear_zp_s8, rescale, consts, q, acc, out, (x, q, s_row, z)
        )

    def layer(self, name: str, v, out_dtype: torch.dtype | None = None):
        """A block linear on a value: a static layer's codes at its y_scale (int16, or ``out_dtype``), a
        dynamic one's fp16 values."""
        if not self.emu.static:
            return self.dyn_linear(name, v)
        if isinstance(v, IntVal):
            if v.q.dtype == torch.int32:  # int mode's int32 codes: requantized to the layer's input
                q = self.requant_input(name, v.q, v.scale)
            elif v.q.dtype == torch.int8 and v.scale == self.lp(name).x_scale:  # a fused producer's codes
                q = v.q
            else:
                raise _Unsupported(name)
        else:
            q = self.quant_input(name, v)
        return IntVal(self.gemm(name, q, out_dtype), self.lp(name).y_scale)

    def quant_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``_input_int8`` of a float tensor. Explicit smoothing (``mul`` / ``text`` folds): fp16 mode
        multiplies by fp16 factors inside the quantizer's loop; int mode multiplies the float32 input by
        the float32 factors 1/s first. Otherwise the plain quantizer."""
        p = self.lp(name)
        out = self.b.buf(x.shape, torch.int8)
        c = x.shape[-1]
        inv = None
        if p.smooth is not None and p.fold in ("mul", "text"):
            if self.emu.mode == "fp16":
                if p.inv_h is None:
                    p.inv_h = (1.0 / p.smooth).to(torch.float16).float()  # as IntegerEmulator._input_int8
                inv = self.b.const(p.inv_h)
            else:
                xs = self.b.buf(x.shape, torch.float32)
                self.b.call(torch.mul, x, self.b.const(1.0 / p.smooth), out=xs)  # x.float() * (1.0 / p.smooth)
                x = xs
        if p.zq is not None:  # ZeroPointActQuantizer: clamp(x * recip, lo, hi) rounded, + z
            zq = p.zq
            self.b.call(
                self.dll.qm_act_quant_zp,
                x.data_ptr(),
                ckernels.IN_KIND_FLOAT[x.dtype],
                x.numel(),
                zq.recip,
                float(zq.lo),
                float(zq.hi),
                float(zq.zero),
                out.data_ptr(),
                None if inv is None else inv.data_ptr(),
                0 if inv is None else c,
            )
            return out
        self.b.call(
            self.dll.qm_act_quant,
            x.data_ptr(),
            ckernels.IN_KIND_FLOAT[x.dtype],
            x.numel(),
            p.xq.recip,
            float(p.xq.qmax),
            out.data_ptr(),
            ckernels.OUT_KIND[torch.int8],
            None if inv is None else inv.data_ptr(),
            0 if inv is None else c,
        )
        return out

    def gemm(self, name: str, q: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """PreparedLinear.__call__ of int8 codes q [..., K] -> codes [..., N] at y_scale, as int16 (the
        layer's requantizer) or ``out_dtype`` (int32 for int-mode consumers, which widen them anyway)."""
        p = self.lp(name)
        g = p.gemm
        x2 = q.view(-1, g.k)
        rows = x2.shape[0]
        dt = out_dtype or g.rq.out_dtype
        out = self.b.buf((*q.shape[:-1], g.n), dt)
        esize = out.element_size()
        for off, wb, args, _kind, _ in g._plan(rows):
            acc = self.b.buf((rows, wb.shape[1]), torch.int32)
            self.mm(x2, wb, acc)
            self.b.call(
                self.dll.qm_requant,
                acc.data_ptr(),
                rows,
                *args,
                out.data_ptr() + off // g.rq_size * esize,
                ckernels.OUT_KIND[dt],
                g.n,
            )
        return out

    def split_heads(self, codes: torch.Tensor, scale: float, parts: int, heads: int, tmask: int):
        """IntegerEmulator._split_heads: int16 codes [B, N, P*C] -> P float32 [B, H, N, D] ([B, H, D, N])."""
        b, n, pc = codes.shape
        d = pc // (parts * heads)
        out = self.b.buf((parts, b, heads, n * d), torch.float32)
        kind = {torch.int8: 0, torch.int16: 1, torch.float16: 2}[codes.dtype]
        self.b.call(
            self.dll.qm_split_heads,
            codes.data_ptr(),
            kind,
            1.0 if scale is None else scale,
            b,
            n,
            parts,
            heads,
            d,
            out.data_ptr(),
            tmask,
        )
        return [out[p].view(b, heads, d, n) if (tmask >> p) & 1 else out[p].view(b, heads, n, d) for p in range(parts)]

    def softmax_f32(self, s: torch.Tensor, scale: float) -> torch.Tensor:
        """intops.softmax_fp16_scaled(s, scale, f32_out=True) for float32 scores s."""
        n = s.shape[-1]
        if s.numel() <= intops.CHUNK_ELEMS:  # _softmax_fp16_c(..., f32_out=True): exp in place
            d = self.b.buf(s.shape, torch.float32)
            ws = self.b.buf(n, torch.float32)
            self.b.call(self.dll.qm_softmax_pre, s.data_ptr(), 0, scale, 1, s.numel() // n, n, d.data_ptr())
            self.b.call(torch.exp, d, out=d)
            self.b.call(self.dll.qm_softmax_post, d.data_ptr(), s.numel() // n, n, None, ws.data_ptr())
            return d
        # intops._row_chunked over aligned blocks of rows, fp16 out, then widened
        rows = s.numel() // n
        block = (intops.CHUNK_ELEMS // n) // intops.CHUNK_ALIGN * intops.CHUNK_ALIGN
        if block == 0:
            raise _Unsupported("softmax row")
        s2 = s.view(rows, n)
        h = self.b.buf((rows, n), torch.float16)
        ws = self.b.buf(n, torch.float32)
        for i in range(0, rows, block):
            r = min(block, rows - i)
            d = self.b.buf((r, n), torch.float32)
            self.b.call(self.dll.qm_softmax_pre, s2[i].data_ptr(), 0, scale, 1, r, n, d.data_ptr())
            self.b.call(torch.exp, d, out=d)
            self.b.call(self.dll.qm_softmax_post, d.data_ptr(), r, n, h[i].data_ptr(), ws.data_ptr())
        out = self.b.buf(s.shape, torch.float32)
        self.b.call(out.view(rows, n).copy_, h)
        return out

    def residual_fp16(self, x: torch.Tensor, y: torch.Tensor, y_scale: float | None, gate: torch.Tensor | None):
        """intops.residual_fp16: x fp16 [B, N, C] + gate * y (y int16 codes at y_scale, or fp16)."""
        b_, n_, c = x.shape
        out = self.b.buf(x.shape, torch.float16)
        ws = self.b.buf(3 * c, torch.float32)
        kind = {torch.float16: 1, torch.int8: 0, torch.int16: 2}[y.dtype]
        gs = 0 if gate is None or gate.shape[0] == 1 else gate.stride(0)
        self.b.call(
            self.dll.qm_residual_fp16,
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

    def norm_modulate_fp16(self, norm: str, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, consumer: str):
        """IntegerEmulator.norm_modulate (fp16): LayerNorm + modulation (consumer's smoothing folded)
        emitting the consumer's int8 codes directly when it reads them as they are, else fp16."""
        emu = self.emu
        p = self.lp(consumer) if emu.static else self.lp_dyn(consumer)
        inv = None
        if p.smooth is not None and p.fold == "modulate":
            if p.inv_s is None:
                p.inv_s = 1.0 / p.smooth
            inv = self.b.const(p.inv_s)
        aq = emu._direct_quantizer(p)
        b_, n_, c = x.shape
        rows = b_ * n_
        ws = self.b.buf(2 * rows + 4 * c, torch.float32)
        wp = ws.data_ptr()
        rstd = ws[rows : 2 * rows]
        out = self.b.buf(x.shape, torch.float16 if aq is None else torch.int8)
        qr, qm = (0.0, 0.0) if aq is None else (aq.recip, float(aq.qmax))
        pstride = scale.stride(0) if scale.shape[0] > 1 else 0
        self.b.call(self.dll.qm_ln_stats, x.data_ptr(), rows, c, emu.mods[norm].eps, wp, wp + 4 * rows, wp + 8 * rows)
        self.b.call(torch.rsqrt, rstd, out=rstd)
        self.b.call(
            self.dll.qm_ln_apply,
            x.data_ptr(),
            rows,
            c,
            wp,
            rstd.data_ptr(),
            out.data_ptr(),
            1,
            scale.data_ptr(),
            shift.data_ptr(),
            pstride,
            None if inv is None else inv.data_ptr(),
            n_,
            wp + 8 * rows,
            qr,
            qm,
        )
        return out  # int8 codes at p.x_scale (aq given) or fp16

    def attend_float(self, pre: str, q, k_t, vv, b: int, n: int, c: int) -> torch.Tensor:
        """IntegerEmulator._attend_float -> the proj layer's output [b, n, c] (codes: int16, int32 in int
        mode; fp16 values for a dynamic recipe)."""
        emu = self.emu
        scores = self.b.buf((*q.shape[:-1], k_t.shape[-1]), torch.float32)
        self.b.call(torch.matmul, q, k_t, out=scores)
        scale = emu.mods[pre + ".softmax"].scale
        probs = (
            self.softmax_f32(scores, scale) if emu.mode == "fp16" else self.softmax_int(pre + ".softmax", scores, scale)
        )
        out = self.b.buf((*probs.shape[:-1], vv.shape[-1]), torch.float32)  # [B', H, L, D]
        self.b.call(torch.matmul, probs, vv, out=out)
        h, d = out.shape[1], out.shape[3]
        p = self.emu.linear_params(pre + ".proj")
        aq = emu._direct_quantizer(p)
        if aq is not None:
            q8 = self.b.buf((b, n, c), torch.int8)
            self.b.call(
                self.dll.qm_merge_heads_quant, out.data_ptr(), b, h, n, d, aq.recip, float(aq.qmax), q8.data_ptr()
            )
            return self.layer(pre + ".proj", IntVal(q8, p.x_scale), self.res_dtype)
        merged = self.b.buf((b, n, c), torch.float32)  # out.transpose(1, 2).reshape(b, n, c)
        self.b.call(merged.view(b, n, h, d).copy_, out.transpose(1, 2))
        return self.layer(pre + ".proj", merged, self.res_dtype)

    def project(self, name: str, v):
        return self.layer(name, v)  # int16 codes (what split_heads reads), or a dynamic recipe's floats

    def text(self, y: torch.Tensor) -> torch.Tensor:
        return y  # run() converted it as the eager path does

    def heads(self, pre: str, v, roles: str, num_heads: int) -> list:
        """IntegerEmulator.heads: the C split into head-major float32 operands (integer products: each
        part requantized to its product's input scale), or the eager path's views of float32 values."""
        codes, s_codes = (v.q, v.scale) if isinstance(v, IntVal) else (v, None)
        tmask, targets = head_layout(pre, roles)
        if self.emu.matmuls and self.emu.static:
            return self.split_heads_q8(codes, s_codes, num_heads, tmask, targets)
        if self.emu.matmuls:  # dynamic products: views of the float values, as eager (attend_dyn copies)
            return head_views(codes, len(roles), num_heads, tmask)
        if codes.dtype == torch.float32:  # a dynamic recipe's float32 output (int mode)
            return head_views(codes, len(roles), num_heads, tmask)
        return self.split_heads(codes, s_codes, len(roles), num_heads, tmask)

    def attend(self, pre: str, q, k_t, vv, b: int, n: int, c: int):
        if self.emu.matmuls and not self.emu.static:
            return self.attend_dyn(pre, q, k_t, vv, b, n, c)
        if self.emu.matmuls:
            return self.attend_int(pre, q, k_t, vv, b, n, c)
        return self.attend_float(pre, q, k_t, vv, b, n, c)

    # ---- quantized attention products (static recipes) ---------------------------------------------------
    def mm_scale(self, name: str, fld: str) -> float:
        return float(self.emu.art.get(self.emu.wset, name, fld))

    def split_heads_q8(self, codes: torch.Tensor, s_codes: float, heads: int, tmask: int, targets: list):
        """IntegerEmulator._to_int8 of each head-split part of a GEMM's codes (the requantization to the
        product input scale of ``targets[p]``, as in ``_requant``), laid out as split_heads does, held as
        float32 values for the exact float product."""
        parts = len(targets)
        b, n, pc = codes.shape
        d = pc // (parts * heads)
        pairs = [fixedpoint.quantize_multiplier(float(s_codes / self.mm_scale(nm, fld))) for nm, fld in targets]
        mult = self.b.const(torch.tensor([m for m, _ in pairs], dtype=torch.int64))
        shift = self.b.const(torch.tensor([sh for _, sh in pairs], dtype=torch.int64))
        out = self.b.buf((parts, b, heads, n * d), torch.float32)
        self.b.call(
            self.dll.qm_split_heads_q8,
            codes.data_ptr(),
            0 if codes.dtype == torch.int8 else 1,
            b,
            n,
            parts,
            heads,
            d,
            mult.data_ptr(),
            shift.data_ptr(),
            self.emu.qa,
            out.data_ptr(),
            tmask,
        )
        return [out[p].view(b, heads, d, n) if (tmask >> p) & 1 else out[p].view(b, heads, n, d) for p in range(parts)]

    def requant(self, acc: torch.Tensor, mult, shift, qmin: int, qmax: int, out_dtype=torch.int32) -> torch.Tensor:
        """fixedpoint.requantize(acc, mult, shift, qmin, qmax) of int32 [..., N] (per tensor), written as
        ``out_dtype`` (the eager int32 result, or its narrowing where the values fit)."""
        n = acc.shape[-1]
        rq = fixedpoint._requantizer(mult, shift, qmin, qmax, torch.int32, torch.device("cpu"))
        c, lim, mm, ss = (self.b.const(t) for t in rq._c_consts(n, torch.device("cpu")))
        out = self.b.buf(acc.shape, out_dtype)
        self.b.call(
            self.dll.qm_requant,
            acc.data_ptr(),
            acc.numel() // n,
            n,
            n,
            None,
            c.data_ptr(),
            lim.data_ptr() if rq.check else None,
            mm.data_ptr(),
            ss.data_ptr(),
            float(qmin),
            float(qmax),
            out.data_ptr(),
            ckernels.OUT_KIND[out_dtype],
            n,
        )
        return out

    def int_product(self, name: str, a: torch.Tensor, b_: torch.Tensor, qo: int) -> torch.Tensor:
        """IntegerEmulator.matmul (static): the exact product of int8 values (a float32 product is exact
        when every partial sum stays below 2**24, which the bound K * qmax**2 guarantees), then the
        requantization by the artifact's multiplier -> int32 codes at the product's y_scale."""
        k = a.shape[-1]
        if k * self.emu.qa * self.emu.qa > 2**24:  # float32 over K chunks, added in int32 (exact)
            acc = self.b.buf((*a.shape[:-1], b_.shape[-1]), torch.int32)
            self.b.call(gemmpaths.matmul_float_exact, a, b_, out=acc)
        else:
            acc_f = self.b.buf((*a.shape[:-1], b_.shape[-1]), torch.float32)
            self.b.call(torch.matmul, a, b_, out=acc_f)
            acc = self.b.buf(acc_f.shape, torch.int32)
            self.b.call(acc.copy_, acc_f)
        g, art = self.emu.wset, self.emu.art
        m, sh = int(art.get(g, name, "multiplier")[0]), int(art.get(g, name, "shift")[0])
        return self.requant(acc, m, sh, -qo, qo)

    def attend_int(self, pre: str, q, k_t, vv, b: int, n: int, c: int) -> torch.Tensor:
        """IntegerEmulator._attend with integer products: QK^T, the softmax (fp16 of the dequantized
        scores times 1/sqrt(D), or the integer softmax), the probabilities quantized to AV's input scale,
        AV, the heads merged, the proj layer's input requantization and GEMM."""
        emu, bld = self.emu, self.b
        sm_scale = emu.mods[pre + ".softmax"].scale
        scores = self.int_product(pre + ".qk", q, k_t, 2 ** (QK_OUT_BITS - 1) - 1)  # int32 at y_scale
        s_scores = self.mm_scale(pre + ".qk", "y_scale")
        sa = self.mm_scale(pre + ".av", "a_scale")
        p8 = bld.buf(scores.shape, torch.int8)
        if emu.mode == "fp16":
            probs = self.softmax_f32(self.dequant(scores, s_scores), sm_scale)  # fp16 values, widened
            aq = fixedpoint.ActQuantizer(sa, emu.a_bits)  # _to_int8 of a float tensor
            bld.call(
                self.dll.qm_act_quant,
                probs.data_ptr(),
                0,
                probs.numel(),
                aq.recip,
                float(aq.qmax),
                p8.data_ptr(),
                ckernels.OUT_KIND[torch.int8],
                None,
                0,
            )
        else:
            pq = self.int_softmax(scores, s_scores * sm_scale, emu.a_bits)
            m, sh = fixedpoint.quantize_multiplier(float(2.0 ** -(emu.a_bits - 1) / sa))
            p8 = self.requant(pq, m, sh, -emu.qa, emu.qa, torch.int8)
        pf = bld.buf(p8.shape, torch.float32)
        bld.call(pf.copy_, p8)
        out = self.int_product(pre + ".av", pf, vv, 2 ** (OUT_BITS - 1) - 1)  # int32 [B', H, L, D]
        h, d = out.shape[1], out.shape[3]
        merged = bld.buf((b, n, c), torch.int32)
        bld.call(merged.view(b, n, h, d).copy_, out.transpose(1, 2))
        return self.layer(pre + ".proj", IntVal(merged, self.mm_scale(pre + ".av", "y_scale")), self.res_dtype)

    # ---- quantized attention products (dynamic recipes) ---------------------------------------------------
    def dyn_rows(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row int8 codes of t [..., R, K] (any strides; fp16 or float32): the row abs-max scales and
        codes of IntegerEmulator.matmul's dynamic branch (``symmetric_scale`` + round half to even of the
        float64 quotient, clamped), as ckernels ``qm_dyn_quant``. Returns (codes as float32 values [..., R, K],
        scales float32 [..., R]); a non-finite value raises the eager path's error."""
        bld, k = self.b, t.shape[-1]
        x = bld.buf(t.shape, t.dtype)
        rows = x.numel() // k
        q8, s = bld.buf(t.shape, torch.int8), bld.buf(t.shape[:-1], torch.float32)
        qf = bld.buf(t.shape, torch.float32)
        bits = self.emu.a_bits

        def fail():  # a non-finite value: the eager definition raises
            fixedpoint.symmetric_scale(x.float().abs().amax(dim=-1).double(), bits)
            raise RuntimeError("emuprogram: non-finite attention operand not reported")

        if 3 <= t.dim() <= 4 and t.dtype in ckernels.IN_KIND_FLOAT:  # one C call: gather, codes, float codes
            t4 = t if t.dim() == 4 else t.unsqueeze(0)
            dyn = functools.partial(
                self.dll.qm_dyn_rows,
                t.data_ptr(),
                ckernels.IN_KIND_FLOAT[t.dtype],
                *t4.shape[:3],
                k,
                *t4.stride(),
                self.emu.qa,
                x.data_ptr(),
                q8.data_ptr(),
                qf.data_ptr(),
                s.data_ptr(),
            )

            def step():
                if dyn():
                    fail()

            bld.py(step, t, x, q8, qf, s)
            return qf, s
        bld.call(x.copy_, t)  # contiguous rows
        quant = functools.partial(
            self.dll.qm_dyn_quant, x.data_ptr(), ckernels.IN_KIND_FLOAT[x.dtype], rows, k, self.emu.qa, q8.data_ptr()
        )

        def step():
            if quant(s.data_ptr()):
                fail()

        bld.py(step, x, q8, s)
        bld.call(qf.copy_, q8)
        return qf, s

    def dyn_product(self, a: torch.Tensor, b_rows: torch.Tensor) -> torch.Tensor:
        """IntegerEmulator.matmul (dynamic) of a [..., M, K] by b [..., K, N], given b's transpose
        ``b_rows`` [..., N, K] (b's per-column scales are its rows'): both operands' codes, the exact
        integer product (float32, over K chunks past the exact limit), then ``(acc * s_a) * s_b`` in float32."""
        bld = self.b
        qa_, sa = self.dyn_rows(a)
        qb_, sb = self.dyn_rows(b_rows)
        k = a.shape[-1]
        y = bld.buf((*a.shape[:-1], b_rows.shape[-2]), torch.float32)
        m, n = y.shape[-2], y.shape[-1]
        if k * self.emu.qa * self.emu.qa <= 2**24 and k * n <= 8192 and sa.shape[:-1] == sb.shape[:-1] == y.shape[:-2]:
            # the exact float product and the rescale in one C pass (the same sums and the same two products)
            bld.call(
                self.dll.qm_dyn_product,
                qa_.data_ptr(),
                qb_.data_ptr(),
                y.numel() // (m * n),
                m,
                k,
                n,
                sa.data_ptr(),
                sb.data_ptr(),
                y.data_ptr(),
            )
            return y
        if k * self.emu.qa * self.emu.qa > 2**24:  # float32 over K chunks, added in int32 (exact)
            acc = bld.buf(y.shape, torch.int32)
            bld.call(gemmpaths.matmul_float_exact, qa_, qb_.transpose(-2, -1), out=acc)
            bld.call(y.copy_, acc)  # acc.float()
        else:  # every partial sum below 2**24: the float32 product is the integer one
            bld.call(torch.matmul, qa_, qb_.transpose(-2, -1), out=y)
        if sa.shape[:-1] == sb.shape[:-1] == y.shape[:-2]:  # (y * s_a) * s_b in one C loop, the same two products
            bld.call(
                self.dll.qm_scale_rows_cols, y.data_ptr(), y.numel() // (m * n), m, n, sa.data_ptr(), sb.data_ptr()
            )
            return y
        bld.call(torch.mul, y, sa.unsqueeze(-1), out=y)
        bld.call(torch.mul, y, sb.unsqueeze(-2), out=y)
        return y

    def attend_dyn(self, pre: str, q, k_t, vv, b: int, n: int, c: int):
        """IntegerEmulator._attend of a dynamic recipe with integer products: QK^T, the softmax (fp16, or
        the integer softmax at a scale taken on line, 8-bit probabilities), AV, the heads merged, proj."""
        emu, bld = self.emu, self.b
        scores = self.dyn_product(q, k_t.transpose(-2, -1))  # [B', H, N, L] float32
        scale = emu.mods[pre + ".softmax"].scale
        if emu.mode == "fp16":
            probs = self.softmax_f32(scores, scale)
        else:
            probs = self.softmax_int(pre + ".softmax", scores, scale)
        out = self.dyn_product(probs, vv.transpose(-2, -1))  # [B', H, N, D]
        h, d = out.shape[1], out.shape[3]
        merged = bld.buf((b, n, c), torch.float32)  # out.transpose(1, 2).reshape(b, n, c)
        bld.call(merged.view(b, n, h, d).copy_, out.transpose(1, 2))
        return self.layer(pre + ".proj", merged, self.res_dtype)

    def gelu_fp16(self, codes: torch.Tensor, scale: float) -> torch.Tensor:
        """gelu_fp16(_dequant_fp16(codes)): the C dequantization, then intops._gelu_fp16 per flat
        block of CHUNK_ELEMS (the eager path's blocks, so tanh sees the same lanes)."""
        n = codes.numel()
        xh = codes
        if codes.dtype != torch.float16:  # codes: the saturating fp16 dequantization first
            xh = self.b.buf(codes.shape, torch.float16)
            self.b.call(
                self.dll.qm_dequant, codes.data_ptr(), ckernels.IN_KIND_INT[codes.dtype], n, scale, xh.data_ptr(), 1
            )
        out = self.b.buf(codes.shape, torch.float16)
        ch = intops.CHUNK_ELEMS
        blocks = [(0, n)] if n <= ch else [(i, min(ch, n - i)) for i in range(0, n, ch)]
        for i, cnt in blocks:
            inner = self.b.buf(codes.shape if cnt == n else cnt, torch.float32)
            self.b.call(self.dll.qm_gelu_pre, xh.data_ptr() + 2 * i, cnt, inner.data_ptr())
            self.b.call(torch.tanh, inner, out=inner)
            self.b.call(self.dll.qm_gelu_post, xh.data_ptr() + 2 * i, cnt, inner.data_ptr(), out.data_ptr() + 2 * i)
        return out

    # ---- int mode (integer-only vector unit) ------------------------------------------------------------
    def static_scale(self, name: str, fld: str, bits: int) -> float:
        """IntegerEmulator._static_scale of a calibrated range (a range taken on line is out of scope)."""
        if self.emu._absmax(name, fld) is None:
            raise _Unsupported(f"{name}/{fld}")
        return self.emu._static_scale(name, fld, bits, self.res_headroom)

    def to_int(self, name: str, fld: str, x: torch.Tensor, bits: int):
        """IntegerEmulator._int of a float32 tensor: int32 codes at the op's static scale (a dynamic
        recipe's: at the scale of the tensor's abs-max, a :class:`Cell`)."""
        if self.dyn_int:
            return self.to_int_dyn(x, bits)
        aq = fixedpoint.ActQuantizer(self.static_scale(name, fld, bits), bits, torch.int32)
        out = self.b.buf(x.shape, torch.int32)
        self.b.call(
            self.dll.qm_act_quant,
            x.data_ptr(),
            ckernels.IN_KIND_FLOAT[x.dtype],
            x.numel(),
            aq.recip,
            float(aq.qmax),
            out.data_ptr(),
            ckernels.OUT_KIND[torch.int32],
            None,
            0,
        )
        return out, aq.scale

    def requant_input(self, name: str, v: torch.Tensor, s_v: float) -> torch.Tensor:
        """``_input_int8`` of int32 codes at s_v: one requantization to the layer's x_scale, per channel
        with the explicit smoothing factors (``s_v / (s * x_scale)``), per tensor without; written as
        int8 (the eager path's int32 result narrowed: the values are within +-qmax)."""
        p = self.lp(name)
        if p.smooth is not None and p.fold in ("mul", "text"):
            mult, shift = fixedpoint.quantize_multipliers(s_v / (p.smooth.double().cpu() * p.x_scale))
        else:
            mult, shift = fixedpoint.quantize_multiplier(float(s_v / p.x_scale))
        if p.zq is not None:  # _input_int8_zp: the centred codes (bounds shifted by -z), then + z
            return self.plus_zero(self.requant(v, mult, shift, p.zq.lo, p.zq.hi), p.zq.zero)
        return self.requant(v, mult, shift, -self.emu.qa, self.emu.qa, torch.int8)

    def plus_zero(self, c: torch.Tensor, zero: int) -> torch.Tensor:
        """``(c + z).to(torch.int8)`` of int32 centred codes (the sum is within the int8 range)."""
        self.b.call(torch.add, c, zero, out=c)
        q8 = self.b.buf(c.shape, torch.int8)
        self.b.call(q8.copy_, c)
        return q8

    def int_softmax(self, q: torch.Tensor, scale: float, out_bits: int) -> torch.Tensor:
        """intops.softmax_int of int32 codes q at ``scale`` (1/sqrt(D) folded in) -> int32 probabilities
        at 2**-(out_bits - 1)."""
        n = q.shape[-1]
        k = intops.working_shift(scale)
        q_ln2, q_b, q_c = intops.exp_constants(scale * 2.0**k)
        out = self.b.buf(q.shape, torch.int32)
        ebuf = self.b.buf(n, torch.int64)
        self.b.call(
            self.dll.qm_softmax_int,
            q.data_ptr(),
            q.numel() // n,
            n,
            k,
            q_ln2,
            q_b,
            q_c,
            out_bits - 1,
            out.data_ptr(),
            ebuf.data_ptr(),
        )
        return out

    def softmax_int(self, name: str, scores: torch.Tensor, attn_scale: float) -> torch.Tensor:
        """IntegerEmulator.softmax (int) of float32 scores, dequantized as the float AV product reads it."""
        q, s_q = self.to_int(name, "in0", scores, QK_OUT_BITS)
        probs = (
            self.int_softmax_dyn(q, s_q, attn_scale)
            if isinstance(s_q, Cell)
            else self.int_softmax(q, s_q * attn_scale, 8)
        )
        return self.dequant(probs, 2.0**-7)

    def dequant(self, q: torch.Tensor, scale) -> torch.Tensor:
        """fixedpoint.dequantize of codes below 2**24 at a float32 scale: the C loop's float32 product (a
        scale taken on line: fixedpoint.dequantize itself where a code is not below 2**24)."""
        if isinstance(scale, Cell):
            out = self.b.buf(q.shape, torch.float32)
            deq, qp, kind, n, op = (
                self.dll.qm_dequant,
                q.data_ptr(),
                ckernels.IN_KIND_INT[q.dtype],
                q.numel(),
                out.data_ptr(),
            )

            deq64, is32, is_f32 = self.dll.qm_dequant_f64, q.dtype == torch.int32, fixedpoint._is_f32

            def step():  # as fixedpoint.dequantize: the float32 C product for a float32 scale and small codes,
                s = scale.v  # else its definition fp32(fl64(q) * s) (in C for int32 codes and a finite scale)
                if is_f32(s) and not deq(qp, kind, n, s, op, 0):
                    return
                if is32 and math.isfinite(s):
                    deq64(qp, n, s, op)
                else:
                    out.copy_(fixedpoint.dequantize(q, s))

            self.b.py(step, q, out)
            return out
        if not fixedpoint._is_f32(scale):
            raise _Unsupported("scale")
        out = self.b.buf(q.shape, torch.float32)
        self.b.call(
            self.dll.qm_dequant, q.data_ptr(), ckernels.IN_KIND_INT[q.dtype], q.numel(), scale, out.data_ptr(), 0
        )
        return out

    def fix_madd(
        self,
        qa_: torch.Tensor,
        real_a: float,
        f: torch.Tensor,
        qb: torch.Tensor | None,
        real_b: float,
        r_bc: torch.Tensor | None,
        qmin: int,
        qmax: int,
    ) -> torch.Tensor:
        """intops._fix_madd_c with f / r_bc float64 [B, 1, C] buffers (filled per step)."""
        out = self.b.buf(qa_.shape, torch.int32)
        ws = self.b.buf(2 * qa_.shape[2], torch.float64)
        self.b.call(self.dll.qm_fix_madd, *intops.fix_madd_args(qa_, real_a, f, qb, real_b, r_bc, qmin, qmax, out, ws))
        return out

    def norm_modulate_int(self, norm: str, x: torch.Tensor, s_x: float, shift, scale, consumer: str) -> torch.Tensor:
        """IntegerEmulator.modulate(layernorm(x)) in int mode for a static consumer: integer LayerNorm,
        then the fixed-point modulation straight to the consumer's int8 codes. The per-step operands
        (the folded shift / scale quantized to 16 bits, their Q16 forms) are one Python step, as eager."""
        emu, bld = self.emu, self.b
        b_, n_, c = x.shape
        eps_k = bld.const(torch.tensor(intops.ln_eps_table(s_x, c, emu.mods[norm].eps), dtype=torch.int64))
        ln = bld.buf(x.shape, torch.int32)
        bld.call(self.dll.qm_layernorm_int, x.data_ptr(), b_ * n_, c, eps_k.data_ptr(), ln.data_ptr())
        s_ln = math.sqrt(c) / 2.0**intops.LN_OUT_BITS
        p = self.lp(consumer)
        s_out = p.x_scale
        f, r = bld.buf((b_, 1, c), torch.float64), bld.buf((b_, 1, c), torch.float64)

        def operands():  # the eager definition; also what a non-finite parameter falls back to (and reports)
            _, sh, sc = emu._fold_mod(consumer, shift, scale)
            shq, scq = emu._param_int(sh), emu._param_int(sc)
            m, rr = intops.modulate_factors(shq.q, shq.scale, scq.q, scq.scale, s_out)
            f.copy_(m)
            r.copy_(rr)

        inv = None
        if p.smooth is not None and p.fold == "modulate":  # _fold_mod's factors
            inv = bld.const(1.0 / p.smooth)
        self.operands_step(operands, scale, shift, inv, s_out, f, r)
        lo, hi = (p.zq.lo, p.zq.hi) if p.zq is not None else (-emu.qa, emu.qa)  # zero point: centred codes
        q32 = self.fix_madd(ln, s_ln / (s_out / 2.0**intops.GUARD_BITS), f, None, 0.0, r, lo, hi)
        if p.zq is not None:
            return self.plus_zero(q32, p.zq.zero)
        q8 = bld.buf(x.shape, torch.int8)
        bld.call(q8.copy_, q32)  # .to(torch.int8): the values are within +-qmax
        return q8

    def operands_step(self, eager, scale, shift, inv, s_out, f, r) -> None:
        """The per-step operands of a modulation (scale and shift) or a gate (shift None) as one C call
        (ckernels ``qm_mod_operands``: the same float32, rounding and integer steps as ``eager``), which
        runs instead when a parameter is not finite (it then raises the eager path's error)."""
        if (
            (intops.GATE_FRAC_BITS, intops.GUARD_BITS) != (16, 8)
            or scale.stride(2) != 1
            or (shift is not None and shift.stride() != scale.stride())
        ):  # the constants the C loop has built in
            self.b.py(eager, *(t for t in (scale, shift, inv, f, r) if t is not None))
            return
        b_, _, c = scale.shape
        fw, qw = self.b.buf(2 * b_ * c, torch.float32), self.b.buf(2 * b_ * c, torch.int32)
        head = (
            scale.data_ptr(),
            None if shift is None else shift.data_ptr(),
            scale.stride(0) if b_ > 1 else 0,
            None if inv is None else inv.data_ptr(),
            b_,
            c,
        )
        tail = (
            2 ** (self.param_bits - 1) - 1,
            f.data_ptr(),
            None if r is None else r.data_ptr(),
            fw.data_ptr(),
            qw.data_ptr(),
        )
        mod_operands = self.dll.qm_mod_operands

        def step():  # s_out: a float, or a Cell set by an earlier step
            if mod_operands(*head, _v(s_out), *tail):
                eager()

        self.b.py(step, *(t for t in (scale, shift, inv, f, r, fw, qw) if t is not None))

    def gate(self, gate: torch.Tensor | None, b_: int, c: int) -> torch.Tensor:
        """The Q16 gate as float64 [B, 1, C]: per step from the modulation, or the constant 1 (no gate)."""
        emu, bld = self.emu, self.b
        if gate is None:  # IntVal(ones(1), 1.0) broadcast as intops._fix_madd_c does
            one = intops.gate_q16(torch.ones(1, dtype=torch.int32), 1.0)
            return bld.const(one.to(torch.float64).reshape(1, 1, 1).expand(b_, 1, c).contiguous())
        key = ("gate", id(gate))  # the view object (addresses repeat across buffers sharing the arena)
        if key in self.memo:  # gate_msa gates two adds: quantized once, the same values
            return self.memo[key][0]
        f = bld.buf((b_, 1, c), torch.float64)

        def operands():
            g = emu._param_int(gate)
            f.copy_(intops.gate_q16(g.q, g.scale))

        self.operands_step(operands, gate, None, None, 1.0, f, None)
        self.memo[key] = (f, gate)  # the view is kept, so its id is not reused during the compile
        return f

    def residual_int(self, name: str, x: torch.Tensor, s_x: float, y: torch.Tensor, s_y: float, gate):
        """IntegerEmulator.residual (int): x + gate * y -> RES_BITS codes at the op's static scale."""
        s_out = self.static_scale(name, "out", self.res_bits)
        s_t = s_out / 2.0**intops.GUARD_BITS
        f = self.gate(gate, x.shape[0], x.shape[2])
        qr = 2 ** (self.res_bits - 1) - 1
        return self.fix_madd(y, s_y / s_t, f, x, s_x / s_t, None, -qr, qr), s_out

    def gelu_int(self, codes: torch.Tensor, scale: float):
        k = intops.working_shift(scale)
        q_bb, q_one, t, out_scale = intops.gelu_constants(scale * 2.0**k)
        out = self.b.buf(codes.shape, torch.int32)
        self.b.call(
            self.dll.qm_gelu_int, codes.data_ptr(), codes.numel(), k, 2**intops.SAT_BITS, q_bb, q_one, t, out.data_ptr()
        )
        return out, out_scale

    # ---- int mode of dynamic recipes: every scale taken on line, a Cell set by a step ---------------------
    def to_int_dyn(self, x: torch.Tensor, bits: int) -> tuple[torch.Tensor, Cell]:
        """IntegerEmulator._int of a float tensor without a calibrated range: the scale of its abs-max
        (with the residual headroom), then ActQuantizer's C loop at that scale's float32 reciprocal."""
        cell, out = Cell(), self.b.buf(x.shape, torch.int32)
        act, xp, kind, n, op = (
            self.dll.qm_act_quant,
            x.data_ptr(),
            ckernels.IN_KIND_FLOAT[x.dtype],
            x.numel(),
            out.data_ptr(),
        )
        qmax, headroom, absmax = float(2 ** (bits - 1) - 1), self.res_headroom, self.dll.qm_absmax
        fused = functools.partial(self.dll.qm_dyn_act_quant, xp, kind, n, float(headroom), 2 ** (bits - 1) - 1, op)
        s_c = self.b.buf(1, torch.float64)
        s_view, sp = s_c.numpy(), s_c.data_ptr()

        def step():
            if not fused(sp):  # range, scale, reciprocal and codes in one C call
                cell.v = float(s_view[0])
                return
            a = absmax(xp, kind, n)
            if a < 0:  # a value is not finite: torch's max (NaN included), as eager
                a = float(x.abs().max())
            cell.v = s = datapath.range_scale(a * headroom, bits)
            act(xp, kind, n, fixedpoint.act_reciprocal(s), qmax, op, ckernels.OUT_KIND[torch.int32], None, 0)

        self.b.py(step, x, out, s_c)
        return out, cell

    def int_softmax_dyn(self, q: torch.Tensor, s_q: Cell, attn_scale: float) -> torch.Tensor:
        """intops.softmax_int (8-bit probabilities) of int32 codes at a scale taken on line."""
        n = q.shape[-1]
        out, ebuf = self.b.buf(q.shape, torch.int32), self.b.buf(n, torch.int64)
        sm, qp, rows, op, ep = self.dll.qm_softmax_int, q.data_ptr(), q.numel() // n, out.data_ptr(), ebuf.data_ptr()

        def step():
            scale = s_q.v * attn_scale
            k = intops.working_shift(scale)
            sm(qp, rows, n, k, *intops.exp_constants(scale * 2.0**k), 7, op, ep)

        self.b.py(step, q, out, ebuf)
        return out

    def gelu_dyn(self, v: IntVal) -> IntVal:
        """intops.gelu_int of int32 codes at a scale taken on line -> codes at the (run-time) output scale."""
        out, cell = self.b.buf(v.q.shape, torch.int32), Cell()
        gelu, qp, n, op = self.dll.qm_gelu_int, v.q.data_ptr(), v.q.numel(), out.data_ptr()

        def step():
            k = intops.working_shift(v.scale.v)
            q_bb, q_one, t, cell.v = intops.gelu_constants(v.scale.v * 2.0**k)
            gelu(qp, n, k, 2**intops.SAT_BITS, q_bb, q_one, t, op)

        self.b.py(step, v.q, out)
        return IntVal(out, cell)

    def fix_madd_dyn(self, qa_, real_a, f, qb, real_b, r_bc, qmin: int, qmax: int) -> torch.Tensor:
        """:meth:`fix_madd` with ``real_a`` / ``real_b`` functions of the run-time scales."""
        out, ws = self.b.buf(qa_.shape, torch.int32), self.b.buf(2 * qa_.shape[2], torch.float64)
        fm = self.dll.qm_fix_madd
        b_, n_, c = qa_.shape
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        fm_r = functools.partial(self.dll.qm_fix_madd_r, qa_.data_ptr())
        tail = (ptr(r_bc), b_, n_, c, float(qmin), float(qmax), out.data_ptr(), ws.data_ptr())
        fp, qbp = f.data_ptr(), ptr(qb)

        def step():  # the constants derived in C (intops.fix_madd_args' values); Python for a refused factor
            ra, rb = real_a(), real_b() if qb is not None else 0.0
            if fm_r(ra, fp, qbp, rb, *tail):
                fm(*intops.fix_madd_args(qa_, ra, f, qb, rb, r_bc, qmin, qmax, out, ws))

        self.b.py(step, *(t for t in (qa_, f, qb, r_bc, out, ws) if t is not None))
        return out

    def fold_mod(self, consumer: str, shift: torch.Tensor, scale: torch.Tensor) -> tuple:
        """IntegerEmulator._fold_mod's (shift, scale) per step: the consumer's channel-balancing factors
        folded in (``(1 + scale) / s - 1``, ``shift / s``, the same float32 ops) into [B, 1, C] buffers."""
        p = self.emu.linear_params(consumer)
        if p is None or p.smooth is None or p.fold != "modulate":
            return shift, scale
        bld = self.b
        inv = bld.const(1.0 / p.smooth)
        sh, sc = bld.buf(shift.shape, torch.float32), bld.buf(scale.shape, torch.float32)
        bld.call(torch.add, scale, 1, out=sc)
        bld.call(torch.mul, sc, inv, out=sc)
        bld.call(torch.sub, sc, 1, out=sc)
        bld.call(torch.mul, shift, inv, out=sh)
        return sh, sc

    def norm_modulate_dyn(self, norm: str, x: IntVal, shift, scale) -> IntVal:
        """IntegerEmulator.modulate(layernorm(x)) for a dynamic consumer: the integer LayerNorm (its eps
        table from x's run-time scale), then the modulation to 16-bit codes at the scale of its float
        value's range (``datapath.modulated``)."""
        emu, bld = self.emu, self.b
        b_, n_, c = x.q.shape
        eps = emu.mods[norm].eps
        eps_k, ln = bld.buf(19, torch.int64), bld.buf(x.q.shape, torch.int32)
        lnk, xp, ep, lp = self.dll.qm_layernorm_int, x.q.data_ptr(), eps_k.data_ptr(), ln.data_ptr()
        eps_table = self.dll.qm_ln_eps_table

        def layernorm():  # the eps table in C (the same float64 operations); Python where that declines
            if eps_table(x.scale.v, c, eps, ep):
                eps_k.copy_(torch.tensor(intops.ln_eps_table(x.scale.v, c, eps), dtype=torch.int64))
            lnk(xp, b_ * n_, c, ep, lp)

        bld.py(layernorm, x.q, eps_k, ln)
        s_ln = math.sqrt(c) / 2.0**intops.LN_OUT_BITS
        s_out, q16 = Cell(), fixedpoint.qrange(16)[1]

        mod_absmax = functools.partial(self.dll.qm_mod_absmax, ln.data_ptr(), s_ln, scale.data_ptr(), shift.data_ptr())
        c_ok = scale.stride(2) == 1 and shift.stride() == scale.stride()
        pstride = scale.stride(0) if b_ > 1 else 0

        def out_range():  # one C pass where the layout allows; torch's definition otherwise
            r = mod_absmax(pstride, b_, n_, c) if c_ok else -1.0
            if r < 0:
                r = float(datapath.modulated(fixedpoint.dequantize(ln, s_ln), shift, scale).abs().max())
            s_out.v = datapath.range_scale(r * self.res_headroom, 16)

        bld.py(out_range, ln, shift, scale)
        f, r = bld.buf((b_, 1, c), torch.float64), bld.buf((b_, 1, c), torch.float64)

        def operands():
            shq, scq = emu._param_int(shift), emu._param_int(scale)
            m, rr = intops.modulate_factors(shq.q, shq.scale, scq.q, scq.scale, s_out.v)
            f.copy_(m)
            r.copy_(rr)

        self.operands_step(operands, scale, shift, None, s_out, f, r)
        g = 2.0**intops.GUARD_BITS
        q = self.fix_madd_dyn(ln, lambda: s_ln / (s_out.v / g), f, None, None, r, -q16, q16)
        return IntVal(q, s_out)

    def residual_dyn(self, x: IntVal, y: torch.Tensor, gate) -> IntVal:
        """IntegerEmulator.residual (int) of a dynamic recipe: y's codes and the output scale taken on line
        (the range of ``datapath.gated_sum``), then the fixed-point gated add."""
        emu, bld = self.emu, self.b
        yq, s_y = self.to_int_dyn(y, 16)
        b_, n_, c = x.q.shape
        f = self.gate(gate, b_, c)
        s_out = Cell()
        one = IntVal(torch.ones(1, dtype=torch.int32), 1.0)

        gated_absmax, xp, yp = self.dll.qm_gated_absmax, x.q.data_ptr(), yq.data_ptr()
        fused = gate is not None and gate.stride(2) == 1  # the gate quantized inside the same C call
        gq_buf = None
        if fused:
            gq_buf, qmax = bld.buf((b_, 1, c), torch.int32), 2 ** (self.param_bits - 1) - 1
            ga, gp, gs = self.dll.qm_gated_absmax_p, gate.data_ptr(), gate.stride(0) if b_ > 1 else 0
            gqp = gq_buf.data_ptr()

        def out_range():  # one C pass (the torch definition for a non-finite value)
            r = ga(xp, x.scale.v, gp, gs, qmax, gqp, yp, s_y.v, b_, n_, c) if fused else -2.0
            if r == -2.0:  # unfused, or a gate that is not finite (_param_int then reports it)
                g = emu._param_int(gate) if gate is not None else one
                gq = g.q.contiguous() if gate is not None else None
                r = gated_absmax(xp, x.scale.v, None if gq is None else gq.data_ptr(), g.scale, yp, s_y.v, b_, n_, c)
            if r < 0:
                g = emu._param_int(gate) if gate is not None else one
                xf, gf = fixedpoint.dequantize(x.q, x.scale.v), fixedpoint.dequantize(g.q, g.scale)
                r = float(datapath.gated_sum(xf, gf, fixedpoint.dequantize(yq, s_y.v)).abs().max())
            s_out.v = datapath.range_scale(r * self.res_headroom, self.res_bits)

        bld.py(out_range, *(t for t in (x.q, yq, gate, gq_buf) if t is not None))
        g = 2.0**intops.GUARD_BITS
        qr = 2 ** (self.res_bits - 1) - 1
        q = self.fix_madd_dyn(
            yq, lambda: s_y.v / (s_out.v / g), f, x.q, lambda: x.scale.v / (s_out.v / g), None, -qr, qr
        )
        return IntVal(q, s_out)

    # ---- the ops of emulator/block.py (BlockOps): values are IntVal codes or fp16 tensors ---------------
    def enter(self, h: torch.Tensor):
        if self.emu.mode == "fp16":
            return h
        return IntVal(*self.to_int("blocks.0.norm1", "in0", h, self.res_bits))  # to_int_dyn for dynamic recipes

    def leave(self, v) -> torch.Tensor:
        return self.dequant(v.q, v.scale) if isinstance(v, IntVal) else v

    def modulation(self, table: torch.Tensor, t0: torch.Tensor, b: int) -> tuple:
        """table[None] + t0 ([B, 6, C] float32, one add per step) as its six [B, 1, C] chunks."""
        table = self.b.const(table.detach()[None])
        mod = self.b.buf((b, *table.shape[1:]), torch.float32)
        self.b.call(torch.add, table, t0.view(b, 6, -1), out=mod)
        return mod.chunk(6, dim=1)

    def norm_modulate(self, norm: str, name: str, v, shift, scale, consumer: str):
        if self.dyn_int:
            return self.norm_modulate_dyn(norm, v, *self.fold_mod(consumer, shift, scale))
        if self.emu.mode == "fp16":
            out = self.norm_modulate_fp16(norm, v, shift, scale, consumer)
            return IntVal(out, self.lp(consumer).x_scale) if out.dtype == torch.int8 else out
        return IntVal(self.norm_modulate_int(norm, v.q, v.scale, shift, scale, consumer), self.lp(consumer).x_scale)

    def residual(self, name: str, x, y, gate):
        """fp16 values (y fp16, or int16 codes), or int mode's RES_BITS codes."""
        if self.emu.mode == "fp16":
            yq, s_y = (y.q, y.scale) if isinstance(y, IntVal) else (y, None)
            return self.residual_fp16(x, yq, s_y, gate)
        if self.dyn_int:
            return self.residual_dyn(x, y, gate)
        return IntVal(*self.residual_int(name, x.q, x.scale, y.q, y.scale, gate))

    def add_tpe(self, name: str, x_t, tpe: torch.Tensor):
        """The temporal embedding (a constant of the model): fp16 mode adds its saturated fp16 values;
        int mode its codes at the op's static input scale."""
        bld = self.b
        if self.emu.mode == "fp16":
            tpe_h = bld.const(tpe.detach().clamp(-FP16_MAX, FP16_MAX).to(torch.float16))
            out = bld.buf(x_t.shape, torch.float16)
            bld.call(torch.add, x_t, tpe_h, out=out)  # as IntegerEmulator.residual's fp16 add
            return out
        if self.dyn_int:  # IntegerEmulator.residual of the float embedding (its codes taken on line)
            return self.residual_dyn(x_t, bld.const(tpe.detach().expand(x_t.q.shape[0], -1, -1).contiguous()), None)
        aq = fixedpoint.ActQuantizer(self.static_scale(name, "in1", 16), 16, torch.int32)
        tq = bld.const(aq(tpe.detach().expand(x_t.q.shape[0], -1, -1).contiguous()))
        return IntVal(*self.residual_int(name, x_t.q, x_t.scale, tq, aq.scale, None))

    def swap_tokens(self, v, b: int, t: int, s: int):
        def swap(x: torch.Tensor) -> torch.Tensor:
            c = x.shape[-1]
            out = self.b.buf((b * s, t, c), x.dtype)  # [B, T, S, C] -> [B * S, T, C]
            self.b.call(out.view(b, s, t, c).copy_, x.view(b, t, s, c).transpose(1, 2))
            return out

        return vmap(v, swap)

    def linear(self, name: str, v):
        return self.layer(name, v, self.res_dtype)

    def gelu(self, name: str, v):
        if self.emu.mode == "fp16":
            return self.gelu_fp16(*((v.q, v.scale) if isinstance(v, IntVal) else (v, None)))
        if self.dyn_int:
            return self.gelu_dyn(IntVal(*self.to_int_dyn(v, 16)))
        return IntVal(*self.gelu_int(v.q, v.scale))

    def compile(self, m, x_shape: tuple, y_shape: tuple) -> BlockProgram:
        bld = self.b
        b, n, c = x_shape
        fp16 = self.emu.mode == "fp16"
        x_in = bld.buf(x_shape, torch.float16 if fp16 else torch.float32)
        y_in = bld.buf(y_shape, torch.float16 if fp16 else torch.float32)  # fp16 mode: _hs(y); int: y
        t0_in = bld.buf((b, 6 * c), torch.float32)
        for name in self.emu.linears:  # every block linear quantized (int8 codes)
            if name.startswith("blocks."):
                self.lp(name) if self.emu.static else self.lp_dyn(name)
        out = run_blocks(self, m, x_in, y_in, t0_in)
        return BlockProgram(bld, x_in, y_in, t0_in, out, saturate_inputs=fp16)
