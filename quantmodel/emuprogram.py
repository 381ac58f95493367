"""The emulator's transformer blocks compiled once into a flat list of kernel calls (fp16 vector unit).

Why: on stdit-tiny every op works on a few thousand values, so an eager forward spends as much time
in Python (type checks, dict lookups, argument preparation) and in allocating tensors as in the
kernels themselves. A :class:`BlockProgram` resolves all of that once per (weight set, input
shapes): it allocates every intermediate buffer, binds each C kernel (:mod:`quantmodel.ckernels`) to
its pointers and constants, and keeps the few torch ops that remain (the int8 GEMMs, the float
attention products, torch's float32 exp / tanh / rsqrt) as ``out=`` calls on those buffers. A forward
then copies its inputs in and runs the list.

Values: each step is the call the emulator's eager C path makes for that op, with the same
arguments, the same constants and tensors of the same shapes (so torch's vectorised exp / tanh see
the same lanes), so the program's output equals :meth:`IntegerEmulator.forward` without it bit for
bit (tests/test_emuprogram.py compares them over several steps, recipes and thread counts).

Scope: static recipes (per-tensor activation scales) whose attention products stay float, every
block linear quantized with int8 codes, fp16 vector unit, CPU with the C kernels, not verifying.
Anything else (dynamic recipes, quantized attention, ``int`` mode, ``verify``) runs the eager path:
:func:`build` returns None for it.
"""
from __future__ import annotations

import functools

import torch

from quantmodel import ckernels, intops

FP16_MAX = 65504.0


class _Builder:
    """Allocates the program's buffers and appends its steps (zero-argument callables).

    ``pool``: buffers of an earlier program of the same shapes (another weight set), reused in
    allocation order where shape and dtype match, so per-step weight sets (TSQ+TSW) share one set of
    intermediate buffers (programs run one at a time)."""

    def __init__(self, pool: list):
        self.steps: list = []
        self.keep: list = []  # every tensor a bound pointer refers to stays alive with the program
        self.pool, self.n_buf = pool, 0

    def buf(self, shape, dtype) -> torch.Tensor:
        shape = torch.Size([shape] if isinstance(shape, int) else shape)
        i = self.n_buf
        self.n_buf += 1
        if i < len(self.pool) and self.pool[i].shape == shape and self.pool[i].dtype == dtype:
            t = self.pool[i]
        else:
            t = torch.empty(shape, dtype=dtype)
            if i < len(self.pool):
                self.pool[i] = t
            else:
                self.pool.append(t)
        self.keep.append(t)
        return t

    def const(self, t: torch.Tensor) -> torch.Tensor:
        self.keep.append(t)
        return t

    def call(self, fn, *args, **kwargs) -> None:
        self.steps.append(functools.partial(fn, *args, **kwargs))


