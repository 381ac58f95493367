"""The integer emulator's transformer blocks (OpenSora v1.0 STDiT), written once.

The block's data flow (which ops run, in which order, on which values) lives only here. It runs on an
*ops backend*, which decides what running an op means:

- :class:`~quantmodel.emulator.integer.IntegerEmulator` executes each op at once (torch ops, the C
  kernels on CPU, torch only on CUDA, the float64 reference comparisons when verifying);
- :class:`~quantmodel.emulator.program.ProgramOps` allocates the op's buffers in an arena and appends
  its bound kernel calls to a program that a forward then replays (no Python dispatch per op).

Both backends implement :class:`BlockOps`. A value is what the backend's ops pass along: a float
tensor (fp16 values in ``fp16`` mode, float32 otherwise) or an :class:`IntVal` (integer codes and the
scale they are at); the block only reshapes values, it never looks inside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class IntVal:
    """An integer tensor with its per-tensor scale (value = q * scale)."""

    q: torch.Tensor
    scale: float

    def map(self, fn) -> IntVal:
        return IntVal(fn(self.q), self.scale)


def vmap(v, fn):
    """``fn`` applied to the tensor of a value (its codes for an :class:`IntVal`)."""
    return v.map(fn) if isinstance(v, IntVal) else fn(v)


def shape_of(v) -> torch.Size:
    return v.q.shape if isinstance(v, IntVal) else v.shape


class BlockOps(Protocol):
    """The ops a block is made of (names are the artifact's op names, e.g. ``blocks.0.attn``)."""

    def enter(self, h: torch.Tensor):
        """The embedded tokens [B, N, C] (float32) as the residual stream the first block reads."""

    def leave(self, v) -> torch.Tensor:
        """The last block's output as a float tensor (fp16 values in ``fp16`` mode) for the final layer."""

    def modulation(self, table: torch.Tensor, t0: torch.Tensor, b: int) -> tuple:
        """``table[None] + t0`` as six [B, 1, C] float32 chunks (shift/scale/gate for attention and MLP)."""

    def norm_modulate(self, norm: str, name: str, v, shift, scale, consumer: str):
        """``layernorm(v) * (1 + scale) + shift``, the consumer layer's SmoothQuant factors folded in."""

    def project(self, name: str, v):
        """A linear layer whose output holds attention operands (qkv, q_linear, kv_linear)."""

    def text(self, y: torch.Tensor):
        """The projected text [B, L, C] as the kv_linear layer reads it."""

    def heads(self, pre: str, v, roles: str, num_heads: int) -> list:
        """The operands ``roles`` (e.g. ``"qkv"``, ``"kv"``) side by side in v [B, L, P * C], each as
        [B, H, L, D] ([B, H, D, L] for K), ready for the products (see :func:`head_layout`)."""

    def attend(self, pre: str, q, k_t, vv, b: int, n: int, c: int):
        """softmax(q k_t / sqrt(D)) vv with the heads merged back to [b, n, c], then the proj layer."""

    def residual(self, name: str, x, y, gate: torch.Tensor | None):
        """``x + gate * y`` (gate None: a plain add) into the residual stream."""

    def add_tpe(self, name: str, x_t, tpe: torch.Tensor):
        """The temporal position embedding (a model constant [1, T, C]) added to x_t [B * S, T, C]."""

    def swap_tokens(self, v, b: int, t: int, s: int):
        """v [B, T * S, C] as [B * S, T, C] (frame-major to position-major; a copy)."""

    def linear(self, name: str, v):
        """A linear layer of the block (quantized by the recipe or float)."""

    def gelu(self, name: str, v):
        """GELU (tanh approximation) of the MLP's hidden activations."""


HEAD_PARTS = {"q": ("qk", "a_scale", False), "k": ("qk", "b_scale", True), "v": ("av", "b_scale", False)}


def head_layout(pre: str, roles: str) -> tuple[int, list]:
    """(tmask, targets) of a GEMM output holding the attention operands ``roles`` side by side: bit p
    of tmask is set where part p is read transposed (K), and targets[p] names the product input that
    part feeds (op name, scale field), for integer products."""
    tmask, targets = 0, []
    for p, role in enumerate(roles):
        prod, fld, transposed = HEAD_PARTS[role]
        tmask |= int(transposed) << p
        targets.append((f"{pre}.{prod}", fld))
    return tmask, targets


def head_views(t: torch.Tensor, parts: int, num_heads: int, tmask: int) -> list:
    """The parts of t [B, L, parts * C] as strided [B, H, L, D] views ([B, H, D, L] where bit p of
    tmask is set): how the float (or integer) products read a GEMM output without copying it."""
    b, _, pc = t.shape
    t = t.reshape(b, -1, parts, num_heads, pc // (parts * num_heads)).permute(2, 0, 3, 1, 4)
    return [t[p].transpose(-2, -1) if (tmask >> p) & 1 else t[p] for p in range(parts)]


def attention(ops: BlockOps, pre: str, v, num_heads: int):
    """Self-attention over the rows of v [B', L, C]: qkv, the heads, the products and softmax, proj."""
    b, n, c = shape_of(v)
    q, k_t, vv = ops.heads(pre, ops.project(pre + ".qkv", v), "qkv", num_heads)
    return ops.attend(pre, q, k_t, vv, b, n, c)


def cross_attention(ops: BlockOps, pre: str, v, y: torch.Tensor, num_heads: int):
    """Attention of v [B, N, C] to the projected text y [B, L, C]."""
    b, n, c = shape_of(v)
    (q,) = ops.heads(pre, ops.project(pre + ".q_linear", v), "q", num_heads)
    k_t, vv = ops.heads(pre, ops.project(pre + ".kv_linear", ops.text(y)), "kv", num_heads)
    return ops.attend(pre, q, k_t, vv, b, n, c)


def block(ops: BlockOps, blk, pre: str, x, y: torch.Tensor, t0: torch.Tensor, tpe: torch.Tensor | None):
    """One STDiT block (``blk`` gives the table, head count and frame geometry) on the residual
    stream x [B, N, C] = [B, T * S, C]; as :meth:`quantmodel.model.stdit.STDiTBlock.forward`."""
    b, n, c = shape_of(x)
    heads = blk.attn.num_heads
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ops.modulation(blk.scale_shift_table, t0, b)
    x_m = ops.norm_modulate(pre + ".norm1", pre + ".modulate1", x, shift_msa, scale_msa, pre + ".attn.qkv")
    x_s = attention(ops, pre + ".attn", vmap(x_m, lambda t: t.reshape(b * blk.d_t, blk.d_s, c)), heads)
    x = ops.residual(pre + ".res_attn", x, vmap(x_s, lambda t: t.reshape(b, n, c)), gate_msa)
    x_t = ops.swap_tokens(x, b, blk.d_t, blk.d_s)  # [B * S, T, C]
    if tpe is not None:
        x_t = ops.add_tpe(pre + ".tpe_add", x_t, tpe)
    x_t = ops.swap_tokens(attention(ops, pre + ".attn_temp", x_t, heads), b, blk.d_s, blk.d_t)  # [B * T, S, C]
    x_t = vmap(x_t, lambda t: t.reshape(b, n, c))
    x = ops.residual(pre + ".res_temp", x, x_t, gate_msa)
    x = ops.residual(pre + ".res_cross", x, cross_attention(ops, pre + ".cross_attn", x, y, heads), None)
    x_m = ops.norm_modulate(pre + ".norm2", pre + ".modulate2", x, shift_mlp, scale_mlp, pre + ".mlp.fc1")
    h = ops.gelu(pre + ".mlp.act", ops.linear(pre + ".mlp.fc1", x_m))
    return ops.residual(pre + ".res_mlp", x, ops.linear(pre + ".mlp.fc2", h), gate_mlp)


def run_blocks(ops: BlockOps, model, h: torch.Tensor, y: torch.Tensor, t0: torch.Tensor) -> torch.Tensor:
    """All blocks of ``model`` on the embedded tokens h [B, N, C] with the projected text y [B, L, C]
    and the timestep features t0 [B, 6 * C]; returns what the final layer reads."""
    begin = getattr(ops, "begin_block", None)  # optional: a backend that checks only some blocks
    if begin is not None:
        begin(0)
    v = ops.enter(h)
    for i, blk in enumerate(model.blocks):
        if begin is not None:
            begin(i)
        tpe = model.block_tpe(i) if hasattr(model, "block_tpe") else (model.pos_embed_temporal if i == 0 else None)
        v = block(ops, blk, f"blocks.{i}", v, y, t0, tpe)
    return ops.leave(v)
