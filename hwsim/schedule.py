"""Which ops of a step run together, and where their tensors live between them.

An NPU compiler does not send every tensor through DRAM. This module groups a step's op list the
way one does and lets the planner's figure of merit (``tiling.figure_of_merit``, energy x delay^2,
the tile search's own) choose, per group, how much of it to fuse:

- a GEMM (linear or conv) takes the row-local vector ops right before it as its prologue
  (LayerNorm, modulation, SmoothQuant multiply, dynamic-quant statistics, activations: they run
  on each input row block in SRAM before it enters the arrays) and the element-wise ops right after
  it as its epilogue (dynamic rescale, GELU/SiLU, a residual add whose second operand is read per
  output tile, and the next GEMM's SmoothQuant multiply, which then writes that GEMM's quantized
  input); options: all, only the quantization stage next to the GEMM, or none of the prologue x all
  or none of the epilogue; what is not fused runs as one streamed vector unit;
- QK^T, softmax and PV of a head are one FlashAttention-style unit (``tiling.plan_attention``);
- vector ops that are not fused into a GEMM stream through SRAM together when they chain
  (e.g. LayerNorm + modulate as one pass);
- residency: a unit whose output fits a quarter of the activation buffer hands it to the next unit
  in SRAM when that unit reads it as its main input (neither DRAM write nor read) and the pair's
  energy x delay^2 is no worse (``simulate._Units._hand_over``).

``dram_lower_bound`` gives the compulsory DRAM traffic of the same op list on the same chip (the
yardstick the result reports each op against).

Producer -> consumer edges come from the trace's ``reads`` (each op names the op of its step that
wrote every tensor it reads, ``workloads/trace.py``): a stage fuses into its neighbour only where
one reads the other's output and nothing else reads the tensor that fusion keeps off DRAM
(``Edges``); a hand-over in SRAM skips the DRAM write only when the next unit is the tensor's
only reader. The quantization stages are still recognised by their names (``<gemm>.smooth``,
``<gemm>.quant``, ``<gemm>.dyn_stats``, ``<gemm>.dyn_rescale``), as ``quantmodel``'s tracer writes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PRE_KINDS = ("layernorm", "modulate", "smooth_mul", "quantize", "dyn_stats", "gelu", "silu", "elementwise")
POST_KINDS = ("dyn_rescale", "gelu", "silu", "elementwise", "smooth_mul", "quantize")
ROW_KINDS = ("layernorm", "dyn_stats")  # need the whole row (K) of the GEMM's input in SRAM
CHAIN_KINDS = (
    "layernorm",
    "modulate",
    "smooth_mul",
    "quantize",
    "dyn_stats",
    "dyn_rescale",
    "gelu",
    "silu",
    "elementwise",
)
# static quantization stages that write the next GEMM's int8 input, and their name suffix
QUANT_SUFFIX = {"smooth_mul": ".smooth", "quantize": ".quant"}
FUSED_GEMMS = ("linear", "conv")
SMALL_SIDE = 16  # a prologue op's side input (a modulation table) is at most 1/16 of its main input


class Edges:
    """Who reads whose output within one step, from the trace's ``reads`` (producer names)."""

    def __init__(self, ops: list):
        index = {op.name: i for i, op in enumerate(ops)}
        self.readers: list[set[int]] = [set() for _ in ops]
        self.reads: list[set[int]] = [set() for _ in ops]
        for j, op in enumerate(ops):
            for name, _, _, _ in op.read_entries():
                i = index.get(name)
                if i is not None and i != j:
                    self.readers[i].add(j)
                    self.reads[j].add(i)

    def feeds(self, i: int, j: int) -> bool:
        """Op ``j`` reads op ``i``'s output."""
        return i in self.reads[j]

    def only_reader(self, i: int, j: int) -> bool:
        """Op ``j`` is the one op that reads op ``i``'s output."""
        return self.readers[i] == {j}


@dataclass
class Group:
    """Op indices of one candidate fusion: ``core`` is [gemm], [qk, softmax, av] or vector ops."""

    kind: str  # gemm | attention | vector
    core: list
    pre: list = field(default_factory=list)
    post: list = field(default_factory=list)