class BlockProgram:
    """All blocks of one (weight set, batch, tokens, text length) for the fp16 fast path. ``run``
    takes the block input (fp16 values of the embedded tokens), the projected text and t0 and returns
    the last block's fp16 output (a buffer of the program: read it before the next run)."""

    def __init__(self, steps, keep, x_in, y_in, t0_in, out):
        self.steps, self._keep = steps, keep
        self.x_in, self.y_in, self.t0_in, self.out = x_in, y_in, t0_in, out

    def run(self, x: torch.Tensor, y: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
        # the emulator's saturating fp16 conversion of its inputs (clamp to +-65504, then round)
        self.x_in.copy_(x.clamp(-FP16_MAX, FP16_MAX))
        self.y_in.copy_(y.clamp(-FP16_MAX, FP16_MAX))
        self.t0_in.copy_(t0)
        for s in self.steps:
            s()
        return self.out


def build(emu, x_shape: tuple, y_shape: tuple, pool: list) -> BlockProgram | None:
    """The program of ``emu``'s current weight set for block input [B, N, C] and text [B, L, C], or
    None when the emulator's configuration is outside the scope in the module doc. ``pool``: the
    buffer pool of these shapes (see :class:`_Builder`)."""
    dll = ckernels.lib()
    if (dll is None or emu.mode != "fp16" or emu.verifier is not None or not emu.static or emu.matmuls
            or emu.device.type != "cpu"):
        return None
    m = emu.model
    try:
        return _Compiler(emu, dll, _Builder(pool)).compile(m, x_shape, y_shape)
    except _Unsupported:
        return None


class _Unsupported(Exception):
    pass


class _Compiler:
    def __init__(self, emu, dll, bld: _Builder):
        self.emu, self.dll, self.b = emu, dll, bld

    # ---- pieces ---------------------------------------------------------------------------------------
    def lp(self, name: str):
        p = self.emu._lp(name)
        if p is None or not p.static or p.xq is None or p.xq.out_dtype != torch.int8 or not p.gemm.fast:
            raise _Unsupported(name)
        return p

    def quant_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``_input_int8`` of a float (fp16 or float32) tensor: the explicit smoothing multiply fused
        into the quantizer for ``mul`` / ``text`` folds, else the plain quantizer."""
        p = self.lp(name)
        out = self.b.buf(x.shape, torch.int8)
        c = x.shape[-1]
        inv = None
        if p.smooth is not None and p.fold in ("mul", "text"):
            if p.inv_h is None:
                p.inv_h = (1.0 / p.smooth).to(torch.float16).float()  # as IntegerEmulator._input_int8
            inv = self.b.const(p.inv_h)
        self.b.call(self.dll.qm_act_quant, x.data_ptr(), ckernels.IN_KIND_FLOAT[x.dtype], x.numel(), p.xq.recip,
                    float(p.xq.qmax), out.data_ptr(), ckernels.OUT_KIND[torch.int8],
                    None if inv is None else inv.data_ptr(), 0 if inv is None else c)
        return out

    def gemm(self, name: str, q: torch.Tensor) -> torch.Tensor:
        """PreparedLinear.__call__ of int8 codes q [..., K] -> int16 codes [..., N] at y_scale."""
        p = self.lp(name)
        g = p.gemm
        x2 = q.view(-1, g.k)
        rows = x2.shape[0]
        out = self.b.buf((*q.shape[:-1], g.n), g.rq.out_dtype)
        for off, wb, args, kind, _ in g._plan(rows):
            acc = self.b.buf((rows, wb.shape[1]), torch.int32)
            self.b.call(torch._int_mm, x2, wb, out=acc)
            self.b.call(self.dll.qm_requant, acc.data_ptr(), rows, *args, out.data_ptr() + off, kind, g.n)
        return out

    def split_heads(self, codes: torch.Tensor, scale: float, parts: int, heads: int, tmask: int):
        """IntegerEmulator._split_heads: int16 codes [B, N, P*C] -> P float32 [B, H, N, D] ([B, H, D, N])."""
        b, n, pc = codes.shape
        d = pc // (parts * heads)
        out = self.b.buf((parts, b, heads, n * d), torch.float32)
        self.b.call(self.dll.qm_split_heads, codes.data_ptr(), 0 if codes.dtype == torch.int8 else 1, scale, b, n,
                    parts, heads, d, out.data_ptr(), tmask)
        return [out[p].view(b, heads, d, n) if (tmask >> p) & 1 else out[p].view(b, heads, n, d)
                for p in range(parts)]

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

    def residual(self, x: torch.Tensor, y: torch.Tensor, y_scale: float | None, gate: torch.Tensor | None):
        """intops.residual_fp16: x fp16 [B, N, C] + gate * y (y int16 codes at y_scale, or fp16)."""
        b_, n_, c = x.shape
        out = self.b.buf(x.shape, torch.float16)
        ws = self.b.buf(3 * c, torch.float32)
        kind = {torch.float16: 1, torch.int8: 0, torch.int16: 2}[y.dtype]
        gs = 0 if gate is None or gate.shape[0] == 1 else gate.stride(0)
        self.b.call(self.dll.qm_residual_fp16, x.data_ptr(), y.data_ptr(), kind, 1.0 if y_scale is None else y_scale,
                    None if gate is None else gate.data_ptr(), gs, b_, n_, c, out.data_ptr(), ws.data_ptr())
        return out

    def norm_modulate(self, norm: str, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, consumer: str):
        """IntegerEmulator.norm_modulate (fp16): LayerNorm + modulation (consumer's smoothing folded)
        emitting the consumer's int8 codes directly when it reads them as they are, else fp16."""
        emu = self.emu
        p = self.lp(consumer)
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
        rstd = ws[rows:2 * rows]
        out = self.b.buf(x.shape, torch.float16 if aq is None else torch.int8)
        qr, qm = (0.0, 0.0) if aq is None else (aq.recip, float(aq.qmax))
        pstride = scale.stride(0) if scale.shape[0] > 1 else 0
        self.b.call(self.dll.qm_ln_stats, x.data_ptr(), rows, c, emu.mods[norm].eps, wp, wp + 4 * rows, wp + 8 * rows)
        self.b.call(torch.rsqrt, rstd, out=rstd)
        self.b.call(self.dll.qm_ln_apply, x.data_ptr(), rows, c, wp, rstd.data_ptr(), out.data_ptr(), 1,
                    scale.data_ptr(), shift.data_ptr(), pstride, None if inv is None else inv.data_ptr(), n_,
                    wp + 8 * rows, qr, qm)
        return out  # int8 codes at p.x_scale (aq given) or fp16

    def linear_in(self, name: str, v: torch.Tensor) -> torch.Tensor:
        """The GEMM of a layer whose input is either its own int8 codes (from a fused producer) or fp16."""
        return self.gemm(name, v if v.dtype == torch.int8 else self.quant_input(name, v))

    def attend(self, pre: str, q, k_t, vv, b: int, n: int, c: int) -> torch.Tensor:
        """IntegerEmulator._attend_float (fp16 mode) -> the proj layer's int16 codes [b, n, c]."""
        emu = self.emu
        scores = self.b.buf((*q.shape[:-1], k_t.shape[-1]), torch.float32)
        self.b.call(torch.matmul, q, k_t, out=scores)
        probs = self.softmax_f32(scores, emu.mods[pre + ".softmax"].scale)
        out = self.b.buf((*probs.shape[:-1], vv.shape[-1]), torch.float32)  # [B', H, L, D]
        self.b.call(torch.matmul, probs, vv, out=out)
        p = self.lp(pre + ".proj")
        aq = emu._direct_quantizer(p)
        h, d = out.shape[1], out.shape[3]
        if aq is not None:
            q8 = self.b.buf((b, n, c), torch.int8)
            self.b.call(self.dll.qm_merge_heads_quant, out.data_ptr(), b, h, n, d, aq.recip, float(aq.qmax),
                        q8.data_ptr())
            return self.gemm(pre + ".proj", q8)
        merged = self.b.buf((b, n, c), torch.float32)  # out.transpose(1, 2).reshape(b, n, c)
        self.b.call(merged.view(b, n, h, d).copy_, out.transpose(1, 2))
        return self.gemm(pre + ".proj", self.quant_input(pre + ".proj", merged))

    def self_attention(self, pre: str, v: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, c = v.shape
        qkv = self.linear_in(pre + ".qkv", v)
        q, k_t, vv = self.split_heads(qkv, self.lp(pre + ".qkv").y_scale, 3, heads, 0b010)
        return self.attend(pre, q, k_t, vv, b, n, c)

    def cross_attention(self, pre: str, x: torch.Tensor, y_h: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.linear_in(pre + ".q_linear", x)
        kv = self.linear_in(pre + ".kv_linear", y_h)
        (hq,) = self.split_heads(q, self.lp(pre + ".q_linear").y_scale, 1, heads, 0)
        hk, hv = self.split_heads(kv, self.lp(pre + ".kv_linear").y_scale, 2, heads, 0b01)
        return self.attend(pre, hq, hk, hv, b, n, c)

    def gelu(self, codes: torch.Tensor, scale: float) -> torch.Tensor:
        """gelu_fp16(_dequant_fp16(codes)): the C dequantization, then intops._gelu_fp16 per flat
        block of CHUNK_ELEMS (the eager path's blocks, so tanh sees the same lanes)."""
        n = codes.numel()
        xh = self.b.buf(codes.shape, torch.float16)
        self.b.call(self.dll.qm_dequant, codes.data_ptr(), ckernels.IN_KIND_INT[codes.dtype], n, scale,
                    xh.data_ptr(), 1)
        out = self.b.buf(codes.shape, torch.float16)
        ch = intops.CHUNK_ELEMS
        blocks = [(0, n)] if n <= ch else [(i, min(ch, n - i)) for i in range(0, n, ch)]
        for i, cnt in blocks:
            inner = self.b.buf(codes.shape if cnt == n else cnt, torch.float32)
            self.b.call(self.dll.qm_gelu_pre, xh.data_ptr() + 2 * i, cnt, inner.data_ptr())
            self.b.call(torch.tanh, inner, out=inner)
            self.b.call(self.dll.qm_gelu_post, xh.data_ptr() + 2 * i, cnt, inner.data_ptr(), out.data_ptr() + 2 * i)
        return out

    # ---- the blocks -----------------------------------------------------------------------------------
    def block(self, i: int, x: torch.Tensor, y_h: torch.Tensor, t0: torch.Tensor, tpe) -> torch.Tensor:
        """IntegerEmulator.block for the program's scope: x fp16 [B, N, C] -> the next x."""
        emu, bld = self.emu, self.b
        blk = emu.model.blocks[i]
        pre = f"blocks.{i}"
        b, n, c = x.shape
        heads = blk.attn.num_heads
        table = bld.const(blk.scale_shift_table.detach()[None])
        mod = bld.buf((b, 6, c), torch.float32)
        bld.call(torch.add, table, t0.view(b, 6, -1), out=mod)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        x_m = self.norm_modulate(pre + ".norm1", x, shift_msa, scale_msa, pre + ".attn.qkv")
        x_s = self.self_attention(pre + ".attn", x_m.view(b * blk.d_t, blk.d_s, c), heads)
        x = self.residual(x, x_s.view(b, n, c), self.lp(pre + ".attn.proj").y_scale, gate_msa)
        x_t = bld.buf((b * blk.d_s, blk.d_t, c), torch.float16)  # [B, T, S, C] -> [B * S, T, C]
        bld.call(x_t.view(b, blk.d_s, blk.d_t, c).copy_, x.view(b, blk.d_t, blk.d_s, c).transpose(1, 2))
        if tpe is not None:  # fp16 add of the saturated fp16 embedding (IntegerEmulator.residual)
            tpe_h = bld.const(tpe.detach().clamp(-FP16_MAX, FP16_MAX).to(torch.float16))
            x_t2 = bld.buf(x_t.shape, torch.float16)
            bld.call(torch.add, x_t, tpe_h, out=x_t2)
            x_t = x_t2
        t_codes = self.self_attention(pre + ".attn_temp", x_t, heads)  # int16 [B * S, T, C]
        back = bld.buf((b, n, c), t_codes.dtype)  # [B * S, T, C] -> [B, T * S, C]
        bld.call(back.view(b, blk.d_t, blk.d_s, c).copy_, t_codes.view(b, blk.d_s, blk.d_t, c).transpose(1, 2))
        x = self.residual(x, back, self.lp(pre + ".attn_temp.proj").y_scale, gate_msa)
        xc = self.cross_attention(pre + ".cross_attn", x, y_h, heads)
        x = self.residual(x, xc, self.lp(pre + ".cross_attn.proj").y_scale, None)
        x_m = self.norm_modulate(pre + ".norm2", x, shift_mlp, scale_mlp, pre + ".mlp.fc1")
        h = self.gelu(self.linear_in(pre + ".mlp.fc1", x_m), self.lp(pre + ".mlp.fc1").y_scale)
        y2 = self.gemm(pre + ".mlp.fc2", self.quant_input(pre + ".mlp.fc2", h))
        return self.residual(x, y2, self.lp(pre + ".mlp.fc2").y_scale, gate_mlp)

    def compile(self, m, x_shape: tuple, y_shape: tuple) -> BlockProgram:
        bld = self.b
        b, n, c = x_shape
        x_in = bld.buf(x_shape, torch.float16)
        y_in = bld.buf(y_shape, torch.float16)
        t0_in = bld.buf((b, 6 * c), torch.float32)
        for name in self.emu.linears:  # every block linear quantized with int8 codes
            if name.startswith("blocks."):
                self.lp(name)
        x = x_in
        for i in range(len(m.blocks)):
            tpe = m.block_tpe(i) if hasattr(m, "block_tpe") else (m.pos_embed_temporal if i == 0 else None)
            x = self.block(i, x, y_in, t0_in, tpe)
        return BlockProgram(bld.steps, bld.keep, x_in, y_in, t0_in, x)
