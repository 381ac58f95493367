"""``simulate(trace, hw)``: run a quantized op trace on the processor model.

Speed comes from memoisation, never from a coarser model:

- a step's op list (shapes, bits, names) and its weight-set transition (none, a set coming in now,
  the next set being prefetched) determine its numbers, so each distinct (op list, transition) is
  simulated once and the others replayed;
- inside a step, a unit (one GEMM with its fused vector stages, or one vector op) starts from an
  idle machine (the previous unit has drained) unless a background swap runs, so its cycles and
  counters depend on the unit alone: the 28 identical blocks are simulated once each shape;
- such a run depends on the unit's plan and the machine's transfer parameters alone
  (``unit_run``), so it is kept by that content: chips that plan a unit with the same tiles, and
  a latency planner's replay of the plan it picks and the step's run of that unit, share it.

Both hold exactly because time is integer cycles; ``memo=False`` simulates everything and must give
the same numbers bit for bit (tests/hwsim/test_hwsim_model.py::test_memoised_equals_unmemoised_exactly).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import operator
import threading
from collections import OrderedDict
from operator import attrgetter

from hwsim import bounded
from hwsim.area import area_breakdown_mm2
from hwsim.chain import ChainUnit, chainable, plan_chain, row_options
from hwsim.config import HWConfig
from hwsim.energy import energy_breakdown_j
from hwsim.engine import Machine, unit_params
from hwsim.gemm_closed_form import gemm_plan
from hwsim.result import SimResult
from hwsim.schedule import (
    FUSED_GEMMS,
    ROW_KINDS,
    Edges,
    dram_lower_bound,
    group_ops,
    in_elements,
    out_elements,
    side_bytes,
)
from hwsim.swap import WeightPlan, plan_weights, weight_sets
from hwsim.tiling import (
    AttentionUnit,
    GemmUnit,
    NoFit,
    Plan,
    VectorOpUnit,
    _GemmSearch,
    attention_blockings,
    figure_of_merit,
    gemm_shape,
    op_stages,
    plan_attention,
    plan_estimate,
    plan_vector,
    precision_of,
    stages_of,
    static_twin,
    transfer_cycles_per_byte,
    vector_cycles,
)
from workloads.errors import ConfigError
from workloads.trace import GEMM_KINDS, KINDS, TRACE_VERSION, Trace

# 2: GEMM tile search weighs array cycles against DRAM traffic (tiling.py)
# 3: tile search minimises estimated energy x delay^2 (DRAM/SRAM/vector/leakage energy, DMA engine
#    rate, pre-stage work per input reload); a GEMM with quantization stages starts from its static
#    twin's tiling; stages fused or run as their own ops, whichever is faster; a fused
#    pre-stage's quantized copy counted at its own bytes (was FP16 again)
# 4: schedule (hwsim/schedule.py): prologue/epilogue fusion chosen by energy x delay^2, vector chains,
#    SRAM hand-over of small tensors; balanced row blocks; DRAM lower bound reported
# 5: energies and areas from the technology node, the clock's operating point (V-f), CACTI 7 SRAM
#    banks, LPDDR/UFS parts and calibrated NPU overheads (technology.py, sram.py, memory.py)
# 6: planner.objective (edp2 | latency | energy); the closed-form pipeline time charges each stream
#    its own fill and drain (was: the largest per-tile stage subtracted, which dropped a big last
#    store); fusion and SRAM hand-over follow the trace's producer -> consumer edges, a hand-over
#    writes the tensor to DRAM too when another op reads it later, and the tensor's bytes are taken
#    from both units' activation buffer
# 7: two GEMMs whose tensor between them only the second reads (the MLP's fc1 -> GELU -> fc2) may
#    run as a chain of row blocks with that tensor in SRAM (hwsim/chain.py), where the objective is
#    better; the DRAM lower bound counts the cheaper of chained and apart
# 8: the latency planner draws attention blockings, chain row blocks and GEMM row blocks from ladders
#    that only grow with the buffers (``tiling.block_ladder``) and picks attention and chains by
#    replay, skipping only candidates whose proven lower bound cannot win (``_fastest_replay``);
#    the default edp2 planner's numbers are unchanged
# 9: a tile of fewer batch items (attention heads, matmul items) than MAC arrays runs one item per
#    array when that is faster than cutting each item's output columns over all the arrays, so a
#    tile is never slower on more arrays (tiling._tile_compute_cycles); chips with at most 2
#    arrays, and so the presets, keep their numbers
# 10: the latency planner tiles a GEMM by the fastest replay of its whole ladder (power-of-two row,
#    batch, depth and width blocks, on all the MAC arrays or half, a quarter, ... of them; was: the
#    best 8 by estimate), with a tighter replay lower bound (each loader's and the storer's
#    transfers one after another), runs a chain's GEMMs with the machine drained between them (the
#    chain takes the sum of its parts' replays) and decides the SRAM hand-overs jointly (dynamic
#    programming, was: pair by pair); the default edp2 planner's numbers are unchanged
SIM_VERSION = "hwsim-10"
_OP_KEY = attrgetter(
    "kind",
    "batch",
    "m",
    "k",
    "n",
    "elements",
    "weight_bytes",
    "input_bytes",
    "output_bytes",
    "w_bits",
    "a_bits",
    "name",
    "epilogue",
    "dequant_elements",
    "table_bytes",
)
_INT_FIELDS = ("batch", "m", "k", "n", "elements", "weight_bytes", "input_bytes", "output_bytes", "table_bytes")
PRE_QUANT = ("smooth_mul", "quantize", "dyn_stats")  # the quantization stage right before a GEMM


# ---- trace -> units ---------------------------------------------------------------------------------
def _check_op(op, where: str) -> None:
    for f in _INT_FIELDS:
        v = getattr(op, f)
        if not isinstance(v, int) or v < 0:
            raise ConfigError(f"{where}.{f}", v, "an integer >= 0")
    if op.kind not in KINDS:
        raise ConfigError(f"{where}.kind", op.kind, ", ".join(KINDS))
    if op.kind in GEMM_KINDS:
        for f in ("batch", "m", "k", "n"):
            if getattr(op, f) <= 0:
                raise ConfigError(f"{where}.{f}", getattr(op, f), "a positive integer for a GEMM")
    for f in ("w_bits", "a_bits"):
        if getattr(op, f) not in (4, 6, 8, 16):
            raise ConfigError(f"{where}.{f}", getattr(op, f), "4, 6, 8 or 16")


def _gemm_unit(op, wplan: WeightPlan, pre_ops=(), post_ops=(), next_op=None) -> GemmUnit:
    """The GEMM ``op`` with the vector ops ``pre_ops`` fused as its prologue and ``post_ops`` as its
    epilogue (``schedule.group_ops``). With a prologue the input arrives as the first stage reads it
    (FP16) and the quantized copy is made in SRAM beside it; an epilogue writes what its last stage
    writes (the next GEMM's quantized input after its SmoothQuant multiply) and reads the side
    operand of a residual add per output tile."""
    per_item = op.kind.startswith("matmul")
    if per_item:  # both operands in input_bytes, split by element count
        a_el, b_el = op.batch * op.m * op.k, op.batch * op.k * op.n
        a_bytes = op.input_bytes * a_el // (a_el + b_el)
        b_bytes = op.input_bytes - a_bytes
    else:
        a_bytes, b_bytes = op.input_bytes, op.weight_bytes
    extra, pre_w = 0.0, 0
    if pre_ops:
        extra = a_bytes / (op.batch * op.m * op.k)  # bytes per element of the quantized copy
        a_bytes = pre_ops[0].input_bytes - side_bytes(pre_ops[0])
        pre_w = sum(side_bytes(p) for p in pre_ops)  # modulation tables
    out, res = op.output_bytes, 0
    if post_ops:
        out = _chain_out(post_ops[-1], next_op)
        res = sum(side_bytes(q) for q in post_ops)
    if not wplan.resident:  # SmoothQuant factors come with the weights
        pre_w += sum(o.weight_bytes for o in (*pre_ops, *post_ops))
    pre_w += op.table_bytes  # the step's scale table (swap.py): from DRAM with the first weight tile
    return GemmUnit(
        batch=op.batch,
        m=op.m,
        k=op.k,
        n=op.n,
        precision=precision_of(op.w_bits, op.a_bits),
        a_bytes=max(1, a_bytes),
        b_bytes=b_bytes,
        out_bytes=max(1, out),
        b_per_item=per_item,
        b_resident=wplan.resident and not per_item,
        a_extra_sram_bpe=extra,
        pre="+".join(op_stages(p) for p in pre_ops),
        post="+".join(op_stages(q) for q in post_ops),
        pre_weight_bytes=pre_w,
        res_bytes=res,
        epilogue=op.epilogue,
        dequant_elements=op.dequant_elements,
    )


def _chain_out(last, next_op) -> int:
    """Bytes a chain ending in ``last`` writes: a SmoothQuant multiply quantizes as it multiplies
    (``tiling.VECTOR_WORK``), so it writes the tensor the GEMM after it reads, not the FP16 copy
    the trace records for an unfused smooth op (quantmodel: output_bytes = rows x k x 2)."""
    if last.kind in ("smooth_mul", "quantize") and next_op is not None and next_op.kind in FUSED_GEMMS:
        return min(last.output_bytes, next_op.input_bytes)
    return last.output_bytes


def _vector_unit(chain: list, wplan: WeightPlan, next_op=None) -> VectorOpUnit:
    """Vector ops that stream through SRAM as one pass (one op, or a chain such as LayerNorm +
    modulate): the first op's input (+ every side input) in, the last op's output out."""
    first = chain[0]
    side = sum(side_bytes(o) for o in chain)
    dyn = next((o for o in chain if o.kind == "dyn_stats"), None)
    return VectorOpUnit(
        kind="+".join(op_stages(o) for o in chain),
        elements=first.elements,
        in_bytes=first.input_bytes - side_bytes(first) + side,
        out_bytes=_chain_out(chain[-1], next_op),
        weight_bytes=0 if wplan.resident else sum(o.weight_bytes for o in chain),
        rows=dyn.batch * dyn.m if dyn is not None else 0,
        side_bytes=side,
    )


class _Units:
    """The execution units of one step's op list, with their plans and which ops they cover.

    ``schedule.group_ops`` proposes the fusions; per GEMM group the options (prologue: all, only
    the quantization stage next to the GEMM, none; epilogue: all, none) are planned and the one of
    least figure of merit (``tiling.figure_of_merit`` of the estimated cycles and energy of its
    units run one after another) is kept; then units hand small tensors over in SRAM."""

    def __init__(self, ops: list, hw: HWConfig, wplan: WeightPlan, plans: dict):
        self.units, self.plans, self.labels, self.covered = [], [], [], []
        for op in ops:
            _check_op(op, f"trace op {op.name!r}")
        self.ops, self.wplan, self.cache = ops, wplan, plans
        wbuf = hw.sram.weight_buffer_bytes
        if wplan.resident:  # resident weights take half the weight buffer (see swap.py)
            hw = _with_wbuf(hw, wbuf - wbuf // 2)
        self.hw = hw
        self.edges = Edges(ops)
        groups = group_ops(ops, self.edges)
        for g in groups:
            if g.kind == "attention":
                self._add_attention(g.core)
            elif g.kind == "vector":
                self._append([(_vector_unit([ops[j] for j in g.core], wplan, self._next(g.core[-1])), g.core)])
            else:
                self._add_gemm(g)
        self._chain()
        self._hand_over()
        self.op_unit, self.primary = [0] * len(ops), [False] * len(ops)
        for u, cov in enumerate(self.covered):
            prim = next((j for j in cov if ops[j].kind in GEMM_KINDS), cov[0])
            for j in cov:
                self.op_unit[j], self.primary[j] = u, j == prim
        self.set_bytes = [sum(ops[j].weight_bytes for j in cov if ops[j].weight_set >= 0) for cov in self.covered]
        self.lower = dram_lower_bound(
            ops, groups, wplan.resident, hw.sram.weight_buffer_bytes, hw.sram.activation_buffer_bytes, self.edges
        )

    def _next(self, j: int):
        return self.ops[j + 1] if j + 1 < len(self.ops) else None

    def _plan(self, unit, need_full_k: bool = False) -> Plan:
        return _plan(unit, self.hw, self.cache, need_full_k)

    def _append(self, parts: list, plans: list | None = None) -> None:
        for n, (unit, cov) in enumerate(parts):
            self.units.append(unit)
            self.plans.append(plans[n] if plans is not None else self._plan(unit))
            self.labels.append(self.ops[next((j for j in cov if self.ops[j].kind in GEMM_KINDS), cov[0])].name)
            self.covered.append(list(cov))

    def _add_attention(self, core: list) -> None:
        qk, av = self.ops[core[0]], self.ops[core[2]]
        unit = _attention_unit(qk, av)
        if unit is not None:
            try:
                plan = self._plan(unit, need_full_k=True)
            except NoFit:  # the score tile does not fit: run the three ops one by one
                plan = None
            if plan is not None:
                self._append([(unit, core)], [plan])
                return
        self._append(
            [
                (_gemm_unit(qk, self.wplan), [core[0]]),
                (_vector_unit([self.ops[core[1]]], self.wplan), [core[1]]),
                (_gemm_unit(av, self.wplan), [core[2]]),
            ]
        )

    def _add_gemm(self, g) -> None:
        """Plan every fusion option of a GEMM group and keep the one of least figure of merit
        (ties: fewer units)."""
        ops, wplan = self.ops, self.wplan
        gi = g.core[0]
        gemm, nxt = ops[gi], self._next((g.post or g.core)[-1])
        pre_opts = [len(g.pre)]
        if len(g.pre) > 1 and ops[g.pre[-1]].kind in PRE_QUANT:
            pre_opts.append(1)
        if g.pre:
            pre_opts.append(0)
        best = None
        for np_ in pre_opts:
            for nq in [len(g.post), 0] if g.post else [0]:
                alone_pre, fused_pre = g.pre[: len(g.pre) - np_], g.pre[len(g.pre) - np_ :]
                fused_post, alone_post = g.post[:nq], g.post[nq:]
                unit = _gemm_unit(
                    gemm,
                    wplan,
                    [ops[j] for j in fused_pre],
                    [ops[j] for j in fused_post],
                    ops[alone_post[0]] if alone_post else nxt,
                )
                full_k = any(ops[j].kind in ROW_KINDS for j in fused_pre)
                try:
                    cyc, pj = _shape(unit, self.hw, self.cache, full_k)[1]
                    if self.hw.planner.objective == "latency":
                        cyc, pj = _plan_cost(self._plan(unit, full_k), self.hw)
                except NoFit:  # the fused row does not fit: spill, run those stages as their own ops
                    continue
                parts = []
                if alone_pre:
                    parts.append((_vector_unit([ops[j] for j in alone_pre], wplan, gemm), alone_pre))
                parts.append((unit, [*fused_pre, gi, *fused_post]))
                if alone_post:
                    parts.append((_vector_unit([ops[j] for j in alone_post], wplan, nxt), alone_post))
                for v, _ in parts:
                    if v is not unit:
                        c, e = _plan_cost(self._plan(v), self.hw)
                        cyc, pj = cyc + c, pj + e
                key = (figure_of_merit(cyc, pj, self.hw.planner.objective), len(parts))
                if best is None or key < best[0]:
                    best = (key, parts, full_k)
        _, parts, full_k = best
        self._append(parts, [self._plan(u, full_k if isinstance(u, GemmUnit) else False) for u, _ in parts])

    def _chain(self) -> None:
        """Two GEMM units in a row whose tensor between them is read by the second alone (the MLP's
        fc1 -> GELU -> fc2, ``hwsim/chain.py``) run row block by row block with that tensor in
        SRAM, where a row block of it fits and the planner's objective is better than apart."""
        u = 0
        while u + 1 < len(self.units):
            a, b = self.units[u], self.units[u + 1]
            last, head = self.covered[u][-1], self.covered[u + 1][0]
            best = None
            if (
                chainable(a, b)
                and last + 1 == head
                and self.edges.feeds(last, head)
                and self.edges.readers[last] <= set(self.covered[u + 1])
            ):
                for rows in row_options(a, b, self.hw):
                    try:
                        plan = self._plan(ChainUnit(a, b, rows))
                    except (NoFit, ConfigError):
                        continue
                    m = _merit([plan], self.hw)
                    if best is None or m < best[0]:
                        best = (m, ChainUnit(a, b, rows), plan)
            if best is not None and best[0] < _merit(self.plans[u : u + 2], self.hw):
                self.units[u : u + 2] = [best[1]]
                self.plans[u : u + 2] = [best[2]]
                self.labels[u : u + 2] = [self.labels[u]]
                self.covered[u : u + 2] = [self.covered[u] + self.covered[u + 1]]
            u += 1

    def _hand_over(self) -> None:
        """A unit's output stays in SRAM for the next unit when that unit reads it (the trace's
        ``reads``) as its main input, it fits a quarter of the activation buffer, and the pair's
        objective is no worse. The tensor holds its bytes of the activation buffer while the
        first unit writes it and the second reads it, so both are planned in what is left
        (``held_bytes``); the DRAM write is skipped only when the second unit is its one reader
        (else it is written as well, and only the read is saved). The latency planner decides
        every edge together (``_hand_over_exact``); the others pair by pair, greedily."""
        if self.hw.planner.objective == "latency":
            self._hand_over_exact()
            return
        quarter = self.hw.sram.activation_buffer_bytes // 4
        for u in range(len(self.units) - 1):
            a, b = self.units[u], self.units[u + 1]
            last, head = self.covered[u][-1], self.covered[u + 1][0]
            if not (_handover_kind(a) and _handover_kind(b)) or last + 1 != head or not self.edges.feeds(last, head):
                continue
            if a.out_bytes > quarter or out_elements(self.ops[last]) != in_elements(self.ops[head]):
                continue
            held = a.out_bytes + a.held_bytes  # a may itself hold its handed-over input
            only = self.edges.readers[last] <= set(self.covered[u + 1])
            na = dataclasses.replace(a, dram_out=not only, held_bytes=held)
            nb = dataclasses.replace(b, dram_in=False, held_bytes=a.out_bytes)
            try:
                qa, qb = self._plan(na, _needs_full_k(na)), self._plan(nb, _needs_full_k(nb))
            except (NoFit, ConfigError):
                continue
            if _merit([qa, qb], self.hw) <= _merit([self.plans[u], self.plans[u + 1]], self.hw):
                self.units[u], self.units[u + 1] = na, nb
                self.plans[u], self.plans[u + 1] = qa, qb

    def _handover_edge(self, u: int) -> bool:
        """Whether unit ``u`` may hand its output over in SRAM to unit ``u + 1`` (``_hand_over``)."""
        a, b = self.units[u], self.units[u + 1]
        last, head = self.covered[u][-1], self.covered[u + 1][0]
        return (
            _handover_kind(a)
            and _handover_kind(b)
            and last + 1 == head
            and self.edges.feeds(last, head)
            and a.out_bytes <= self.hw.sram.activation_buffer_bytes // 4
            and out_elements(self.ops[last]) == in_elements(self.ops[head])
        )

    def _hand_over_exact(self) -> None:
        """The latency planner's hand-over: which edges hand over, chosen jointly for least total
        (replayed cycles, then pJ) by dynamic programming over the units in order (state: whether
        the unit's input arrives in SRAM), each unit planned for what it holds (its input, its
        output, or both). The optimum over every feasible combination: a chip with a bigger buffer
        (more combinations fit, each unit no slower) never ends up slower, as a greedy pass
        deciding pair by pair could."""
        n, hw = len(self.units), self.hw
        edge = [self._handover_edge(u) for u in range(n - 1)] + [False]
        only = [edge[u] and self.edges.readers[self.covered[u][-1]] <= set(self.covered[u + 1]) for u in range(n)]

        def variant(u: int, hin: bool, hout: bool):
            if not hin and not hout:
                return self.units[u], self.plans[u]
            x = self.units[u]
            held = x.held_bytes + (self.units[u - 1].out_bytes if hin else 0) + (x.out_bytes if hout else 0)
            kw = {"held_bytes": held}
            if hin:
                kw["dram_in"] = False
            if hout:
                kw["dram_out"] = not only[u]
            x = dataclasses.replace(x, **kw)
            try:
                return x, self._plan(x, _needs_full_k(x))
            except (NoFit, ConfigError):
                return None

        # best[h] = (cost so far, choices) with unit u's input handed over (h) or not
        best = {False: ((0, 0.0), [])}
        for u in range(n):
            nxt: dict = {}
            for hin, (cost, path) in best.items():
                for hout in (False, True) if edge[u] else (False,):
                    v = variant(u, hin, hout)
                    if v is None:
                        continue
                    c, e = _plan_cost(v[1], hw)
                    cand = ((cost[0] + c, cost[1] + e), path + [v])
                    if hout not in nxt or cand[0] < nxt[hout][0]:
                        nxt[hout] = cand
            best = nxt
        _, path = best[False]
        self.units = [x for x, _ in path]
        self.plans = [p for _, p in path]


def _merit(plans: list, hw: HWConfig) -> tuple:
    """The planner's objective of plans run one after another (``_plan_cost``)."""
    est = [_plan_cost(p, hw) for p in plans]
    return figure_of_merit(sum(c for c, _ in est), sum(e for _, e in est), hw.planner.objective)


def _handover_kind(unit) -> bool:
    return isinstance(unit, VectorOpUnit) or (isinstance(unit, GemmUnit) and not unit.b_per_item)


def _needs_full_k(unit) -> bool:
    return isinstance(unit, GemmUnit) and any(s in ROW_KINDS for s in stages_of(unit.pre))


def _with_wbuf(hw: HWConfig, wbuf: int) -> HWConfig:
    return dataclasses.replace(hw, sram=dataclasses.replace(hw.sram, weight_buffer_bytes=wbuf))


def _attention_unit(qk, av) -> AttentionUnit | None:
    """The fused attention of a QK^T / softmax / PV triple, when the shapes chain."""
    if (qk.batch, qk.m, qk.n) != (av.batch, av.m, av.k):
        return None
    q_el, k_el = qk.m * qk.k, qk.k * qk.n
    p_el, v_el = av.m * av.k, av.k * av.n
    q_bytes = qk.input_bytes * q_el // (q_el + k_el)
    v_bytes = av.input_bytes * v_el // (p_el + v_el)
    return AttentionUnit(
        batch=qk.batch,
        m=qk.m,
        n=qk.n,
        d=qk.k,
        dv=av.n,
        precision_qk=precision_of(qk.w_bits, qk.a_bits),
        precision_av=precision_of(av.w_bits, av.a_bits),
        q_bytes=max(1, q_bytes),
        k_bytes=max(1, qk.input_bytes - q_bytes),
        v_bytes=max(1, v_bytes),
        out_bytes=max(1, av.output_bytes),
        epilogue=av.epilogue,
        dequant_elements=qk.dequant_elements + av.dequant_elements,
    )


def _shape(unit: GemmUnit, hw: HWConfig, plans: dict, need_full_k: bool = False) -> tuple:
    """(tiling, (cycles, pJ), MAC arrays it runs on) of a GEMM unit (``tiling.gemm_shape``: all the
    arrays), cached beside the plans; a unit with quantization stages starts from its static twin's
    tiling. A latency planner instead takes the fastest replay of its whole ladder, on all the arrays
    or fewer (``_fastest_shape``; its plan is cached for ``_plan``)."""
    key = ("shape", unit, need_full_k)
    hit = plans.get(key)
    if hit is None:
        try:
            if hw.planner.objective == "latency":
                hit = _fastest_shape(unit, hw, plans, need_full_k)
            else:
                anchor = None
                twin = static_twin(unit)
                if twin is not unit:  # the static twin's tiling (shared with the static recipe's GEMM)
                    try:
                        anchor = _shape(twin, hw, plans, _needs_full_k(twin))[0]
                    except (ConfigError, NoFit):
                        pass
                hit = (*gemm_shape(unit, hw, need_full_k, anchor), hw.mac.arrays)
        except NoFit as e:
            if need_full_k:
                raise
            raise e.config_error() from None
        plans[key] = hit
    return hit


def _fastest_shape(unit: GemmUnit, hw: HWConfig, plans: dict, need_full_k: bool) -> tuple:
    """A latency planner's tiling: the fastest replay of every tiling of its ladder
    (``_GemmSearch.ladder``: a candidate set that only grows with the buffers, the DRAM and DMA
    rates and the arrays), exactly (``_fastest_replay`` skips only tilings whose lower bound
    cannot win); its plan is cached for ``_plan``. No static-twin start: the exact choice over
    the twin's ladder (a superset of the fused GEMM's, each tiling no slower) already orders them."""
    searches = {a: _GemmSearch(unit, _with_arrays(hw, a)) for a in _array_counts(hw.mac.arrays)}
    cands = [((a, x), b) for a, srch in searches.items() for x, b in srch.ladder(need_full_k)]
    if not cands:
        gemm_shape(unit, hw, need_full_k)  # raises NoFit, naming the buffer
    bounds = {a: srch.est.bound for a, srch in searches.items()}
    plan = _fastest_replay(
        [(c, lambda a, x: bounds[a](*x)) for c, _ in cands],
        lambda c: dataclasses.replace(gemm_plan(unit, _with_arrays(hw, c[0]), need_full_k, shape=c[1]), arrays=c[0]),
        hw,
    )
    plans[(unit, need_full_k)] = plan
    bt, mt, kt, nt, wr = plan.tile_shape
    a = plan.arrays or hw.mac.arrays
    return (kt, nt, mt, bt, wr), searches[a].est(kt, nt, mt, bt, wr)[:2], a


def _array_counts(arrays: int) -> list[int]:
    """MAC arrays a latency planner's GEMM tiling may use: all, then half, a quarter, ... down to
    one. A chip with twice the arrays may run every plan of the chip with half (its other arrays
    idle), so its choices are a superset; it needs to because a plan is not always faster on more
    arrays: the vector unit serves the loaders' pre-stages and the storer's post-stages in the
    order they ask (``engine.Machine.reserve_vector``), and tiles that finish sooner can queue a
    post-stage ahead of the next tile's pre-stage and stall the arrays (a list-scheduling anomaly,
    Graham 1969: measured 272,344 -> 298,796 cycles for one MLP block of stdit-shapes on 4 -> 8
    arrays with the same tiling)."""
    out = [arrays]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


_ARRAYS_HW: dict = {}


def _with_arrays(hw: HWConfig, arrays: int) -> HWConfig:
    """``hw`` using ``arrays`` of its MAC arrays (the config itself when all), made once per config."""
    if arrays == hw.mac.arrays:
        return hw
    key = (id(hw), arrays)
    hit = _ARRAYS_HW.get(key)
    if hit is None or hit[0] is not hw:
        if len(_ARRAYS_HW) >= 256:
            _ARRAYS_HW.clear()
        hit = _ARRAYS_HW[key] = (hw, dataclasses.replace(hw, mac=dataclasses.replace(hw.mac, arrays=arrays)))
    return hit[1]


def _fastest_replay(cands: list, build, hw: HWConfig, limit: int | None = None) -> Plan:
    """The plan of least replayed cycles among ``cands`` = [(candidate, replay lower bound, or a
    function of the candidate that gives it)], best
    estimate first (``build`` makes a candidate's plan): one whose lower bound is not below the
    best replay so far cannot beat it and is skipped, so without ``limit`` the choice is exact, as
    if every candidate were replayed (ties: the first in estimate order); with it, at most
    ``limit`` candidates are replayed."""
    best = None
    n = 0
    for c, bound in cands:
        if best is not None and (
            (limit is not None and n >= limit) or (bound(*c) if callable(bound) else bound) >= best[0]
        ):
            continue
        n += 1
        plan = build(c)
        cyc = replay_cycles(plan, hw)
        if best is None or cyc < best[0]:
            best = (cyc, plan)
    return best[1]


def replay_cycles(plan: Plan, hw: HWConfig) -> int:
    """Cycles of a plan replayed alone on an idle machine: what a step spends on it (a unit starts
    once the one before has drained), computed once per plan."""
    if plan.replayed < 0:
        plan.replayed = unit_run(plan, hw)[0]
    return plan.replayed


def unit_run(plan: Plan, hw: HWConfig) -> tuple[int, dict]:
    """(cycles, counters it adds) of a plan run alone on an idle machine (``engine.Machine``).

    Such a run reads nothing but the plan and ``engine.unit_params`` (integer cycles, no state
    left from before), so it is kept by that content in ``_RUNS``: chips that differ elsewhere
    (buffers, node, flash, prefetch policy) and plan a unit with the same tiles share its run, and
    a latency planner's replay of the plan it picks is the step's run of that unit. A plan in
    closed form is cheap to run and not kept; ``simulate(memo=False)`` keeps nothing."""
    fresh = getattr(_FRESH, "on", False)
    key = None
    if not plan.closed and not fresh:
        key = (unit_params(hw), plan.engine, plan.in_cap, plan.w_cap, plan.out_cap, bool(plan.parts), tuple(plan.tiles))
        hit = _RUNS.get(key)
        if hit is not None:
            return hit
    m = Machine(hw)
    m.env.process(m.run_unit(plan, ""))
    m.env.run()
    out = (m.env.now, {k: v for k, v in m.st.items() if v})
    if key is not None:
        _RUNS.put(key, out)
    return out


def _plan_cost(plan: Plan, hw: HWConfig) -> tuple[float, float]:
    """(cycles, pJ) the planner weighs: the closed form, with replayed cycles for a latency planner."""
    cycles, pj = plan_estimate(plan, hw)
    if hw.planner.objective == "latency":
        cycles = replay_cycles(plan, hw)
    return cycles, pj


def _plan(unit, hw: HWConfig, plans: dict, need_full_k: bool = False) -> Plan:
    key = (unit, need_full_k)
    p = plans.get(key)
    if p is None:
        try:
            if isinstance(unit, GemmUnit):
                hit = _shape(unit, hw, plans, need_full_k)
                p = plans.get(key) or gemm_plan(
                    unit, _with_arrays(hw, hit[2]), need_full_k, shape=hit[0]
                )  # a latency planner cached its own
            elif isinstance(unit, ChainUnit):
                p = plan_chain(
                    unit, lambda part: _plan(part, hw, plans, _needs_full_k(part)), hw.planner.objective == "latency"
                )
            elif isinstance(unit, AttentionUnit) and hw.planner.objective == "latency":
                p = _fastest_replay(
                    attention_blockings(unit, hw, ladder=True), lambda b: plan_attention(unit, hw, b), hw
                )
            elif isinstance(unit, AttentionUnit):
                p = plan_attention(unit, hw)
            else:
                p = plan_vector(unit, hw)
        except NoFit as e:
            if need_full_k:
                raise
            raise e.config_error() from None
        plans[key] = p
    return p


# ---- one step ---------------------------------------------------------------------------------------
class _StepOut:
    __slots__ = ("cycles", "ops_end", "unit_cycles", "st", "swap_st", "swap_wait", "swap_end", "events")


def _run_step(
    hw: HWConfig, us: _Units, memo: dict | None, swap: tuple | None, wplan: WeightPlan, record: bool
) -> _StepOut:
    """Simulate one step: its units in order on one ``Machine``, with the background swap when
    there is one; a unit met before (``memo``) with no swap running is replayed from its recorded
    cycles and counters. One piece on purpose: the SimPy process (``sequence``) and the swap's
    completion callback share the step's state through the closure, and splitting them would
    only pass that state around."""
    if swap is not None:
        closed_form_beside_swap(us)
    m = Machine(hw, record)
    env = m.env
    n = len(us.units)
    arrivals = [None] * n
    out = _StepOut()
    out.swap_end = 0
    if swap is not None:
        kind, pieces = swap
        if kind == "jit":
            arrivals = [env.event() if p else None for p in pieces]
            proc = m.start_swap(list(pieces), wplan.from_flash, wplan.resident, arrivals)
        else:
            proc = m.start_swap(list(pieces), wplan.from_flash, wplan.resident, [None] * len(pieces))

        def _mark_end(_ev):
            out.swap_end = env.now

        proc.callbacks.append(_mark_end)
    unit_cycles = [0] * n
    st = m.st
    waits = [0]

    def sequence():
        for i in range(n):
            ev = arrivals[i]
            if ev is not None and not ev.triggered:
                t = env.now
                yield ev
                waits[0] += env.now - t
            t0 = env.now
            unit = us.units[i]
            bg = m.background_active
            if memo is not None and not bg:
                hit = memo.get(unit)
                if hit is not None and (not record or hit[2] is not None):
                    if hit[0]:
                        yield env.timeout(hit[0])
                    for k, v in hit[1].items():
                        st[k] += v
                    if record:
                        lab = us.labels[i]
                        m.events.extend((e, t0 + a, t0 + b, lab + sfx) for e, a, b, sfx in hit[2])
                    unit_cycles[i] = hit[0]
                    continue
            if memo is not None and not bg and not record:  # alone on an idle machine (``unit_run``)
                cyc, delta = unit_run(us.plans[i], hw)
                memo[unit] = (cyc, delta, None)
                if cyc:
                    yield env.timeout(cyc)
                for k, v in delta.items():
                    st[k] += v
                unit_cycles[i] = cyc
                continue
            snap = dict(st)
            nev = len(m.events) if record else 0
            yield from m.run_unit(us.plans[i], us.labels[i])
            unit_cycles[i] = env.now - t0
            if memo is not None and not bg:
                delta = {k: st[k] - snap[k] for k in st if st[k] != snap[k]}
                lab = us.labels[i]
                evs = [(e, a - t0, b - t0, x[len(lab) :]) for e, a, b, x in m.events[nev:]] if record else None
                memo[unit] = (unit_cycles[i], delta, evs)
        out.ops_end = env.now

    env.process(sequence())
    env.run()
    out.cycles = env.now
    out.unit_cycles = unit_cycles
    out.st = st
    out.swap_st = m.swap_st
    out.swap_wait = waits[0]
    out.events = m.events
    return out


def closed_form_beside_swap(us: _Units) -> None:
    """Refuse a step that swaps weights in the background beside a GEMM in closed form
    (``gemm_closed_form``): its numbers are those of the GEMM with the machine to itself."""
    for plan, label in zip(us.plans, us.labels):
        if plan.closed:
            raise ConfigError(
                "workload",
                label,
                f"a GEMM of at most {bounded.MAX_GEMM_TILES:,} tiles in a step that swaps weights in the "
                "background (this one is simulated in closed form, which assumes the machine to itself)",
            )


# ---- process-level caches --------------------------------------------------------------------------
class _LRU:
    """A bounded mapping that drops the least recently used entry (a sweep worker meets endless
    hardware points; it must not grow without end)."""

    def __init__(self, maxsize: int):
        self.maxsize, self.d = maxsize, OrderedDict()
        self.lock = threading.Lock()  # a Dask worker may run several simulations in threads

    def get(self, key):
        with self.lock:
            v = self.d.get(key)
            if v is not None:
                self.d.move_to_end(key)
            return v

    def put(self, key, value) -> None:
        with self.lock:
            self.d[key] = value
            self.d.move_to_end(key)
            if len(self.d) > self.maxsize:
                self.d.popitem(last=False)

    def __len__(self) -> int:
        return len(self.d)


class _Scoped:
    """One call's view of a process-level cache: keys prefixed with what the entry depends on
    beyond the key (the hardware's content hash, prefetch policy, weight residency)."""

    def __init__(self, lru: _LRU | None, prefix: tuple):
        self.lru, self.prefix = (lru if lru is not None else _LRU(1 << 62)), prefix
        self.added = 0
        self.used: set = set()

    def get(self, key):
        self.used.add(key)
        return self.lru.get((self.prefix, key))

    def __setitem__(self, key, value) -> None:
        self.added += 1
        self.used.add(key)
        self.lru.put((self.prefix, key), value)

    def __len__(self) -> int:
        return len(self.used)


# Sizes: a sweep worker runs all recipes of one hardware point in a row (codesign/sweep.py), so the
# caches need to hold about one hardware point's worth (tens of distinct units per recipe family).
_TRACES = _LRU(32)  # id(trace) -> _TraceInfo
_PLANS = _LRU(4096)  # (hw hash, resident), (unit, need_full_k) -> Plan
_UNIT_RUNS = _LRU(8192)  # (hw hash, prefetch, resident), unit -> (cycles, counter deltas, None)
_UNIT_SETS = _LRU(64)  # (hw hash, step signature, resident) -> _Units
_STEPS = _LRU(512)  # (hw hash, prefetch, step signature, resident, from_flash, swap) -> _StepOut
_RUNS = _LRU(2048)  # (engine.unit_params, plan content) -> (cycles, counter deltas): ``unit_run``; its keys
# hold the plans' tile lists (measured: 2,561 runs after 200 sweep chips, +164 MB RSS), so it is kept small
_FRESH = threading.local()  # .on while a ``simulate(memo=False)`` runs in this thread: keep nothing


def clear_cache(traces: bool = True) -> None:
    """Forget every cached plan, unit and step, and (``traces``) trace analysis: the next call
    starts cold (``traces=False``: as for a new chip in a sweep, whose traces are already known)."""
    for c in ((_TRACES,) if traces else ()) + (_PLANS, _UNIT_RUNS, _UNIT_SETS, _STEPS, _RUNS):
        c.d.clear()


def cache_info() -> dict:
    return {
        "traces": len(_TRACES),
        "plans": len(_PLANS),
        "unit_runs": len(_UNIT_RUNS),
        "unit_sets": len(_UNIT_SETS),
        "steps": len(_STEPS),
        "runs": len(_RUNS),
    }


def hw_hash(hw: HWConfig) -> str:
    """Content hash of a hardware config: ``repr`` of the frozen dataclasses spells every field
    (floats exactly), so equal hashes mean equal configs."""
    return hashlib.sha256(repr(hw).encode()).hexdigest()


class _TraceInfo:
    """What simulate() reads from a trace regardless of the hardware: ops grouped by step, step
    signatures, weight sets. Computed once per trace object (a sweep simulates one trace on many
    chips); ``ops`` keeps the op objects so a list changed in place is noticed."""

    __slots__ = (
        "trace",
        "ops",
        "meta",
        "by_step",
        "steps",
        "step_sig",
        "reps",
        "step_set",
        "sig_keys",
        "dyn",
        "sets",
        "tables",
    )

    def still_valid(self, trace: Trace) -> bool:
        ops = trace.ops
        return (
            trace is self.trace
            and len(ops) == len(self.ops)
            and trace.meta == self.meta
            and all(map(operator.is_, ops, self.ops))
        )


def _analyse(trace: Trace) -> _TraceInfo:
    if getattr(trace, "version", None) != TRACE_VERSION:
        raise ConfigError(
            "trace_version", getattr(trace, "version", None), f"{TRACE_VERSION} (this build's trace format)"
        )
    if not trace.ops:
        raise ConfigError("trace", "no ops", "a trace with at least one op")
    # group ops by step; a step's signature is its op list (names included: they decide fusion)
    by_step: dict[int, list] = {}
    for op in trace.ops:
        by_step.setdefault(op.step, []).append(op)
    steps = sorted(by_step)
    if steps[0] < 0 or steps != list(range(len(steps))):
        raise ConfigError(
            "trace op step", steps[0] if steps[0] < 0 else len(steps), "steps numbered 0..num_steps-1 without gaps"
        )
    sig_ids: dict[tuple, int] = {}
    step_sig: list[int] = []
    reps: list[int] = []  # a representative step per signature
    step_set: list[int] = []
    sig_keys: list[str] = []
    for s in steps:
        ops = by_step[s]
        # the set index does not change timing (transitions are keyed separately); whether an op
        # carries quantized weights does
        keys = (tuple(map(_OP_KEY, ops)), tuple(op.weight_set >= 0 for op in ops))
        sid = sig_ids.get(keys)
        if sid is None:
            sid = sig_ids[keys] = len(reps)
            reps.append(s)
            # content hash of the signature: the same op list in another recipe's trace shares it
            sig_keys.append(hashlib.sha256(repr(keys).encode()).hexdigest())
        step_sig.append(sid)
        step_set.append(next((op.weight_set for op in ops if op.weight_set >= 0), -1))
    info = _TraceInfo()
    info.trace, info.ops, info.meta = trace, tuple(trace.ops), dict(trace.meta)
    info.by_step, info.steps, info.step_sig, info.reps, info.step_set = by_step, steps, step_sig, reps, step_set
    info.sig_keys = sig_keys
    info.dyn = [any(op.kind in ("dyn_stats", "dyn_rescale") for op in by_step[s]) for s in reps]
    info.sets = weight_sets(trace)
    info.tables = trace.table_storage_bytes()
    return info


def _trace_info(trace: Trace, use_cache: bool) -> _TraceInfo:
    if not use_cache:
        return _analyse(trace)
    info = _TRACES.get(id(trace))
    if info is None or not info.still_valid(trace):
        info = _analyse(trace)
        _TRACES.put(id(trace), info)  # holds the trace, so its id is not reused while cached
    return info


# ---- the whole run ----------------------------------------------------------------------------------
def simulate(trace: Trace, hw: HWConfig, prefetch: str = "jit", timeline: bool = False, memo: bool = True) -> SimResult:
    """Latency, energy, area, storage and swap costs of running ``trace`` on ``hw``.

    ``memo=True`` reuses, within the call and across calls in this process, whatever depends only
    on what it is keyed by (trace analysis; plans, unit runs, unit lists and whole steps keyed by
    the hardware's content hash, the prefetch policy and weight residency; a unit's run alone by
    its plan and ``engine.unit_params``): the numbers are those of
    ``memo=False``, which computes everything afresh, bit for bit (tests/hwsim/test_hwsim_model.py).
    """
    if memo:
        return _simulate(trace, hw, prefetch, timeline, memo)
    was = getattr(_FRESH, "on", False)
    _FRESH.on = True  # nor the runs a planner's replays share (``unit_run``)
    try:
        return _simulate(trace, hw, prefetch, timeline, memo)
    finally:
        _FRESH.on = was


def _simulate(trace: Trace, hw: HWConfig, prefetch: str, timeline: bool, memo: bool) -> SimResult:
    info = _trace_info(trace, memo)
    if not hw.vector.online_reduction:
        for sid in range(len(info.reps)):
            if info.dyn[sid]:
                raise ConfigError(
                    "recipe",
                    trace.meta.get("recipe", "dynamic"),
                    f"a static recipe: hardware {hw.name} has no on-line reduction unit "
                    "for dynamic quantization (vector.online_reduction: false)",
                )
    _check_dram_first(info, hw)
    r = _Run()
    r.trace, r.hw, r.prefetch, r.memo, r.info = trace, hw, prefetch, memo, info
    r.wplan = plan_weights(trace, hw, prefetch, info.sets, info.tables)
    r.hkey = hw_hash(hw)
    r.plans = _Scoped(_PLANS if memo else None, (r.hkey, r.wplan.resident))
    r.units = []
    for sid, s in enumerate(info.reps):
        ukey = (r.hkey, info.sig_keys[sid], r.wplan.resident)
        us = _UNIT_SETS.get(ukey) if memo else None
        if us is None:
            us = _Units(info.by_step[s], hw, r.wplan, r.plans)
            if memo:
                _UNIT_SETS.put(ukey, us)
        r.units.append(us)
    _check_dram(r.units, hw)
    r.swaps = _swaps(r)
    r.record_steps = _record_steps(r) if timeline else set()
    _run_steps(r)
    return _result(r)


class _Run:
    """What one ``simulate`` call has gathered, handed from stage to stage: the trace analysis,
    the weight plan, each distinct step's units, the swaps, and each step's run (``outs``) with its
    swap-free twin (``twins``: the same step without the swap, to tell what the swap added)."""

    trace: Trace
    hw: HWConfig
    prefetch: str
    memo: bool
    info: _TraceInfo
    wplan: WeightPlan
    hkey: str
    plans: _Scoped
    units: list
    swaps: list
    record_steps: set
    outs: list
    twins: list
    unit_memo: _Scoped | None
    simulated_steps: int


def _swaps(r: _Run) -> list:
    """Each step's weight-set transition: None, ("jit", bytes per unit of this step's set, coming
    in as the step runs) or ("early", bytes per unit of the next step's set, prefetched now)."""
    wplan, info, units = r.wplan, r.info, r.units
    step_set, step_sig, n = info.step_set, info.step_sig, len(info.steps)
    out = []
    for s in info.steps:
        swap = None
        if wplan.swaps and wplan.prefetch_used == "jit":
            if s > 0 and step_set[s] != step_set[s - 1]:
                swap = ("jit", tuple(units[step_sig[s]].set_bytes))
        elif wplan.swaps and s + 1 < n and step_set[s + 1] != step_set[s]:
            swap = ("early", tuple(b for b in units[step_sig[s + 1]].set_bytes if b))
        out.append(swap)
    return out


def _record_steps(r: _Run) -> set:
    """Steps whose engine events the timeline shows: the first, and the first swap with its neighbour."""
    steps = {0}
    first = next((s for s in r.info.steps if r.swaps[s] is not None), None)
    if first is not None:
        steps.update({first, first + 1} if r.wplan.prefetch_used == "early" else {first - 1, first})
    return {s for s in steps if 0 <= s < len(r.info.steps)}


def _run_steps(r: _Run) -> None:
    """Run every step (a step with a swap also without it, its twin), each distinct (op list,
    swap) once: from this call's memo, the process-level cache, or simulated."""
    info, wplan, memo, hkey, prefetch = r.info, r.wplan, r.memo, r.hkey, r.prefetch
    r.unit_memo = _Scoped(_UNIT_RUNS, (hkey, prefetch, wplan.resident)) if memo else None
    rec_memo: dict | None = {} if memo else None
    step_memo: dict = {}
    r.outs, r.twins, r.simulated_steps = [], [], 0

    def run(s: int, swap, record: bool) -> _StepOut:
        sig = info.step_sig[s]
        key = (sig, swap)
        # where swaps read from matters only to a step that swaps
        gkey = (hkey, prefetch, info.sig_keys[sig], wplan.resident, wplan.from_flash if swap else None, swap)
        if memo and not record:
            o = step_memo.get(key) or _STEPS.get(gkey)
            if o is not None:
                step_memo[key] = o
                return o
        r.simulated_steps += 1
        o = _run_step(r.hw, r.units[sig], rec_memo if record else r.unit_memo, swap, wplan, record)
        if memo and not record:
            step_memo[key] = o
            _STEPS.put(gkey, o)
        return o

    for s in info.steps:
        o = run(s, r.swaps[s], s in r.record_steps)
        r.outs.append(o)
        r.twins.append(run(s, None, False) if r.swaps[s] is not None else o)


def _check_dram_first(info: _TraceInfo, hw: HWConfig) -> None:
    """``_check_dram`` before any planning, from the ops alone: a step's first op's main input and
    its last op's output are read and written by a unit whatever the schedule fuses (a step of
    one op: both, by one unit), so each is a lower bound on some unit's activation bytes. A
    workload far beyond DRAM is refused at once, not after its GEMMs were planned."""
    for s in info.reps:
        ops = info.by_step[s]
        first, last = ops[0], ops[-1]
        if len(ops) == 1:
            need, label = max(1, first.input_bytes) + max(1, first.output_bytes), first.name
        else:
            need, label = max((first.input_bytes - side_bytes(first), first.name), (last.output_bytes, last.name))
        _refuse_dram(need, label, hw)


def _refuse_dram(act: int, label: str, hw: HWConfig) -> None:
    if act > hw.dram.capacity_bytes - hw.dram.weight_capacity_bytes:
        raise ConfigError(
            "dram.capacity_bytes",
            hw.dram.capacity_bytes,
            f"room for {label}'s {act} activation bytes beside "
            f"dram.weight_capacity_bytes={hw.dram.weight_capacity_bytes}",
        )


def _check_dram(units, hw: HWConfig) -> None:
    """Each unit's activations (what it reads and writes in DRAM) must fit beside the weights."""
    for us in units:
        for unit, label in zip(us.units, us.labels):
            if isinstance(unit, AttentionUnit):
                act = unit.q_bytes + unit.k_bytes + unit.v_bytes + unit.out_bytes
            elif isinstance(unit, GemmUnit):
                act = unit.a_bytes + (unit.b_bytes if unit.b_per_item else 0) + unit.out_bytes
            elif isinstance(unit, ChainUnit):
                act = unit.first.a_bytes + unit.second.out_bytes
            else:
                act = unit.in_bytes + unit.out_bytes
            _refuse_dram(act, label, hw)


def unit_bound_cycles(unit, hw: HWConfig, plan: Plan) -> int:
    """Roofline lower bound of one unit: its busiest resource working flat out, alone."""
    cpb = transfer_cycles_per_byte(hw)
    if isinstance(unit, AttentionUnit):
        peak = hw.peak_macs_per_cycle
        compute = math.ceil(
            unit.batch * unit.m * unit.n * unit.d / peak[unit.precision_qk]
            + unit.batch * unit.m * unit.n * unit.dv / peak[unit.precision_av]
        )
        min_bytes = unit.q_bytes + unit.k_bytes + unit.v_bytes + unit.out_bytes
        vec = vector_cycles(hw, "softmax", unit.batch * unit.m * unit.n)
    elif isinstance(unit, (GemmUnit, ChainUnit)):
        gemms = (unit.first, unit.second) if isinstance(unit, ChainUnit) else (unit,)
        compute = math.ceil(sum(g.macs / hw.peak_macs_per_cycle[g.precision] for g in gemms))
        min_bytes = vec = 0
        for i, g in enumerate(gemms):  # a chain's tensor between its GEMMs stays in SRAM
            min_bytes += (
                g.a_bytes * (g.dram_in and i == 0)
                + (0 if g.b_resident else g.b_bytes)
                + g.out_bytes * (g.dram_out and i == len(gemms) - 1)
                + g.pre_weight_bytes
                + g.res_bytes
            )
            if g.pre:
                vec += vector_cycles(hw, g.pre, g.batch * g.m * g.k, g.batch * g.m)
            if g.post:
                vec += vector_cycles(hw, g.post, g.batch * g.m * g.n)
    else:
        compute = 0
        min_bytes = (
            (unit.in_bytes if unit.dram_in else unit.side_bytes) + unit.out_bytes * unit.dram_out + unit.weight_bytes
        )
        vec = vector_cycles(hw, unit.kind, unit.elements, unit.rows) if unit.elements else 0
    if not plan.tiles:
        return 0
    return max(compute, vec, math.floor(min_bytes * cpb))


def _event_counts(r: _Run) -> tuple[dict, int, int, int]:
    """The run's integer event counts (each step's plans' static counts + the swaps' traffic),
    the bytes and number of swaps, and the video's compulsory DRAM traffic (lower bound + swaps)."""
    wplan, units, step_sig = r.wplan, r.units, r.info.step_sig
    plan_counts_per_sig = []
    for us in units:
        c: dict[str, int] = {}
        for p in us.plans:
            for k, v in p.counts.items():
                c[k] = c.get(k, 0) + v
        plan_counts_per_sig.append(c)
    counts: dict[str, int] = {}
    swap_bytes = swap_count = bound_bytes = 0
    for s, swap in enumerate(r.swaps):
        bound_bytes += sum(units[step_sig[s]].lower)
        for k, v in plan_counts_per_sig[step_sig[s]].items():
            counts[k] = counts.get(k, 0) + v
        if swap is None:
            continue
        b = sum(swap[1])
        swap_bytes += b
        swap_count += 1
        if wplan.from_flash:
            counts["flash_rd"] = counts.get("flash_rd", 0) + b
            counts["dram_wr"] = counts.get("dram_wr", 0) + b
        if wplan.resident:
            counts["dram_rd"] = counts.get("dram_rd", 0) + b
            counts["sram_wr"] = counts.get("sram_wr", 0) + b
        bound_bytes += b * (wplan.from_flash + wplan.resident)
    return counts, swap_bytes, swap_count, bound_bytes


_STALL_KEYS = ("crit_mac", "crit_vector", "wait_memory", "wait_vector", "wait_store", "tail")
_BUSY_KEYS = ("mac_busy", "vector_busy", "dram_busy", "dma_busy", "flash_busy")


def _swap_times(r: _Run) -> dict:
    """Cycles the swaps added to the video (``exposed``: each swapping step against its swap-free
    twin), split into the layers' waits for weights still in flight (``wait``: only ``jit`` waits)
    and the rest (``contention``: DRAM and DMA time the swap takes from the layers), and the cycles
    the swap copies ran (``duration``)."""
    out = dict.fromkeys(("exposed", "wait", "contention", "duration"), 0)
    for o, tw, swap in zip(r.outs, r.twins, r.swaps):
        if swap is None:
            continue
        exposed = max(0, o.cycles - tw.cycles)
        wait = min(exposed, o.swap_wait)
        out["exposed"] += exposed
        out["wait"] += wait
        out["contention"] += exposed - wait
        out["duration"] += o.swap_end
    return out


def _stalls(r: _Run, counts: dict, total_cycles: int, swap: dict) -> tuple[dict, dict]:
    """Where the time went (seconds; each swapping step's twin decomposes exactly, the swap adds
    the difference) and how busy each engine was."""
    hw = r.hw
    freq = hw.clock.freq_hz
    agg = dict.fromkeys(_STALL_KEYS + _BUSY_KEYS, 0)
    for o, tw in zip(r.outs, r.twins):
        for k in _STALL_KEYS:
            agg[k] += tw.st.get(k, 0)
        for k in _BUSY_KEYS:
            agg[k] += o.st.get(k, 0) + o.swap_st.get(k, 0)
    ideal = sum(counts.get(f"macs_{p}", 0) / hw.peak_macs_per_cycle[p] for p in ("int8", "int4", "fp16"))
    stall = {
        "mac_compute": ideal / freq,
        "mac_fill_drain": (agg["crit_mac"] - ideal) / freq,
        "vector_ops": agg["crit_vector"] / freq,
        "memory": (agg["wait_memory"] + agg["tail"]) / freq,
        "vector_stage": agg["wait_vector"] / freq,
        "store": agg["wait_store"] / freq,
        "swap": swap["exposed"] / freq,
    }
    t = total_cycles or 1
    util = {
        "mac_useful": ideal / t if total_cycles else 0.0,
        "mac_arrays": agg["mac_busy"] / t if total_cycles else 0.0,
        "vector": agg["vector_busy"] / t if total_cycles else 0.0,
        "dram": agg["dram_busy"] / t if total_cycles else 0.0,
        "dma": agg["dma_busy"] / (t * hw.dma.engines) if total_cycles else 0.0,
        "flash": agg["flash_busy"] / t if total_cycles else 0.0,
    }
    return stall, util


def _per_op(r: _Run) -> list:
    """One row per op of step 0: its unit's time, roofline bound, closed-form estimate, DRAM bytes
    and their lower bound on the op that leads the unit; ``fused_into`` on the others."""
    hw, freq = r.hw, r.hw.clock.freq_hz
    us0 = r.units[r.info.step_sig[0]]
    o0 = r.outs[0]
    bounds = [unit_bound_cycles(u, hw, p) for u, p in zip(us0.units, us0.plans)]
    rows = []
    for op, ui, prim in zip(r.info.by_step[0], us0.op_unit, us0.primary):
        pc = us0.plans[ui].counts
        unit = us0.units[ui]
        rows.append(
            {
                "name": op.name,
                "kind": op.kind,
                "unit": ui,
                "engine": us0.plans[ui].engine,
                "latency_s": o0.unit_cycles[ui] / freq if prim else 0.0,
                "bound_s": bounds[ui] / freq if prim else 0.0,
                "estimate_s": plan_estimate(us0.plans[ui], us0.hw)[0] / freq if prim else 0.0,
                "macs": getattr(unit, "macs", 0) if prim else 0,
                "dram_bytes": pc.get("dram_rd", 0) + pc.get("dram_wr", 0) if prim else 0,
                "dram_lower_bound_bytes": sum(us0.lower[j] for j in us0.covered[ui]) if prim else 0,
                "precision": getattr(unit, "precision", getattr(unit, "precision_qk", "fp16")),
                "fused_into": "" if prim else us0.labels[ui],
            }
        )
    return rows


def _result(r: _Run) -> SimResult:
    """The SimResult of a finished run: totals, energy from the counts, stalls, per-op rows (most
    of its length is the result's field list)."""
    hw, wplan, trace = r.hw, r.wplan, r.trace
    freq = hw.clock.freq_hz
    total_cycles = sum(o.cycles for o in r.outs)
    latency_s = total_cycles / freq
    counts, swap_bytes, swap_count, bound_bytes = _event_counts(r)
    area = area_breakdown_mm2(hw)
    area_mm2 = sum(area.values())
    energy = energy_breakdown_j(hw, counts, latency_s, area_mm2)
    swap = _swap_times(r)
    stall, util = _stalls(r, counts, total_cycles, swap)
    dram_bytes = counts.get("dram_rd", 0) + counts.get("dram_wr", 0)
    us0 = r.units[r.info.step_sig[0]]
    tl = {}
    for s in sorted(r.record_steps):
        tl[s] = [(e, a / freq, b / freq, lab) for e, a, b, lab in (r.outs[s].events or [])]
    return SimResult(
        sim_version=SIM_VERSION,
        hw=hw.name,
        workload=str(trace.meta.get("workload", "")),
        recipe=str(trace.meta.get("recipe", "fp16")),
        prefetch=r.prefetch,
        prefetch_used=wplan.prefetch_used,
        weight_placement=wplan.placement,
        num_steps=len(r.outs),
        latency_s=latency_s,
        latency_per_step_s=[o.cycles / freq for o in r.outs],
        energy_j=sum(energy.values()),
        energy_breakdown_j=energy,
        area_mm2=area_mm2,
        area_breakdown_mm2=area,
        storage_bytes=wplan.storage_bytes,
        float_weight_bytes=wplan.float_bytes,
        weight_set_bytes=max(wplan.set_bytes.values(), default=0),
        num_weight_sets=len(wplan.set_bytes),
        swap_count=swap_count,
        swap_bytes=swap_bytes,
        swap_stall_s=swap["exposed"] / freq,
        swap_hidden_s=max(0, swap["duration"] - swap["exposed"]) / freq,
        swap_wait_s=swap["wait"] / freq,
        swap_contention_s=swap["contention"] / freq,
        initial_load_bytes=wplan.initial_load_bytes,
        initial_load_s=wplan.initial_load_bytes / hw.flash.bandwidth_bytes_per_s,
        stall_breakdown_s=stall,
        utilisation=util,
        macs=sum(counts.get(f"macs_{p}", 0) for p in ("int8", "int4", "fp16")),
        dram_bytes=dram_bytes,
        flash_bytes=counts.get("flash_rd", 0),
        sram_bytes=counts.get("sram_rd", 0) + counts.get("sram_wr", 0),
        per_op=_per_op(r),
        dram_lower_bound_bytes=bound_bytes,
        dram_over_bound=dram_bytes / bound_bytes if bound_bytes else 0.0,
        memo={
            "distinct_steps": len(r.info.reps),
            "steps_simulated": r.simulated_steps,
            "units_per_step": len(us0.units),
            "units_simulated": r.unit_memo.added if r.unit_memo is not None else None,
            "plans": len({id(p) for us in r.units for p in us.plans}),
        },
        note=wplan.note,
        timeline=tl,
    )