def side_bytes(op) -> int:
    """Bytes an element-wise op reads beside the tensor it transforms (residual, table): all it
    reads but one tensor of its own size (the trace's ``reads``; its output may be narrower when it
    quantizes as it writes)."""
    if op.kind in ("modulate", "elementwise"):
        for _, _, el, bits in op.read_entries():
            if el == op.elements:
                return op.input_bytes - -(-el * bits // 8)
        return max(0, op.input_bytes - op.output_bytes)
    return 0


def in_elements(op) -> int:
    """Elements of the tensor an op consumes as its main input."""
    if op.kind in FUSED_GEMMS:
        return op.batch * op.m * op.k
    return op.elements


def out_elements(op) -> int:
    if op.kind in FUSED_GEMMS or op.kind.startswith("matmul"):
        return op.batch * op.m * op.n
    return op.elements


def _is_attention(ops, i: int) -> bool:
    if i + 2 >= len(ops):
        return False
    qk, sm, av = ops[i], ops[i + 1], ops[i + 2]
    return (
        qk.kind == "matmul_qk"
        and sm.kind == "softmax"
        and av.kind == "matmul_av"
        and qk.name.endswith(".qk")
        and sm.name == qk.name[:-3] + ".softmax"
        and av.name == qk.name[:-3] + ".av"
    )


def _pre_ok(op, consumer) -> bool:
    """``op`` may run as a prologue stage of ``consumer`` (a GEMM or the next prologue stage), by
    kind and size (``group_ops`` checks the edge)."""
    if op.kind not in PRE_KINDS or op.elements != in_elements(consumer) or op.elements == 0:
        return False
    if op.kind in QUANT_SUFFIX:
        return op.name == consumer.name + QUANT_SUFFIX[op.kind]
    if op.kind == "dyn_stats":
        return op.name == consumer.name + ".dyn_stats"
    return side_bytes(op) * SMALL_SIDE <= op.output_bytes


def _post_ok(ops, j: int, gemm) -> bool:
    op = ops[j]
    if op.kind not in POST_KINDS or op.elements != out_elements(gemm):
        return False
    if op.kind == "dyn_rescale":
        return op.name == gemm.name + ".dyn_rescale"
    if op.kind in QUANT_SUFFIX:  # quantizes for the next GEMM: only when that GEMM follows
        return (
            j + 1 < len(ops) and ops[j + 1].kind in FUSED_GEMMS and op.name == ops[j + 1].name + QUANT_SUFFIX[op.kind]
        )
    return True


def group_ops(ops: list, edges: Edges | None = None) -> list[Group]:
    """Greedy grouping in op order: attention triples; GEMMs with the vector ops that chain into
    their input (prologue) and out of their output (epilogue); the rest as chains of vector ops.
    One pass on purpose: a GEMM's prologue is taken from the vector ops pending before it, so the
    scan, the pending list and its flush share state."""
    edges = edges if edges is not None else Edges(ops)
    groups: list[Group] = []
    pending: list[int] = []  # vector ops not yet placed

    def flush(keep: int = 0) -> None:
        rest = pending[: len(pending) - keep]
        chain: list[int] = []
        for j in rest:
            op = ops[j]
            if (
                chain
                and op.kind in CHAIN_KINDS
                and ops[chain[-1]].kind in CHAIN_KINDS
                and j == chain[-1] + 1
                and edges.only_reader(chain[-1], j)
                and op.elements == ops[chain[-1]].elements
                and op.kind != "dyn_stats"
            ):
                chain.append(j)
                continue
            if chain:
                groups.append(Group("vector", chain))
            chain = [j]
        if chain:
            groups.append(Group("vector", chain))
        del pending[: len(pending) - keep]

    i, n = 0, len(ops)
    while i < n:
        op = ops[i]
        if _is_attention(ops, i):
            flush()
            groups.append(Group("attention", [i, i + 1, i + 2]))
            i += 3
            continue
        if op.kind in FUSED_GEMMS:
            pre: list[int] = []
            consumer = op
            for j in reversed(pending):
                nxt = pre[0] if pre else i
                if j != nxt - 1 or not _pre_ok(ops[j], consumer) or not edges.only_reader(j, nxt):
                    break
                pre.insert(0, j)
                consumer = ops[j]
            flush(keep=len(pre))
            pending.clear()
            post: list[int] = []
            j = i + 1
            while (
                j < n
                and _post_ok(ops, j, op)
                and (not post or ops[j].elements == ops[post[-1]].elements)
                and edges.only_reader(post[-1] if post else i, j)
            ):
                if ops[j].kind in QUANT_SUFFIX and any(side_bytes(ops[q]) for q in post):
                    break  # a residual add's output is read again later: it must be written as it is
                post.append(j)
                if ops[j].kind in QUANT_SUFFIX:
                    break
                j += 1
            groups.append(Group("gemm", [i], pre, post))
            i = (post[-1] if post else i) + 1
            continue
        if op.kind in ("matmul_qk", "matmul_av"):
            flush()
            groups.append(Group("gemm", [i]))
            i += 1
            continue
        pending.append(i)
        i += 1
    flush()
    return groups


def gemm_lower_bound_bytes(a_bytes: int, w_bytes: int, out_bytes: int, wbuf: int, abuf: int) -> int:
    """Least DRAM bytes of one GEMM given the buffers: each tensor once, and when neither operand
    fits on chip, the cheaper of re-reading the input once per weight-buffer load or the weights
    once per activation-buffer load of input rows (a loose bound: full buffers, no double
    buffering, no room for outputs)."""
    if w_bytes <= wbuf or a_bytes <= abuf or not w_bytes:
        return a_bytes + w_bytes + out_bytes
    return out_bytes + min(a_bytes * math.ceil(w_bytes / wbuf) + w_bytes, a_bytes + w_bytes * math.ceil(a_bytes / abuf))


def dram_lower_bound(
    ops: list, groups: list[Group], resident: bool, wbuf: int, abuf: int, edges: Edges | None = None
) -> list[int]:
    """Compulsory DRAM bytes per op of a step on a chip with these buffers: a lower bound (not
    tight) that the result reports each op against (docs/schedule.md).

    - Vector ops fuse into a neighbouring MAC-array unit for free: they count only their side
      inputs (a residual, a table) and SmoothQuant factors (unless weights are resident), once.
    - A MAC-array unit (GEMM, attention) reads its main input and writes its output once, each at
      the smallest size it takes along the unit's own fusable chain (e.g. fc1's output as the INT8
      tensor fc2 reads once its epilogue has quantized it), unless it fits half the activation
      buffer (then it may stay on chip).
    - A GEMM's weights cross once per use unless resident in SRAM, and more when neither they nor
      the input fit on chip (``gemm_lower_bound_bytes``).
    - Two GEMMs that may run as a row-block chain (``chain_bound_bytes``: the MLP) count the
      cheaper of the two ways.
    """
    edges = edges if edges is not None else Edges(ops)
    bound = [0] * len(ops)
    half = abuf // 2
    parts: dict[int, tuple[int, int, int]] = {}  # GEMM group's core op -> (input, weights, output) bytes
    for g in groups:
        for j in g.pre + g.post + (g.core if g.kind == "vector" else []):
            bound[j] = side_bytes(ops[j]) + (0 if resident else ops[j].weight_bytes)
        if g.kind == "vector":
            continue
        core = ops[g.core[0]]
        if g.kind == "attention":  # Q and K, and V (the PV op reads P from SRAM); O
            a_in = core.input_bytes + ops[g.core[2]].input_bytes - ops[g.core[1]].output_bytes
            out = ops[g.core[2]].output_bytes
        else:
            a_in = min(
                [core.input_bytes]
                + [ops[j].output_bytes for j in g.pre]
                + ([ops[g.pre[0]].input_bytes - side_bytes(ops[g.pre[0]])] if g.pre else [])
            )
            tail = g.post[-1] if g.post else g.core[0]
            quantized = ops[tail].kind in QUANT_SUFFIX and tail + 1 < len(ops)
            out = min(
                [core.output_bytes]
                + [ops[j].output_bytes for j in g.post]
                + ([ops[tail + 1].input_bytes] if quantized else [])
            )
        a_in = 0 if a_in <= half else a_in
        out = 0 if out <= half else out
        if g.kind == "attention":
            bound[g.core[0]] = a_in + out
        else:
            w = 0 if resident and not core.kind.startswith("matmul") else core.weight_bytes
            bound[g.core[0]] = gemm_lower_bound_bytes(a_in, w, out, wbuf, abuf)
            if core.kind in FUSED_GEMMS:
                parts[g.core[0]] = (a_in, w, out)
    for g1, g2 in zip(groups, groups[1:]):
        i, j = g1.core[0], g2.core[0]
        tail = (g1.post or g1.core)[-1]
        if i in parts and j in parts and not g2.pre and tail + 1 == j and edges.readers[tail] == {j}:
            hidden = ops[j].input_bytes
            fused = chain_bound_bytes(parts[i][0], parts[i][1], parts[j][1], hidden, parts[j][2], wbuf, abuf)
            if fused < bound[i] + bound[j]:  # the pair's bound on the first GEMM, the second's side bytes
                bound[i], bound[j] = fused, 0
    return bound


def chain_bound_bytes(a_in: int, w1: int, w2: int, hidden: int, out: int, wbuf: int, abuf: int) -> int:
    """Least DRAM bytes of two GEMMs run as a row-block chain (``hwsim/chain.py``): the input and
    the output once, the tensor between them never; its blocks hold at most the activation buffer,
    so at least ceil(hidden / abuf) blocks, and each block after the first brings in again what of
    the two weight matrices the weight buffer cannot keep."""
    blocks = math.ceil(hidden / abuf)
    return a_in + out + w1 + w2 + (blocks - 1) * max(0, w1 + w2 - wbuf)
