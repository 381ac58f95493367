"""Execution units and their tile plans: how an op (or a GEMM with its fused vector stages) is cut
into tiles that fit the SRAM buffers, in which order they stream, and how many cycles each tile
takes on the MAC arrays (SCALE-Sim's systolic formula) or the vector unit.

A plan is a pure function of the unit and the hardware, so it is computed once per distinct unit
and reused; the SimPy engine (``engine.py``) replays its tiles through DMA, MAC arrays and vector
unit to find the timing under contention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hwsim.bounded import check_gemm_tiles, check_vector_tiles
from hwsim.config import DATAFLOWS, HWConfig
from hwsim.energy import energy_breakdown_j
from hwsim.horowitz import VECTOR_LANE_CYCLE_PJ_45NM, epilogue_pj_45nm
from hwsim.schedule import ROW_KINDS
from workloads.errors import ConfigError

FP16_BYTES = 2
PSUM_BYTES = 4  # int32 / fp32 partial sums kept in SRAM when K is split


def systolic_dims(m: int, k: int, n: int, dataflow: str) -> tuple[int, int, int, int]:
    """``(Sr, Sc, T, fill)`` of a ``[m,k] x [k,n]`` GEMM under a dataflow, in SCALE-Sim v3's terms
    (``scalesim/compute/systolic_compute_{os,ws,is}.py``): the operand dimension mapped on the array
    rows (Sr) and columns (Sc), the one streamed through it (T), and the cycles spent loading the
    stationary operand into the array before a fold streams (R for WS and IS, none for OS).

    - output stationary: outputs pinned to PEs, Sr = m (output rows), Sc = n, T = k;
    - weight stationary: weights pinned, Sr = k, Sc = n, T = m;
    - input stationary: inputs pinned, Sr = k, Sc = m, T = n.
    """
    if dataflow == "output_stationary":
        return m, n, k, 0
    if dataflow == "weight_stationary":
        return k, n, m, 1
    if dataflow == "input_stationary":
        return k, m, n, 1
    raise ConfigError("mac.dataflow", dataflow, " or ".join(DATAFLOWS))


def systolic_cycles(m: int, k: int, n: int, rows: int, cols: int, dataflow: str, rate: float = 1.0) -> int:
    """Stall-free cycles of one ``[m,k] x [k,n]`` GEMM on one ``rows x cols`` systolic array, exactly
    as SCALE-Sim v3 counts them (the rows of its demand matrices; tested against every row of
    ``hwsim/data/scalesim_v3_cycles.csv``, SCALE-Sim's own runs):

    - output stationary: ``ceil(M/R) * ceil(N/C) * (K + R + C - 2)``;
    - weight stationary: ``ceil(K/R) * ceil(N/C) * (M + 2R + C - 2)``;
    - input stationary:  ``ceil(K/R) * ceil(M/C) * (N + 2R + C - 2)``.

    Each fold streams T operand vectors, skewed over the rows (R - 1 cycles) and drained over the
    columns (C - 1); WS and IS first load the stationary tile into the array (R cycles). A partial
    fold (a dimension not a multiple of R or C) costs a full fold: SCALE-Sim pads it with idle PEs.
    SCALE-Sim's COMPUTE_REPORT prints the index of the last cycle (counted from 0), one less.

    ``rate`` = MACs one PE retires per cycle at the precision (int4 packed 2, fp16 0.5): it shortens
    the streamed dimension, ``T = ceil(T / rate)``; fill, skew and drain do not change (an int4 pair
    shares one PE's pipeline slot, an FP16 MAC occupies it two cycles).
    """
    sr, sc, t, fill = systolic_dims(m, k, n, dataflow)
    t_eff = math.ceil(t / rate)
    folds = math.ceil(sr / rows) * math.ceil(sc / cols)
    return folds * (t_eff + (1 + fill) * rows + cols - 2)


def precision_of(w_bits: int, a_bits: int) -> str:
    """MAC mode: int4 only when both operands fit 4 bits; W4A8 / W6A6 run on the int8 datapath."""
    if w_bits <= 4 and a_bits <= 4:
        return "int4"
    if w_bits <= 8 and a_bits <= 8:
        return "int8"
    return "fp16"


# ---- units ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GemmUnit:
    """A GEMM ``batch x [m,k] x [k,n]`` with optional fused vector stages on its input and output.

    ``pre``: ``smooth_mul`` (static SmoothQuant multiply + quantize) or ``dyn_stats`` (per-row
    abs-max, reciprocal, quantize: the whole row must sit in SRAM) applied to each input tile
    before it enters the arrays; the input then arrives from DRAM in FP16. ``post``: ``dyn_rescale``
    (per-row dynamic scale) applied to each output tile before it is written back.
    """

    batch: int
    m: int
    k: int
    n: int
    precision: str
    a_bytes: int  # A operand bytes read from DRAM (all of it, once)
    b_bytes: int  # B operand: weights (linear/conv) or the second activation (attention matmuls)
    out_bytes: int
    b_per_item: bool  # B differs per batch item (attention) vs shared weights
    b_resident: bool  # weights already resident in SRAM: not loaded per op
    a_extra_sram_bpe: float = (
        0.0  # SRAM bytes per A element of the quantized copy a pre-stage writes beside the FP16 input
    )
    pre: str = ""
    post: str = ""
    pre_weight_bytes: int = 0  # SmoothQuant factors of a fused smooth_mul (loaded with the first B tile)
    # schedule (hwsim/schedule.py): ``pre`` / ``post`` may be "+"-joined chains of vector stages
    # (e.g. "layernorm+modulate", "gelu+smooth_mul", "dyn_rescale+elementwise")
    res_bytes: int = 0  # second operand of a fused epilogue add (the residual), read per output tile
    dram_in: bool = True  # False: A is handed over in SRAM by the previous unit (not read from DRAM)
    dram_out: bool = True  # False: the output stays in SRAM for the next unit (not written to DRAM)
    held_bytes: int = 0  # activation-buffer bytes a tensor handed over in SRAM holds during this unit
    epilogue: str = ""  # output conversion on the arrays' epilogue lanes: horowitz.EPILOGUE_PJ_45NM's kinds
    dequant_elements: int = 0  # operand elements converted from integer codes to FP16 at the array input

    @property
    def macs(self) -> int:
        return self.batch * self.m * self.k * self.n


@dataclass(frozen=True)
class VectorOpUnit:
    """A standalone vector-unit op (softmax, norms, modulation, activations, unfused quant ops)."""

    kind: str
    elements: int
    in_bytes: int
    out_bytes: int
    weight_bytes: int = 0  # per-channel factors loaded once (smooth_mul)
    rows: int = 0  # rows of a dyn_stats op (one reciprocal each)
    side_bytes: int = 0  # part of in_bytes that is not the producer's tensor (a residual, a table)
    dram_in: bool = True  # False: the main input is handed over in SRAM (only side_bytes are read)
    dram_out: bool = True  # False: the output stays in SRAM for the next unit
    held_bytes: int = 0  # activation-buffer bytes a tensor handed over in SRAM holds during this unit


def tile_buffer_bytes(u, hw: HWConfig) -> int:
    """The activation buffer a unit's tiles may use: what a tensor kept in SRAM for a hand-over
    (the unit's own output growing, or its input waiting) does not hold."""
    return hw.sram.activation_buffer_bytes - getattr(u, "held_bytes", 0)


# Vector-unit work per element, as (function, count) pairs over vector.cycles_per_element.
# Quantization stages count the steps the emulator's datapath performs (quantmodel/emulator.py,
# fixedpoint.ActQuantizer: a float32 multiply by the scale's prepared reciprocal, then round half to
# even + saturate), one lane operation each: the counts are ours (assumption), the datapath is the
# emulator's, bit for bit. A vector op that quantizes what it writes (trace ``epilogue="quant"``)
# runs the "quantize" stage after its own; one that reads integer codes as floats (trace
# ``dequant_elements``) runs "dequant" first (``op_stages``). An asymmetric STATIC recipe adds nothing
# here: its zero-point correction ``-z * colsum(W_q)`` is folded into the int32 bias when the artifact is
# built, so its trace (and cost) equals the symmetric one (tests/hwsim/test_zero_point_cost.py).
VECTOR_WORK = {
    "elementwise": (("basic", 1),),  # residual add / gated add / positional add
    "modulate": (("basic", 2),),  # x * (1 + scale) + shift
    "layernorm": (("basic", 4),),  # sum, sum of squares, subtract, scale (one rsqrt per row: negligible)
    "softmax": (("basic", 3), ("exp", 1)),  # max, exp, sum, multiply by reciprocal
    "gelu": (("gelu", 1),),
    "silu": (("basic", 2), ("exp", 1)),  # x * 1/(1+exp(-x))
    "embedding": (("exp", 1),),  # sin/cos on the transcendental path
    "quantize": (("basic", 2),),  # static: multiply by 1/scale, round half to even + saturate to int8
    "dequant": (("basic", 2),),  # static int16 codes -> float, multiply by the scale
    "smooth_mul": (("basic", 3),),  # multiply by the FP16 factor 1/s, then quantize as above (2)
    "dyn_stats": (("basic", 3),),  # |x| max-reduce, multiply by reciprocal, round/clip
    "dyn_rescale": (("basic", 3),),  # int32 -> float, x row scale, x column scale (FP16 on write)
    # asymmetric dynamic quantization (trace epilogue "zero_point"; assumption: one lane op each):
    "zp_stats": (("basic", 2),),  # a min-reduce beside the max-reduce, + zero point per element
    "zp_correct": (("basic", 1),),  # acc - z_row * colsum(W): one multiply-add per output element
    "smooth_scale": (("basic", 1),),  # dynamic channel balancing: x * (1/s) in FP16, no quantize
}
DYN_KINDS = ("dyn_stats", "dyn_rescale", "zp_stats", "zp_correct")


def op_stages(op) -> str:
    """The vector stages a trace op runs: its kind, with the conversions the trace gives it."""
    kind = op.kind
    if kind == "smooth_mul" and getattr(op, "out_bits", 0) == 16:  # FP16 out: the multiply alone
        kind = "smooth_scale"
    if getattr(op, "epilogue", "") == "zero_point":  # asymmetric dynamic: its extra vector work
        kind += "+zp_stats" if kind == "dyn_stats" else "+zp_correct"
    if getattr(op, "dequant_elements", 0):
        kind = "dequant+" + kind
    if getattr(op, "epilogue", "") == "quant":
        kind += "+quantize"
    return kind


# The conversion lanes' energies per element are Horowitz's (``horowitz.EPILOGUE_PJ_45NM``).
# The lanes take one element per array column (output) or row (input) per cycle (assumption). An
# output-stationary fold of R x C outputs takes K + R + C - 2 >= R cycles, a weight- or input-
# stationary fold of at most (streamed T) x C outputs takes T + 2R + C - 2 > T cycles: the lanes
# are never slower than the arrays, so they add energy and no latency (they run alongside).


def epilogue_counts(u) -> dict:
    """Energy-only events of a GEMM or attention unit's conversions (``epi_<kind>``: elements)."""
    out = {}
    if u.epilogue:
        out["epi_" + u.epilogue] = u.batch * u.m * (u.n if isinstance(u, GemmUnit) else u.dv)
    if u.dequant_elements:
        out["epi_dequant"] = u.dequant_elements
    return out


def vector_cycles_per_element(hw: HWConfig, kind: str) -> float:
    cpe = hw.vector.cycles_per_element
    return sum(cpe[f] * n for f, n in VECTOR_WORK[kind])


def vector_cycles(hw: HWConfig, kind: str, elements: int, rows: int = 0) -> int:
    """Cycles of a vector op or a "+"-joined chain of stages over ``elements`` (``rows`` reciprocals
    when the chain computes dynamic-quant statistics)."""
    vec, dyn = stage_cycles_per_element(hw, kind)
    c = math.ceil(elements * (vec + dyn) / hw.vector.lanes)
    if "dyn_stats" in stages_of(kind):
        c += rows * hw.vector.reciprocal_cycles_per_row
    return c


def stages_of(chain: str) -> tuple[str, ...]:
    """The vector stages of a fused chain ("layernorm+modulate" -> ("layernorm", "modulate"))."""
    return tuple(chain.split("+")) if chain else ()


def stage_cycles_per_element(hw: HWConfig, chain: str) -> tuple[float, float]:
    """(ordinary vector, dynamic-quant) cycles per element of a chain: the energy model charges
    the two to different hardware (``energy.py``: vec_cycles, dyn_cycles)."""
    vec = dyn = 0.0
    for s in stages_of(chain):
        c = vector_cycles_per_element(hw, s)
        if s in DYN_KINDS:
            dyn += c
        else:
            vec += c
    return vec, dyn


# ---- plans ----------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Tiles of one unit, as tuples for a fast replay:
    ``(a_load, a_get, a_put, b_load, b_get, b_put, pre_cycles, cycles, out_alloc, out_store, post_cycles,
    out_done)``: bytes DMA'd from DRAM, SRAM reserved before the load and released after the tile's
    compute, for the input (a) and weight (b) operands; vector cycles before (pre) and after (post)
    the compute; output SRAM reserved before the first K step and bytes written back after the last
    (0 when the output stays in SRAM for the next unit); ``out_done`` 1 on a tile that completes an
    output tile (its epilogue runs and its SRAM is released then).
    """

    engine: str  # "mac" or "vector": the engine that computes the tiles
    tiles: list
    in_cap: int
    w_cap: int
    out_cap: int
    counts: dict = field(default_factory=dict)  # integer event counts for the energy model
    tile_shape: tuple = ()  # GEMM: (bt, mt, kt, nt, weight_reuse); attention: (bt, mq, nk); vector: (et,)
    estimate: tuple = ()  # (cycles, pJ) once plan_estimate has run (a plan belongs to one hardware)
    replayed: int = -1  # cycles of the plan replayed alone, once a latency planner has checked it
    closed: tuple = ()  # (cycles, engine counters) of the replay alone, for a plan in closed form
    # (``gemm_closed_form``: ``tiles`` then holds only its first and last tile)
    arrays: int = 0  # MAC arrays its tile cycles are for, when fewer than the chip has (a latency planner's choice)
    parts: tuple = ()  # plans run one after another, each on the machine drained by the one before
    # (a latency planner's chain, ``chain.plan_chain``); ``tiles`` and ``counts`` are then theirs joined


class NoFit(Exception):
    """No tile of this unit fits the buffers (raised to the caller, who decides what it means)."""

    def __init__(self, buffer: str, value: int, need: int, what: str):
        super().__init__(buffer)
        self.buffer, self.value, self.need, self.what = buffer, value, need, what

    def config_error(self) -> ConfigError:
        return ConfigError(
            self.buffer, self.value, f">= {self.need} bytes to hold one double-buffered tile of {self.what}"
        )


def _round_down(x: int, q: int) -> int:
    return x if x < q else x - x % q


def _round_up(x: int, q: int) -> int:
    return -(-x // q) * q


def _tile_compute_cycles(b: int, m: int, k: int, n: int, R: int, C: int, A: int, dataflow: str, rate: float) -> int:
    """Array cycles of one full ``b x [m,k] x [k,n]`` tile, split over the arrays as the replay does:
    whole batch items per array when there are at least as many items as arrays; else the faster
    of the output columns cut over the arrays (items one after another) and one item per array
    with the other arrays idle. A chip with more arrays can always leave some idle, so a tile is
    never slower on more arrays (a few items of a small matmul, e.g. attention heads, on 4 arrays:
    one head each, not each head cut in 4 thin column strips that fill and drain as long)."""
    if b >= A:  # whole batch items per array
        return math.ceil(b / A) * systolic_cycles(m, k, n, R, C, dataflow, rate)
    split = b * systolic_cycles(m, k, math.ceil(n / A), R, C, dataflow, rate)  # output columns over arrays
    return split if b == 1 else min(split, systolic_cycles(m, k, n, R, C, dataflow, rate))


def _blocks(total: int, tile: int) -> list[tuple[int, int]]:
    """``(count, size)`` of the full blocks and the edge block when ``total`` is cut in ``tile``s."""
    full, rest = divmod(total, tile)
    return [(c, sz) for c, sz in ((full, tile), (1 if rest else 0, rest)) if c]


def figure_of_merit(cycles: float, energy_pj: float, objective: str = "edp2") -> tuple:
    """What the planner minimises (``planner.objective`` of the config), as a sort key. ``edp2``:
    energy x delay^2 (the E*T^2 metric of Martin, Nystrom & Penzes,
    "ET^2: a metric for time and energy efficiency of computation", Power Aware Computing, 2002:
    unlike E*T it does not change under voltage scaling, so it ranks schedules, not operating
    points), and it weights time above energy, latency being the figure a video model is judged by
    on a phone. (With the static-twin start and latency-first fusion, E*T gave the same recipe
    ordering over the default sweep's 200 chips, measured on opensora-v1.0-16x256x256, 2 steps.) ``latency``: cycles, energy breaking ties;
    ``energy``: energy, cycles breaking ties."""
    if objective == "latency":
        return (cycles, energy_pj)
    if objective == "energy":
        return (energy_pj, cycles)
    return (cycles * cycles * energy_pj,)


def _per_tile_cycles(hw: HWConfig, engine: str) -> int:
    """Fixed cost of one tile beyond its compute: its DMA descriptor setup. The arrays' fill, skew
    and drain are already in every tile's cycles (``systolic_cycles`` counts them per fold, as
    SCALE-Sim does, and the replay runs a tile for exactly those cycles), so they are not added
    again here."""
    del engine
    return hw.dma.setup_cycles


def dram_cycles_per_byte(hw: HWConfig) -> float:
    """NPU cycles per byte at the DRAM's sustained bandwidth: peak x the part's efficiency
    (read/write turnaround, refresh, bank conflicts; figure and source in ``hwsim/memory.py``)."""
    return hw.clock.freq_hz / hw.dram.sustained_bandwidth_bytes_per_s


def transfer_cycles_per_byte(hw: HWConfig) -> float:
    """Cycles per byte of one transfer cut over every DMA engine: the slower of the DRAM controller
    and the engines together (``engine.Machine.reserve_xfer``)."""
    return max(dram_cycles_per_byte(hw), hw.clock.freq_hz / (hw.dma.bandwidth_bytes_per_s * hw.dma.engines))


# assumption: a transfer is cut into descriptors of at least 64 KiB (a DMA descriptor moves up to a
# few hundred KiB; below 64 KiB the extra setup is not worth a second engine)
SPLIT_MIN_BYTES = 65536


def _one_transfer_cpb(hw: HWConfig, nbytes: float) -> float:
    """Cycles per byte of one transfer alone: over every engine when it is cut in descriptors."""
    r = _rates(hw)
    return r[2] if nbytes >= 2 * SPLIT_MIN_BYTES else r[3]


_RATES: dict = {}


def _rates(hw: HWConfig) -> tuple:
    """(hw, DRAM cycles per byte, ``transfer_cycles_per_byte``, one engine's transfer cycles per
    byte, clock Hz, one DMA engine's bytes per s) of a config, computed once per config object: the
    tile search asks for them tens of thousands of times (the same floats as computing them anew;
    the entry holds the config, so its id is not reused while cached)."""
    hit = _RATES.get(id(hw))
    if hit is None or hit[0] is not hw:
        cpb, freq, dma_bw = dram_cycles_per_byte(hw), hw.clock.freq_hz, hw.dma.bandwidth_bytes_per_s
        if len(_RATES) >= 64:
            _RATES.clear()
        hit = _RATES[id(hw)] = (hw, cpb, transfer_cycles_per_byte(hw), max(cpb, freq / dma_bw), freq, dma_bw)
    return hit


def _pipeline_cycles(
    xfers: tuple,
    comp: float,
    pre: float,
    post: float,
    ntiles: int,
    hw: HWConfig,
    engine: str,
    first_in: float = 0.0,
    last_out: float = 0.0,
) -> float:
    """Closed-form time of a unit as the replay runs it (``engine.Machine.run_unit``).

    ``xfers`` = ((input bytes, loads), (weight bytes, loads), (output bytes, stores)). Three
    in-order streams, each paying a DMA setup per transfer: the input loader (transfers, then the
    fused pre-stage), the weight loader, the storer (post-stage, then the transfer); the engine
    (``comp``, plus the arrays' fill and drain per tile); all bytes through the one DRAM controller
    and the DMA engines together. Double-buffered, they run ``ntiles`` x the slowest stream plus one
    tile of each other stage: the first tile's load and the last tile's compute and store overlap
    nothing."""
    setup = hw.dma.setup_cycles
    _, cpb, cpb_all, cpb_one, freq, dma_bw = _rates(hw)
    split = 2 * SPLIT_MIN_BYTES
    (a_b, a_n), (b_b, b_n), (o_b, o_n) = xfers
    lane = [b * (cpb_all if b / n >= split else cpb_one) + n * setup if n else 0.0 for b, n in xfers]
    comp_all = comp + ntiles * (_per_tile_cycles(hw, engine) - setup)
    dma_all = ((a_b + b_b + o_b) * freq / dma_bw + (a_n + b_n + o_n) * setup) / hw.dma.engines
    n = max(1, ntiles)
    load1 = first_in * (cpb_all if first_in >= split else cpb_one) + setup if first_in else 0.0
    store1 = last_out * (cpb_all if last_out >= split else cpb_one) + setup if last_out else 0.0
    first, mid, last = load1 + pre / n, comp_all / n, store1 + post / n
    pipeline = max(
        lane[0] + pre + mid + last,  # the input stream, then the last tile's compute and store
        lane[1] + mid + last,  # the weight stream, likewise
        first + comp_all + last,  # the engine, after the first load and before the last store
        first + mid + lane[2] + post,  # the output stream, after the first tile
        max((a_b + b_b + o_b) * cpb, dma_all) + mid,  # controller, engines
    )
    # the one vector unit runs every pre- and post-stage: at least those, plus what cannot overlap them
    return max(pipeline, pre + post + load1 + mid + store1)


def plan_estimate(plan: Plan, hw: HWConfig) -> tuple[float, float]:
    """(cycles, pJ) of a plan run alone, from its tiles and event counts: the tile search's closed
    form for time, ``energy.py`` for energy (leakage over that time). Used to choose between running
    a GEMM's quantization stages fused into it or as their own ops."""
    if plan.estimate:
        return plan.estimate
    tiles = plan.tiles
    if not tiles:
        return 0.0, 0.0
    xfers = tuple((sum(t[i] for t in tiles), sum(1 for t in tiles if t[i])) for i in (0, 3, 9))
    comp = sum(t[7] for t in tiles)
    pre = sum(t[6] for t in tiles)
    post = sum(t[10] for t in tiles)
    cycles = _pipeline_cycles(
        xfers, comp, pre, post, len(tiles), hw, plan.engine, max(tiles[0][0], tiles[0][3]), tiles[-1][9]
    )
    energy_j = sum(energy_breakdown_j(hw, plan.counts, cycles / hw.clock.freq_hz).values())
    plan.estimate = (cycles, energy_j * 1e12)
    return plan.estimate


class _Estimate:
    """Closed-form time (cycles) and energy (pJ) of one GEMM tiling, for the tile search.

    The counts follow the replay in ``plan_gemm``: an operand tile is loaded again whenever the
    loop order moves to another tile of it, a fused pre-stage runs on every input load, and the
    energies per event are those of ``energy.py`` (``hw.costs``: computed once per config from the
    node, the operating point, the CACTI fit and the memory parts), static power likewise.
    """

    def __init__(self, u: GemmUnit, hw: HWConfig, tile_cycles, a_bpe: float, a_sram_bpe: float, o_bpe: float):
        self.u, self.tile_cycles = u, tile_cycles
        self.sums: dict = {}  # (kt, nt, mt, bt) -> ``_sums``
        self.a_bpe, self.a_sram_bpe, self.o_bpe = a_bpe, a_sram_bpe, o_bpe
        b_el = (u.batch if u.b_per_item else 1) * u.k * u.n
        self.b_bpe_of_item = u.b_bytes / b_el if b_el else 0.0  # per batch item when B differs per item
        e = hw.costs  # per-event energies, computed once per config
        self.hw = hw
        self.per_tile = _per_tile_cycles(hw, "mac")
        lanes = hw.vector.lanes
        self.a_el = u.batch * u.m * u.k
        self.o_el = u.batch * u.m * u.n
        # vector cycles (and their pJ) of the pre-stages over all of A, once, and of the post-stages
        pv, pd = stage_cycles_per_element(hw, u.pre)
        qv, qd = stage_cycles_per_element(hw, u.post)
        recip = u.batch * u.m * hw.vector.reciprocal_cycles_per_row if "dyn_stats" in stages_of(u.pre) else 0
        self.pre_cycles = self.a_el * (pv + pd) / lanes + recip
        self.post_cycles = self.o_el * (qv + qd) / lanes
        vl, dl = lanes * e.vector_lane_cycle_pj, lanes * e.dyn_lane_cycle_pj
        self.pre_pj = (self.a_el * pv / lanes) * vl + (self.a_el * pd / lanes + recip) * dl
        self.post_pj = (self.o_el * qv / lanes) * vl + (self.o_el * qd / lanes) * dl
        self.dram_pj = e.dram_pj_per_byte
        self.sram_pj = e.sram_pj_per_byte
        self.mac_pj = u.macs * e.mac_pj[u.precision] + epilogue_pj_45nm(epilogue_counts(u)) * vl / (
            lanes * VECTOR_LANE_CYCLE_PJ_45NM
        )  # the epilogue lanes, carried to the node as energy.py does
        self.leak_pj_per_cycle = e.static_w / hw.clock.freq_hz * 1e12

    def bound(self, kt: int, nt: int, mt: int, bt: int, wr: bool) -> int:
        """``replay_lower_bound`` of one tiling: its array cycles, vector cycles and DRAM bytes."""
        u = self.u
        nb_m, nb_n, nb_k = math.ceil(u.m / mt), math.ceil(u.n / nt), math.ceil(u.k / kt)
        fa, fb_item = _reloads(nb_m, nb_n, nb_k, wr)
        comp = self._sums(kt, nt, mt, bt)[0]
        dram = self._b_in(fb_item, nb_n, nb_k, math.ceil(u.batch / bt)) + u.pre_weight_bytes + u.res_bytes
        dram += (u.a_bytes * fa if u.dram_in else 0) + (u.out_bytes if u.dram_out else 0)
        # the arrays wait for the first tile's operands and the last output tile leaves after them
        b0, m0, k0, n0 = min(bt, u.batch), min(mt, u.m), min(kt, u.k), min(nt, u.n)
        a1 = math.ceil(b0 * m0 * k0 * self.a_bpe) if u.dram_in else 0
        w1 = 0 if u.b_resident else math.ceil((b0 if u.b_per_item else 1) * k0 * n0 * self.b_bpe_of_item)
        w1 += u.pre_weight_bytes
        b_e, m_e, n_e = (x - (math.ceil(x / t) - 1) * t for x, t in ((u.batch, bt), (u.m, mt), (u.n, nt)))
        out1 = math.ceil(b_e * m_e * n_e * self.o_bpe) if u.dram_out else 0
        bound = replay_lower_bound(comp, self.pre_cycles * fa + self.post_cycles, dram, self.hw, (a1, w1), out1)
        # each operand's loader runs its transfers one after another (``engine.Machine._loader``),
        # each at least a DMA setup plus its bytes at ``transfer_cycles_per_byte``, and the input's
        # pre-stage after its load; the last tile computes after both loaders are done, and its
        # output leaves after it
        hw, setup = self.hw, self.hw.dma.setup_cycles
        tcpb = transfer_cycles_per_byte(hw)
        nb_b = math.ceil(u.batch / bt)
        n_a = max(nb_b * nb_m * nb_k * fa if u.dram_in else 0, nb_b * nb_m * nb_n if u.res_bytes else 0)
        a_in = (u.a_bytes * fa if u.dram_in else 0) + u.res_bytes
        b_in = self._b_in(fb_item, nb_n, nb_k, nb_b)
        n_b = 0 if u.b_resident else nb_n * nb_k * fb_item * (nb_b if (u.b_per_item or nb_n > 1 or nb_k > 1) else 1)
        n_b = max(n_b, 1 if u.pre_weight_bytes else 0)
        k_e = u.k - (nb_k - 1) * kt
        tail = self.tile_cycles(b_e, m_e, k_e, n_e)[0] + (setup + out1 * tcpb if out1 else 0.0)
        lane_a = n_a * setup + a_in * tcpb + self.pre_cycles * fa
        lane_b = n_b * setup + (b_in + u.pre_weight_bytes) * tcpb
        # the storer runs each output tile's post-stage then its store, one after another, from
        # the first tile's compute on (after that tile's operands are in)
        n_out = nb_b * nb_m * nb_n if u.dram_out else 0
        lane_o = self.post_cycles + n_out * setup + (u.out_bytes if u.dram_out else 0) * tcpb
        if lane_o:
            lane_o += max(a1, w1) * tcpb + (setup if a1 or w1 else 0) + self.tile_cycles(b0, m0, k0, n0)[0]
        return max(bound, math.floor(max(max(lane_a, lane_b) + tail, lane_o) * (1 - 1e-12)))

    def _sums(self, kt: int, nt: int, mt: int, bt: int) -> tuple[int, int]:
        """(array cycles, SRAM bytes the arrays read) of every tile of a tiling, summed over its
        full and edge blocks; the same for both loop orders, so computed once per tiling."""
        key = (kt, nt, mt, bt)
        hit = self.sums.get(key)
        if hit is None:
            u = self.u
            comp = rd = 0
            for b_n, b_s in _blocks(u.batch, bt):
                for m_n, m_s in _blocks(u.m, mt):
                    for k_n, k_s in _blocks(u.k, kt):
                        for n_n, n_s in _blocks(u.n, nt):
                            c, r = self.tile_cycles(b_s, m_s, k_s, n_s)
                            w = b_n * m_n * k_n * n_n
                            comp += w * c
                            rd += w * r
            hit = self.sums[key] = (comp, rd)
        return hit

    def _b_in(self, fb_item: int, nb_n: int, nb_k: int, nb_b: int) -> int:
        u = self.u
        if u.b_resident:
            return 0
        if u.b_per_item or (nb_n == 1 and nb_k == 1):
            return u.b_bytes * fb_item
        return u.b_bytes * fb_item * nb_b  # shared weights come in again for every batch block

    def __call__(self, kt: int, nt: int, mt: int, bt: int, wr: bool) -> tuple[float, float, int]:
        """(cycles, pJ, tiles) of one tiling. One piece: every term (reloads, transfers, tile
        cycles, SRAM bytes) reads the same block counts, and it is the search's inner loop."""
        u = self.u
        nb_b, nb_m, nb_n, nb_k = math.ceil(u.batch / bt), math.ceil(u.m / mt), math.ceil(u.n / nt), math.ceil(u.k / kt)
        ntiles = nb_b * nb_m * nb_n * nb_k
        # how many times each operand crosses DRAM -> SRAM under the loop order (see the replay's
        # a_id / b_id): batch blocks outermost, then (n, m, k) with weight reuse or (m, n, k)
        fa, fb_item = _reloads(nb_m, nb_n, nb_k, wr)
        b_in = self._b_in(fb_item, nb_n, nb_k, nb_b)
        a_in = u.a_bytes * fa if u.dram_in else 0
        d_in = a_in + b_in + u.pre_weight_bytes + u.res_bytes
        d_out = u.out_bytes if u.dram_out else 0
        comp, rd = self._sums(kt, nt, mt, bt)
        pre = self.pre_cycles * fa
        post = self.post_cycles
        first_in = max(
            (math.ceil(min(bt, u.batch) * min(mt, u.m) * min(kt, u.k) * self.a_bpe) if u.dram_in else 0),
            (0 if u.b_resident else math.ceil(min(kt, u.k) * min(nt, u.n) * self.b_bpe_of_item)),
        )
        last_out = math.ceil(min(bt, u.batch) * min(mt, u.m) * min(nt, u.n) * self.o_bpe) if u.dram_out else 0
        n_a = (nb_b * nb_m * nb_k * fa if u.dram_in else 0) + (nb_b * nb_m * nb_n if u.res_bytes else 0)
        n_b = 0 if u.b_resident else (nb_n * nb_k * fb_item * (nb_b if (u.b_per_item or nb_n > 1 or nb_k > 1) else 1))
        xfers = (
            (a_in + u.res_bytes, n_a),
            (b_in + u.pre_weight_bytes, max(n_b, 1 if u.pre_weight_bytes else 0)),
            (d_out, nb_b * nb_m * nb_n if d_out else 0),
        )
        cycles = _pipeline_cycles(xfers, comp, pre, post, ntiles, self.hw, "mac", first_in, last_out)
        o_sram_bpe = self.o_bpe if nb_k == 1 else PSUM_BYTES
        sram = d_in + self.o_el * nb_k * o_sram_bpe + rd + d_out  # fills, array writes and reads, drains
        if nb_k > 1:
            sram += (nb_k - 1) * self.o_el * PSUM_BYTES  # partial-sum read-modify-write
        if u.pre:
            sram += fa * self.a_el * (FP16_BYTES + self.a_sram_bpe - self.a_bpe)  # read FP16, write quantized
        if u.post:
            sram += 2 * u.out_bytes + 2 * u.res_bytes
        energy_pj = (
            self.mac_pj
            + (d_in + d_out) * self.dram_pj
            + sram * self.sram_pj
            + fa * self.pre_pj
            + self.post_pj
            + cycles * self.leak_pj_per_cycle
        )
        return cycles, energy_pj, ntiles


def _reloads(nb_m: int, nb_n: int, nb_k: int, wr: bool) -> tuple[int, int]:
    """How many times the input (fa) and each item's weights (fb_item) cross DRAM -> SRAM under the
    loop order (the replay's a_id / b_id): batch blocks outermost, then (n, m, k) with weight reuse
    (``wr``) or (m, n, k)."""
    if wr:
        return (nb_n if (nb_m > 1 or nb_k > 1) else 1), (nb_m if nb_k > 1 else 1)
    return (nb_n if nb_k > 1 else 1), (nb_m if (nb_n > 1 or nb_k > 1) else 1)


# Output-column tile sizes tried, in multiples of one array's columns (C) and of all arrays' columns
# (A*C), plus equal splits of N: they depend on the GEMM's dimensions and the arrays' geometry only,
# never on operand bytes or buffer sizes, so every recipe of one GEMM draws from the same list and a
# recipe that needs more SRAM per tile (dynamic, smoothed) keeps a subset of what static keeps.
N_MULTIPLES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128)
N_SPLITS = (2, 3, 4, 5, 6, 8)
K_SPLITS = (2, 3, 4, 6, 8, 12, 16, 24, 32)  # K cut in d near-equal parts rounded up to R


# The latency planner's coarser ladders (powers of two): it replays every candidate that its lower
# bound cannot rule out (``simulate._fastest_replay``), so it weighs fewer than the closed-form search
LADDER_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LADDER_SPLITS = (2, 4, 8)


def _gemm_tile_options(
    u: GemmUnit, R: int, C: int, A: int, need_full_k: bool, coarse: bool = False
) -> tuple[list[int], list[int]]:
    """Depths ``kt`` and widths ``nt`` a GEMM may be tiled with, from its shape and the arrays alone
    (``coarse``: the latency planner's power-of-two ladders)."""
    multiples, n_splits, k_splits = (
        (LADDER_COUNTS, LADDER_SPLITS, LADDER_COUNTS[1:6])
        if coarse
        else (
            N_MULTIPLES,
            N_SPLITS,
            K_SPLITS,
        )
    )
    k_opts = {u.k}
    if not need_full_k:
        kmin = min(u.k, R)
        k_opts.add(kmin)
        for d in k_splits:
            kt = _round_up(math.ceil(u.k / d), R)
            if kmin <= kt < u.k:
                k_opts.add(kt)
    n_opts = {u.n}
    if not u.b_resident:
        # widths of one array and of every power-of-two subset of the arrays up to all of them, so a
        # chip with more arrays keeps the widths a chip with fewer would use
        widths = {C, A * C} | {C << i for i in range(A.bit_length()) if (1 << i) <= A}
        n_opts |= {s * j for s in widths for j in multiples if s * j < u.n}
        n_opts |= {nt for d in n_splits if (nt := _round_up(math.ceil(u.n / d), C)) < u.n}
    return sorted(k_opts, reverse=True), sorted(n_opts, reverse=True)


class _GemmSearch:
    """A GEMM unit's operand geometry, per-tile costs and the tile search over its candidates."""

    def __init__(self, u: GemmUnit, hw: HWConfig):
        mac = hw.mac
        self.u, self.hw = u, hw
        R, C, A = self.R, self.C, self.A = mac.rows, mac.cols, mac.arrays
        a_el = u.batch * u.m * u.k
        b_el = (u.batch if u.b_per_item else 1) * u.k * u.n
        self.a_bpe = u.a_bytes / a_el
        self.b_bpe = b_bpe = u.b_bytes / b_el if b_el else 0.0
        self.o_bpe = u.out_bytes / (u.batch * u.m * u.n)
        self.a_sram_bpe = self.a_bpe + u.a_extra_sram_bpe
        # input-buffer bytes per A element of a tile: an input handed over in SRAM is read where it
        # is held (``held_bytes``), so only a pre-stage's quantized copy takes tile room
        self.a_tile_bpe = self.a_sram_bpe if u.dram_in else u.a_extra_sram_bpe
        self.res_bpe = u.res_bytes / (u.batch * u.m * u.n)
        a_mac_bpe = u.a_extra_sram_bpe if u.pre else self.a_bpe  # the arrays read the quantized copy
        rate = mac.rate(u.precision)
        sram_bw = hw.sram.bytes_per_cycle
        dataflow = mac.dataflow
        cycle_cache: dict = {}

        def tile_cycles(b: int, m: int, k: int, n: int) -> tuple[int, int]:
            """Cycles of one tile (arrays, or SRAM read bandwidth when slower), SRAM bytes it reads."""
            key = (b, m, k, n)
            hit = cycle_cache.get(key)
            if hit is None:
                sys_c = _tile_compute_cycles(b, m, k, n, R, C, A, dataflow, rate)
                # every A row block is read once per column fold, every B column block once per row fold
                rd = b * (
                    math.ceil(m * k * a_mac_bpe) * math.ceil(n / (A * C)) + math.ceil(k * n * b_bpe) * math.ceil(m / R)
                )
                hit = (max(sys_c, math.ceil(rd / sram_bw)), rd)
                cycle_cache[key] = hit
            return hit

        self.tile_cycles = tile_cycles
        self.est = _Estimate(u, hw, tile_cycles, self.a_bpe, self.a_sram_bpe, self.o_bpe)
        objective = hw.planner.objective
        self.merit = lambda cycles, energy_pj: figure_of_merit(cycles, energy_pj, objective)

    def room(self, kt: int, nt: int) -> tuple[int, int] | None:
        """(rows, batch items) that fit beside a ``kt x nt`` weight tile, double-buffered, before
        any rounding; None when the tile does not fit. Both only grow with the buffers."""
        u, wbuf, abuf = self.u, self.hw.sram.weight_buffer_bytes, tile_buffer_bytes(self.u, self.hw)
        if not u.b_resident and nt * kt * self.b_bpe > wbuf // 2 - u.pre_weight_bytes:
            return None
        nb_k = math.ceil(u.k / kt)
        out_bpe_sram = self.o_bpe if nb_k == 1 else PSUM_BYTES
        rows = int(abuf // (2 * kt * self.a_tile_bpe + 2 * nt * (out_bpe_sram + self.res_bpe)))
        if rows < 1:
            return None
        bt = 1
        if rows >= u.m and nt == u.n and nb_k == 1:
            bt = min(u.batch, rows // u.m)
            if u.b_per_item and not u.b_resident:
                bt = min(bt, max(1, int((wbuf // 2) // max(1.0, u.k * u.n * self.b_bpe))))
            bt = max(1, bt)
        return rows, bt

    def rows_that_fit(self, kt: int, nt: int) -> tuple[int, int] | None:
        """(mt, bt): the most rows (whole rows of the arrays) and batch items that fit beside a
        ``kt x nt`` weight tile, double-buffered; None when the tile does not fit. For fixed
        (kt, nt, order) more rows never cost more (same row folds, fewer reloads and tiles)."""
        room = self.room(kt, nt)
        if room is None:
            return None
        rows, bt = room
        if rows < self.u.m:  # balanced row blocks: as many blocks as the most rows need, evened out
            most = _round_down(rows, self.R)
            blocks = math.ceil(self.u.m / most)
            return min(most, _round_up(math.ceil(self.u.m / blocks), self.R)), 1
        return self.u.m, bt

    def ladder(self, need_full_k: bool) -> list[tuple]:
        """Every tiling a latency planner weighs, as (shape, replay lower bound), best estimate
        first: each (depth, width) of ``_gemm_tile_options`` that fits the weight buffer, each row
        block of ``block_ladder`` (and batch block, when all rows fit) that fits the activation
        buffer beside it, both loop orders. The ladders read the shape and the arrays' geometry
        alone and a bigger buffer fits whatever a smaller one fits, so a chip with more SRAM, DRAM
        bandwidth or arrays (of the powers of two the widths are drawn for) weighs a superset;
        ``simulate._fastest_replay`` then picks the fastest replay of them exactly."""
        u, R = self.u, self.R
        k_opts, n_opts = _gemm_tile_options(u, R, self.C, self.A, need_full_k, coarse=True)
        m_ladder, b_ladder = block_ladder(u.m, R, LADDER_COUNTS), block_ladder(u.batch, 1, LADDER_COUNTS)
        ranked = []
        for kt in k_opts:
            for nt in n_opts:
                room = self.room(kt, nt)
                if room is None:
                    continue
                rows, most_b = room
                opts = [(mt, 1) for mt in m_ladder if mt <= rows]
                if rows >= u.m:
                    opts += [(u.m, bt) for bt in b_ladder if 1 < bt <= most_b]
                for mt, bt in opts:
                    for wr in (True, False):
                        cycles, energy_pj, ntiles = self.est(kt, nt, mt, bt, wr)
                        ranked.append(((self.merit(cycles, energy_pj), ntiles, -kt, not wr), (kt, nt, mt, bt, wr)))
        ranked.sort(key=lambda c: c[0])
        return [(shape, self.est.bound) for _, shape in ranked]

    def search(self, need_full_k: bool, top: int = 1) -> list[tuple]:
        """The ``top`` candidates (kt, nt, mt, bt, weight_reuse) of least objective, best first
        (empty if none fits)."""
        k_opts, n_opts = _gemm_tile_options(self.u, self.R, self.C, self.A, need_full_k)
        first = []  # pass 1: every (kt, nt, order) with the most rows that fit
        for kt in k_opts:
            for nt in n_opts:
                fit = self.rows_that_fit(kt, nt)
                if fit is None:
                    continue
                for wr in (True, False):
                    cycles, energy_pj, ntiles = self.est(kt, nt, *fit, wr)
                    first.append(((self.merit(cycles, energy_pj), ntiles, -kt, not wr), (kt, nt, *fit, wr)))
        if not first:
            return []
        first.sort()
        ranked = first[: max(top, 1)]
        for _, (kt, nt, mt0, bt0, wr) in first[:SECOND_PASS]:  # pass 2: fewer rows for the best few
            for mt, bt in self.row_options(mt0, bt0)[1:]:
                cycles, energy_pj, ntiles = self.est(kt, nt, mt, bt, wr)
                ranked.append(((self.merit(cycles, energy_pj), ntiles, -kt, not wr), (kt, nt, mt, bt, wr)))
        ranked.sort(key=lambda c: c[0])  # stable: a pass-1 candidate wins a tie
        return [shape for _, shape in ranked[:top]]

    def row_options(self, mt: int, bt: int) -> list[tuple[int, int]]:
        """The most rows (and batch items) that fit, and 2x and 4x as many balanced blocks: fewer,
        bigger tiles move fewer bytes but fill and drain the pipeline longer (the first load and
        the last store overlap nothing), so the search weighs both. A latency planner takes every
        smaller block of the ladder (``block_ladder``) instead of 2x and 4x: a chip with a bigger
        buffer then keeps the blocks a smaller one tries."""
        u, R = self.u, self.R
        opts = [(mt, bt)]
        if self.hw.planner.objective == "latency":
            opts += [(mt, b) for b in block_ladder(u.batch, 1) if b < bt]
            return opts + [(m2, 1) for m2 in block_ladder(u.m, R) if m2 < mt]
        for f in (2, 4):
            if bt >= f:
                opts.append((mt, math.ceil(bt / f)))
            elif bt == 1:
                blocks = math.ceil(u.m / mt) * f
                m2 = _round_up(math.ceil(u.m / blocks), R)
                if m2 < mt and m2 >= min(R, u.m):
                    opts.append((m2, 1))
        return opts


SECOND_PASS = 6  # (kt, nt, order) candidates whose smaller row blocks are costed too
QUANT_STAGES = ("smooth_mul", "dyn_stats", "dyn_rescale")


def static_twin(u: GemmUnit) -> GemmUnit:
    """The same GEMM as a static recipe runs it: without its fused quantization stages (SmoothQuant
    multiply, dynamic statistics and rescale), the other fused stages (norm, modulation, activation,
    residual add) kept; with no prologue left, the quantized input straight from DRAM."""
    pre = "+".join(x for x in stages_of(u.pre) if x not in QUANT_STAGES)
    post = "+".join(x for x in stages_of(u.post) if x not in QUANT_STAGES)
    if (pre, post) == (u.pre, u.post):
        return u
    a_bytes = u.a_bytes if pre else round(u.batch * u.m * u.k * u.a_extra_sram_bpe) if u.pre else u.a_bytes
    return GemmUnit(
        batch=u.batch,
        m=u.m,
        k=u.k,
        n=u.n,
        precision=u.precision,
        a_bytes=a_bytes,
        b_bytes=u.b_bytes,
        out_bytes=u.out_bytes,
        b_per_item=u.b_per_item,
        b_resident=u.b_resident,
        a_extra_sram_bpe=u.a_extra_sram_bpe if pre else 0.0,
        pre=pre,
        post=post,
        pre_weight_bytes=u.pre_weight_bytes if pre else 0,
        res_bytes=u.res_bytes if post else 0,
        dram_in=u.dram_in,
        dram_out=u.dram_out,
        held_bytes=u.held_bytes,
        epilogue=u.epilogue,
        dequant_elements=u.dequant_elements,
    )


def gemm_shape(
    u: GemmUnit, hw: HWConfig, need_full_k: bool = False, anchor: tuple | None = None, top: int = 1
) -> tuple | list:
    """The tiling ``plan_gemm`` uses, (kt, nt, mt, bt, weight_reuse), and its closed-form (cycles,
    pJ), without building the tiles (the schedule compares fusion options with it); with ``top``
    > 1, a list of up to ``top`` such pairs, best first (the static twin's tiling first when the
    unit starts from it), for a caller that checks them by replay (``planner.objective: latency``).

    Candidates: every (K depth, N width) of ``_gemm_tile_options`` that fits the weight buffer, with
    the most rows (and batch items) that fit the activation buffer beside it, in both loop orders.
    Each is costed by ``_Estimate`` from closed forms of what the replay does: DRAM bytes with the
    replay's operand reuse, array cycles of every tile at its own size (SCALE-Sim), the fused
    vector work repeated on every input reload, SRAM bytes; time = the slowest pipeline + per-tile
    setup, energy = those counts x ``energy.py``'s per-event energies + leakage x time. The search
    minimises ``figure_of_merit`` (energy x delay^2), so energy counts as well as time.

    A GEMM with fused stages (dynamic: FP16 row held, ``need_full_k``; smoothed: FP16 input) starts
    from the tiling of its static twin (``static_twin``: the same GEMM without its quantization
    stages) and keeps its tiling (its rows too where they fit); it searches its own candidates
    only when that tiling is not open to it (the twin splits K where the full row must be held, or
    not even one row fits).

    Why the dynamic recipe is then never cheaper than its static twin:
    - twin tiling kept: on one (kt, nt, order) the fused GEMM moves at least the twin's bytes (FP16
      input), does at least its vector work, and fits no more rows, and fewer rows never cost less
      in any term (same row folds, more reloads and tiles): it costs at least as much time AND
      energy, by construction (up to the replay's timing, which follows the same tiles);
    - own search: its candidates are a subset of the twin's (same (kt, nt) lists, byte-free; fewer
      rows), each at least as costly, so its least energy x delay^2 is at least the twin's; that
      orders the product, not each factor: it may come out faster but hungrier, or the reverse;
    - stages run as their own ops instead (``simulate._Units`` picks the faster of fused and
      alone, by estimate): the GEMM is then the static twin's, plus the stages' own ops: at least
      as costly in both.
    Only the second case can invert one metric; tests/codesign/test_hwsim_recipe_order.py checks both on the
    default sweep's chips. Against ASQ (smoothed, not row-held) the same holds option by option
    (ASQ's fused and alone options each cost no more than the dynamic ones, its smoothing being
    cheaper than per-row statistics plus rescale), and picking the faster option keeps that order in
    time; in energy it rests on the same measurement. ASQ's factors take weight-buffer room, so near
    a buffer limit ASQ can lose a width the dynamic GEMM keeps.
    """
    mac = hw.mac
    R, C = mac.rows, mac.cols
    wbuf, abuf = hw.sram.weight_buffer_bytes, tile_buffer_bytes(u, hw)
    srch = _GemmSearch(u, hw)
    b_bpe, o_bpe = srch.b_bpe, srch.o_bpe
    what = f"GEMM [{u.m}x{u.k}]x[{u.k}x{u.n}]"

    # minimal tile: one fold of an array, R rows x C columns x min(K, R) deep (or the full row)
    kmin = u.k if need_full_k else min(u.k, R)
    rmin, nmin = min(u.m, R), min(u.n, C)
    if not u.b_resident and 2 * math.ceil(kmin * nmin * b_bpe) + 2 * u.pre_weight_bytes > wbuf:
        raise NoFit("sram.weight_buffer_bytes", wbuf, 2 * math.ceil(kmin * nmin * b_bpe) + 2 * u.pre_weight_bytes, what)
    need_a = 2 * math.ceil(rmin * kmin * srch.a_tile_bpe) + 2 * rmin * nmin * (o_bpe if kmin == u.k else PSUM_BYTES)
    if need_a > abuf:
        raise NoFit("sram.activation_buffer_bytes", abuf, need_a, what)

    shape = None
    twin = static_twin(u)
    if twin is not u:  # start from the static twin's tiling, with the rows that fit beside the stages
        if anchor is None:
            anchor = next(iter(_GemmSearch(twin, hw).search(any(x in ROW_KINDS for x in stages_of(twin.pre)))), None)
        if anchor is not None and not (need_full_k and anchor[0] != u.k):
            kt, nt, mt0, bt0, wr = anchor
            fit = srch.rows_that_fit(kt, nt)
            if fit is not None:  # the twin's rows and batch items where they fit, else the most that do
                mt, bt = (mt0, min(bt0, fit[1])) if mt0 <= fit[0] else fit
                shape = (kt, nt, mt, bt, wr)
    shapes = [shape] if shape is not None else []
    if top > 1 or not shapes:
        shapes += [x for x in srch.search(need_full_k, top) if x != shape]
    if not shapes:
        raise NoFit("sram.activation_buffer_bytes", abuf, need_a, what)
    if top > 1:
        return [(x, srch.est(*x)[:2]) for x in shapes[:top]]
    return shapes[0], srch.est(*shapes[0])[:2]


def plan_gemm(
    u: GemmUnit, hw: HWConfig, need_full_k: bool = False, anchor: tuple | None = None, shape: tuple | None = None
) -> Plan:
    """Tile plan of a GEMM unit: its tiles in replay order for the tiling of ``gemm_shape`` (or
    ``shape`` when the caller has it)."""
    if shape is None:
        shape = gemm_shape(u, hw, need_full_k, anchor)[0]
    srch = _GemmSearch(u, hw)
    kt, nt, mt, bt, weight_reuse = shape
    check_gemm_tiles(u.batch, u.m, u.k, u.n, shape)  # bounded work: refuse before enumerating the tiles
    tiles, counts = _gemm_tiles(u, hw, srch, (kt, nt, mt, bt, weight_reuse))
    counts["macs_" + u.precision] = u.macs
    counts.update(epilogue_counts(u))
    counts["dram_rd"] = sum(t[0] + t[3] for t in tiles)
    counts["dram_wr"] = sum(t[9] for t in tiles)
    return Plan("mac", tiles, *gemm_caps(u, srch, shape), counts, (bt, mt, kt, nt, weight_reuse))


def gemm_caps(u: GemmUnit, srch, shape: tuple) -> tuple[int, int, int]:
    """SRAM (input, weight, output) capacities of a GEMM plan: two tiles of each operand."""
    kt, nt, mt, bt, _ = shape
    nb_k = math.ceil(u.k / kt)
    res_bpe = u.res_bytes / (u.batch * u.m * u.n)
    in_cap = 2 * math.ceil(bt * mt * kt * srch.a_tile_bpe) + 2 * math.ceil(bt * mt * nt * res_bpe)
    w_cap = (
        0
        if u.b_resident
        else 2 * math.ceil((bt if u.b_per_item else 1) * kt * nt * srch.b_bpe) + 2 * u.pre_weight_bytes
    )
    out_cap = 2 * math.ceil(bt * mt * nt * (srch.o_bpe if nb_k == 1 else PSUM_BYTES))
    return max(1, in_cap), max(1, w_cap), max(1, out_cap)


def _gemm_order(u: GemmUnit, nb: tuple, weight_reuse: bool) -> list:
    """Tile visiting order: batch blocks, then (n outer, m inner) for weight reuse or (m outer,
    n inner), K innermost."""
    nb_b, nb_m, nb_n, nb_k = nb
    rb, rm, rn, rk = range(nb_b), range(nb_m), range(nb_n), range(nb_k)
    if weight_reuse:
        return [(ib, im, jn, kk) for ib in rb for jn in rn for im in rm for kk in rk]
    return [(ib, im, jn, kk) for ib in rb for im in rm for jn in rn for kk in rk]


def _gemm_tiles(u: GemmUnit, hw: HWConfig, srch, shape: tuple, dims: tuple = ()) -> tuple[list, dict]:
    """The replay's tiles of a GEMM tiled as ``shape`` = (kt, nt, mt, bt, weight_reuse) and their
    event counts; ``dims`` = (batch, m, n, k) cut instead of the unit's own (``gemm_closed_form``
    drops whole interior blocks this way, keeping the edge blocks and the unit's bytes per
    element). An operand tile is loaded when the order moves to a new tile of it; a fused
    pre-stage runs on every input load; the epilogue (post-stages, and a residual read with the
    last K step) on every output tile; DRAM bytes vanish where the unit hands over in SRAM.
    One piece on purpose: each tile's loads, SRAM reservations, stage cycles and counts depend on
    its neighbours in the order (first and last use of an operand tile), read in one place; a tile
    is made once per kind (its sizes and those neighbour flags, ``one_tile``) and shared."""
    kt, nt, mt, bt, weight_reuse = shape
    a_bpe, b_bpe, o_bpe, a_sram_bpe = srch.a_bpe, srch.b_bpe, srch.o_bpe, srch.a_sram_bpe
    tile_cycles = srch.tile_cycles
    d_b, d_m, d_n, d_k = dims or (u.batch, u.m, u.n, u.k)
    nb = (math.ceil(d_b / bt), math.ceil(d_m / mt), math.ceil(d_n / nt), math.ceil(d_k / kt))
    nb_k = nb[3]
    lanes = hw.vector.lanes
    pv, pd = stage_cycles_per_element(hw, u.pre)
    qv, qd = stage_cycles_per_element(hw, u.post)
    recip = hw.vector.reciprocal_cycles_per_row if "dyn_stats" in stages_of(u.pre) else 0
    res_bpe = u.res_bytes / (u.batch * u.m * u.n)

    def sizes(i: int, tile: int, total: int) -> int:
        return min(tile, total - i * tile)

    def a_id(t):
        return (t[0], t[1], t[3])

    def b_id(t):
        return (t[0] if u.b_per_item else 0, t[2], t[3])

    def one_tile(b, m, n, k, a_new, a_free, b_new, b_free, first, k_first, k_last) -> tuple:
        """A tile of sizes (b, m, n, k), whether it loads / frees its operands, whether it is the
        first tile, the first / last K step: the tile and its (sram_rd, sram_wr, vec, dyn) counts."""
        rd_c = wr_c = vec_c = dyn_c = 0
        a_el_t = b * m * k
        a_load = math.ceil(a_el_t * a_bpe) if a_new and u.dram_in else 0
        a_sram = math.ceil(a_el_t * srch.a_tile_bpe)
        if u.b_resident:
            b_load, b_sram = 0, 0
        else:
            b_el_t = (b if u.b_per_item else 1) * k * n
            b_load = math.ceil(b_el_t * b_bpe) if b_new else 0
            b_sram = math.ceil(b_el_t * b_bpe)
        if first and u.pre_weight_bytes:
            b_load += u.pre_weight_bytes  # factors stay in their own corner of the weight buffer
        pre_c = 0
        if u.pre and a_new:
            pre_v = math.ceil(a_el_t * pv / lanes) if pv else 0
            pre_d = math.ceil(a_el_t * pd / lanes) + b * m * recip if pd else 0
            pre_c = pre_v + pre_d
            vec_c += pre_v
            dyn_c += pre_d
            rd_c += math.ceil(a_el_t * FP16_BYTES)  # read FP16, write quantized
            wr_c += math.ceil(a_el_t * (a_sram_bpe - a_bpe))
        cyc, rd = tile_cycles(b, m, k, n)
        rd_c += rd
        o_sram_bpe = o_bpe if nb_k == 1 else PSUM_BYTES
        out_alloc = math.ceil(b * m * n * o_sram_bpe) if k_first else 0
        out_tile = math.ceil(b * m * n * o_bpe) if k_last else 0
        out_store = out_tile if u.dram_out else 0
        res_t = math.ceil(b * m * n * res_bpe) if k_last and u.res_bytes else 0
        post_c = 0
        if k_last and u.post:
            post_v = math.ceil(b * m * n * qv / lanes) if qv else 0
            post_d = math.ceil(b * m * n * qd / lanes) if qd else 0
            post_c = post_v + post_d
            vec_c += post_v
            dyn_c += post_d
            rd_c += out_tile + res_t
            wr_c += out_tile
        wr_c += a_load + b_load + res_t + (math.ceil(b * m * n * o_sram_bpe))  # DMA fills, array writes
        if nb_k > 1 and not k_first:
            rd_c += math.ceil(b * m * n * PSUM_BYTES)  # read-modify-write of partial sums
        rd_c += out_store  # DMA drains the output tile
        tile = (
            a_load + res_t,
            (a_sram if a_new else 0) + res_t,
            (a_sram if a_free else 0) + res_t,
            b_load,
            b_sram if b_new else 0,
            b_sram if b_free else 0,
            pre_c,
            cyc,
            out_alloc,
            out_store,
            post_c,
            1 if k_last else 0,
        )
        return tile, (rd_c, wr_c, vec_c, dyn_c)

    order = _gemm_order(u, nb, weight_reuse)
    # each dimension's block sizes, and each tile's operand identities (as ``a_id`` / ``b_id``)
    size_of = [
        [sizes(i, tile, total) for i in range(n)] for n, tile, total in zip(nb, (bt, mt, nt, kt), (d_b, d_m, d_n, d_k))
    ]
    sz_b, sz_m, sz_n, sz_k = size_of
    a_ids = [a_id(t) for t in order]
    b_ids = [b_id(t) for t in order] if not u.b_resident else None
    tiles = []
    made: dict = {}  # what makes a tile -> (tile, its counts): a GEMM's tiles come in few kinds
    sram_rd = sram_wr = vec_cycles = dyn_cycles = 0
    last = len(order) - 1
    k_end = nb_k - 1
    for idx, t in enumerate(order):
        ib, im, jn, kk = t
        a = a_ids[idx]
        a_new = idx == 0 or a_ids[idx - 1] != a
        a_free = idx == last or a_ids[idx + 1] != a
        if b_ids is None:
            b_new = b_free = False
        else:
            bi = b_ids[idx]
            b_new = idx == 0 or b_ids[idx - 1] != bi
            b_free = idx == last or b_ids[idx + 1] != bi
        key = (sz_b[ib], sz_m[im], sz_n[jn], sz_k[kk], a_new, a_free, b_new, b_free, idx == 0, kk == 0, kk == k_end)
        hit = made.get(key)
        if hit is None:
            hit = made[key] = one_tile(*key)
        tile, (rd, wr, vc, dc) = hit
        tiles.append(tile)
        sram_rd += rd
        sram_wr += wr
        vec_cycles += vc
        dyn_cycles += dc
    counts = {"sram_rd": sram_rd, "sram_wr": sram_wr, "vec_cycles": vec_cycles, "dyn_cycles": dyn_cycles}
    return tiles, counts


def plan_vector(u: VectorOpUnit, hw: HWConfig) -> Plan:
    abuf = tile_buffer_bytes(u, hw)
    lanes = hw.vector.lanes
    counts = {"sram_rd": 0, "sram_wr": 0, "vec_cycles": 0, "dyn_cycles": 0, "dram_rd": 0, "dram_wr": 0}
    if u.elements == 0:
        return Plan("vector", [], 1, 1, 1, counts, (0,))
    in_bpe, out_bpe = u.in_bytes / u.elements, u.out_bytes / u.elements
    dram_in_bpe = in_bpe if u.dram_in else u.side_bytes / u.elements  # handed over in SRAM: side input only
    need = 2 * math.ceil(lanes * in_bpe) + 2 * math.ceil(lanes * out_bpe)
    if need > abuf:
        raise NoFit("sram.activation_buffer_bytes", abuf, need, f"{u.kind} over {lanes} lanes")
    et = int(abuf // (2 * (in_bpe + out_bpe)))
    et = min(u.elements, _round_down(et, lanes))
    check_vector_tiles(u.kind, u.elements, et)  # bounded work: refuse before enumerating the tiles
    ntiles = math.ceil(u.elements / et)
    cv, cd = stage_cycles_per_element(hw, u.kind)
    row_len = u.elements // u.rows if u.rows else 0
    tiles = []
    for i in range(ntiles):
        e = min(et, u.elements - i * et)
        a_sram = math.ceil(e * in_bpe)
        a_load = math.ceil(e * dram_in_bpe)
        o = math.ceil(e * out_bpe)
        o_store = o if u.dram_out else 0
        c_v = math.ceil(e * cv / lanes) if cv else 0
        c_d = math.ceil(e * cd / lanes) if cd else 0
        if "dyn_stats" in stages_of(u.kind) and row_len:
            c_d += math.ceil(e / row_len) * hw.vector.reciprocal_cycles_per_row
        c = c_v + c_d
        w = u.weight_bytes if i == 0 else 0
        w_put = u.weight_bytes if i == ntiles - 1 else 0
        tiles.append((a_load, a_sram, a_sram, w, w, w_put, 0, c, o, o_store, 0, 1))
        counts["vec_cycles"] += c_v
        counts["dyn_cycles"] += c_d
        counts["sram_wr"] += a_load + w + o
        counts["sram_rd"] += a_sram + o_store + w
    counts["dram_rd"] = sum(t[0] + t[3] for t in tiles)
    counts["dram_wr"] = sum(t[9] for t in tiles)
    in_cap = 2 * math.ceil(et * in_bpe)
    out_cap = 2 * math.ceil(et * out_bpe)
    return Plan("vector", tiles, max(1, in_cap), max(1, u.weight_bytes), max(1, out_cap), counts, (et,))


# ---- fused attention --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionUnit:
    """``softmax(Q K^T) V`` of ``batch`` heads with the scores kept in SRAM (flash-attention style):
    per tile of query rows, QK^T and PV run on the MAC arrays and the softmax on the vector unit; when
    the keys do not fit at once they are streamed in blocks with an on-line softmax (running max and
    sum, O rescaled per block). Only Q, K, V and O cross DRAM."""

    batch: int
    m: int  # queries per head
    n: int  # keys per head
    d: int  # head dim of Q and K
    dv: int  # head dim of V / O
    precision_qk: str
    precision_av: str
    q_bytes: int
    k_bytes: int
    v_bytes: int
    out_bytes: int
    epilogue: str = ""  # "quant": the output written as int8 codes for the next (static) GEMM
    dequant_elements: int = 0  # Q, K, V elements read as int16 codes of a static GEMM, converted at the input

    @property
    def macs(self) -> int:
        return self.batch * self.m * self.n * (self.d + self.dv)


class _AttnCost:
    """Per-tile array cycles of a fused attention and the closed-form cost of a blocking, for
    ``plan_attention``'s search (compute, softmax on the vector unit and DRAM traffic together)."""

    def __init__(self, u: AttentionUnit, hw: HWConfig):
        mac = hw.mac
        self.u, self.hw = u, hw
        self.R, self.C, self.A = mac.rows, mac.cols, mac.arrays
        self.q_bpe = u.q_bytes / (u.batch * u.m * u.d)
        self.kv_bpe_row = u.k_bytes / (u.batch * u.n) + u.v_bytes / (u.batch * u.n)  # bytes per key (K and V rows)
        self.o_bpe = u.out_bytes / (u.batch * u.m * u.dv)
        self.r_qk, self.r_av = mac.rate(u.precision_qk), mac.rate(u.precision_av)
        self.soft_cpe = vector_cycles_per_element(hw, "softmax")
        self.basic = hw.vector.cycles_per_element["basic"]
        self.per_tile = _per_tile_cycles(hw, "mac")
        self.leak_pj_per_cycle = hw.costs.static_w / hw.clock.freq_hz * 1e12  # static power, once per config
        self.cache: dict = {}
        self.last_bound = 0  # replay lower bound of the last blocking estimated

    def cycles(self, b: int, m: int, nkk: int) -> tuple[int, int]:
        """Array cycles of one tile (S = Q K^T, then O += P V; or SRAM read bandwidth when slower)
        and the SRAM bytes the arrays read."""
        key = (b, m, nkk)
        hit = self.cache.get(key)
        if hit is None:
            u, R, C, A, mac = self.u, self.R, self.C, self.A, self.hw.mac

            def one(mm, kk, nn, rate, a_bpe, b_bpe):
                c = _tile_compute_cycles(b, mm, kk, nn, R, C, A, mac.dataflow, rate)
                rd = b * (
                    math.ceil(mm * kk * a_bpe) * math.ceil(nn / (A * C))
                    + math.ceil(kk * nn * b_bpe) * math.ceil(mm / R)
                )
                return c, rd

            c1, rd1 = one(m, u.d, nkk, self.r_qk, self.q_bpe, self.q_bpe)  # S = Q K^T
            c2, rd2 = one(m, nkk, u.dv, self.r_av, FP16_BYTES, self.o_bpe)  # O += P V
            hit = self.cache[key] = (max(c1 + c2, math.ceil((rd1 + rd2) / self.hw.sram.bytes_per_cycle)), rd1 + rd2)
        return hit

    def softmax_cycles(self, b: int, m: int, nkk: int, streamed: bool) -> int:
        """Softmax of a score tile (+ the O rescale per key block when keys are streamed)."""
        lanes = self.hw.vector.lanes
        return math.ceil(b * m * nkk * self.soft_cpe / lanes) + (
            math.ceil(b * m * self.u.dv * 2 * self.basic / lanes) if streamed else 0
        )

    def estimate(self, nk: int, mq: int, bt: int) -> tuple[float, float, int]:
        """(cycles, pJ of what differs between blockings: DRAM and leakage, tiles) of one blocking."""
        u, hw = self.u, self.hw
        nb_m, nb_k = math.ceil(u.m / mq), math.ceil(u.n / nk)
        ntiles = math.ceil(u.batch / bt) * nb_m * nb_k
        kv_in = (u.k_bytes + u.v_bytes) * (nb_m if nb_k > 1 else 1)  # K/V of a head stay while its q-blocks pass
        comp = soft = 0
        for b_n, b_s in _blocks(u.batch, bt):
            for m_n, m_s in _blocks(u.m, mq):
                for k_n, k_s in _blocks(u.n, nk):
                    comp += b_n * m_n * k_n * self.cycles(b_s, m_s, k_s)[0]
                    soft += b_n * m_n * k_n * self.softmax_cycles(b_s, m_s, k_s, nb_k > 1)
        b0, m0, k0 = min(bt, u.batch), min(mq, u.m), min(nk, u.n)
        first_in = max(b0 * m0 * u.d * self.q_bpe, b0 * k0 * self.kv_bpe_row)
        nb_b = math.ceil(u.batch / bt)
        xfers = ((u.q_bytes, nb_b * nb_m), (kv_in, nb_b * nb_k * (nb_m if nb_k > 1 else 1)), (u.out_bytes, nb_b * nb_m))
        cycles = _pipeline_cycles(xfers, comp, soft, 0, ntiles, hw, "mac", first_in, b0 * m0 * u.dv * self.o_bpe)
        energy = (u.q_bytes + kv_in + u.out_bytes) * hw.costs.dram_pj_per_byte + cycles * self.leak_pj_per_cycle
        self.last_bound = replay_lower_bound(comp, soft, u.q_bytes + kv_in + u.out_bytes, hw)
        return cycles, energy, ntiles


def attention_blockings(u: AttentionUnit, hw: HWConfig, top: int = 1, ladder: bool = False) -> list:
    """The ``top`` blockings (keys per block nk, query rows per block mq, heads per tile bt) of
    least objective, best first. Query rows are cut in balanced blocks (1,024 rows that fit 896
    at a time: 512 + 512).

    ``ladder``: every blocking of the ladder that fits instead (``block_ladder`` of query rows and
    of heads, under each key block), each as ``(blocking, replay lower bound)``, best estimate first:
    the ladder depends on the shape and ``mac.rows`` only, so a chip with bigger buffers fits every
    blocking a smaller one fits (the latency planner replays them, ``simulate._plan``)."""
    cost = _AttnCost(u, hw)
    R = hw.mac.rows
    wbuf, abuf = hw.sram.weight_buffer_bytes, hw.sram.activation_buffer_bytes
    ranked = []
    k_opts = {u.n} | {_round_up(math.ceil(u.n / d), R) for d in (2, 4, 8, 16, 32) if math.ceil(u.n / d) >= R}
    for nk in sorted(k_opts, reverse=True):
        nk = min(nk, u.n)
        nb_k = math.ceil(u.n / nk)
        if 2 * math.ceil(nk * cost.kv_bpe_row) > wbuf:
            continue
        o_sram = cost.o_bpe if nb_k == 1 else PSUM_BYTES
        # per query row: Q (double-buffered) + the score row (FP16) + O (double-buffered)
        per_row = 2 * u.d * cost.q_bpe + 2 * nk * FP16_BYTES + 2 * u.dv * o_sram
        rows = int(abuf // per_row)
        if rows < 1:
            continue
        heads = int((wbuf // 2) // max(1.0, u.n * cost.kv_bpe_row))  # K/V of this many heads fit
        if ladder:
            opts = [(mq, 1) for mq in block_ladder(u.m, R) if mq <= rows]
            if rows >= u.m and nb_k == 1:
                opts += [(u.m, bt) for bt in block_ladder(u.batch, 1) if 1 < bt <= min(rows // u.m, heads)]
        else:
            opts = _attention_opts(u, rows, nb_k, heads, R)
        for mq_, bt_ in opts:
            cycles, energy, ntiles = cost.estimate(nk, mq_, bt_)
            merit = (figure_of_merit(cycles, energy, hw.planner.objective), ntiles)
            ranked.append((merit, ((nk, mq_, bt_), cost.last_bound) if ladder else (nk, mq_, bt_)))
    if not ranked:
        what = f"attention [{u.m}x{u.d}] over {u.n} keys"
        need = 2 * math.ceil(min(u.n, R) * cost.kv_bpe_row)
        if need > wbuf:
            raise NoFit("sram.weight_buffer_bytes", wbuf, need, what)
        raise NoFit(
            "sram.activation_buffer_bytes",
            abuf,
            math.ceil(min(u.m, R) * (2 * u.d * cost.q_bpe + 2 * min(u.n, R) * FP16_BYTES + 2 * u.dv * PSUM_BYTES)),
            what,
        )
    ranked.sort(key=lambda c: c[0])  # stable: the first candidate of equal cost wins, as before
    return [b for _, b in (ranked if ladder else ranked[:top])]


def _attention_opts(u: AttentionUnit, rows: int, nb_k: int, heads: int, R: int) -> list[tuple[int, int]]:
    """(mq, bt): the most heads (or query rows) that fit, and 2x and 4x as many blocks (smaller
    tiles fill and drain the pipeline faster; the estimate weighs both)."""
    if rows >= u.m:
        mq, bt = u.m, 1
        if nb_k == 1:
            bt = max(1, min(u.batch, rows // u.m, heads))
    else:
        most = _round_down(rows, R)
        mq, bt = min(most, _round_up(math.ceil(u.m / math.ceil(u.m / most)), R)), 1
    opts = [(mq, bt)] + [(mq, math.ceil(bt / f)) for f in (2, 4) if bt >= f]
    if bt == 1:
        opts += [(m2, 1) for f in (2, 4) if R <= (m2 := _round_up(math.ceil(u.m / (math.ceil(u.m / mq) * f)), R)) < mq]
    return opts


BLOCK_COUNTS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256)  # assumption: a
# compiler's tile counts, about 1.25-1.5x apart (finer steps cost search time and gain little)


def block_ladder(total: int, q: int, counts: tuple = BLOCK_COUNTS) -> list[int]:
    """Balanced block sizes of ``total``: cut in d near-equal blocks rounded up to a multiple of
    ``q`` for each d of ``counts`` (down to ``q``), largest first. It depends on the shape and
    ``q`` alone, so a search over it is monotone in the buffer sizes: a bigger buffer fits every
    size a smaller one fits."""
    out = {total}
    for d in counts:
        b = _round_up(math.ceil(total / d), q)
        if min(q, total) <= b < total:
            out.add(b)
    return sorted(out, reverse=True)


def replay_lower_bound(
    comp: float, vector: float, dram_bytes: float, hw: HWConfig, first: tuple = (), last_out: int = 0
) -> int:
    """Cycles no replay of a plan can beat (``engine.Machine``): its tiles' array cycles run one
    after another, after the first tile's operands (``first`` = their bytes; loaded at once, each
    at most at ``transfer_cycles_per_byte`` after a DMA setup, together no faster than the one DRAM
    controller) and before the last output tile's store; its vector cycles on the one vector unit;
    its DRAM bytes through the one controller. Rounded down: a bound, not an estimate."""
    setup, cpb, tcpb = hw.dma.setup_cycles, dram_cycles_per_byte(hw), transfer_cycles_per_byte(hw)
    fill = 0.0
    if any(first):
        fill = setup + max(max(first) * tcpb, sum(first) * cpb)
    drain = setup + last_out * tcpb if last_out else 0.0
    return math.floor(max(fill + comp + drain, vector, dram_bytes * cpb) * (1 - 1e-12))


def plan_attention(u: AttentionUnit, hw: HWConfig, blocking: tuple | None = None) -> Plan:
    """Tiles of a fused attention: per block of heads and query rows, key blocks streamed with an
    on-line softmax when all keys do not fit; the blocking from ``attention_blockings`` (or the
    one given)."""
    cost = _AttnCost(u, hw)
    nk, mq, bt = blocking if blocking is not None else attention_blockings(u, hw)[0]
    q_bpe, kv_bpe_row, o_bpe = cost.q_bpe, cost.kv_bpe_row, cost.o_bpe
    nb_b, nb_m, nb_k = math.ceil(u.batch / bt), math.ceil(u.m / mq), math.ceil(u.n / nk)
    counts = {"sram_rd": 0, "sram_wr": 0, "vec_cycles": 0, "dyn_cycles": 0}
    tiles = []
    for ib in range(nb_b):
        b = min(bt, u.batch - ib * bt)
        for im in range(nb_m):
            m = min(mq, u.m - im * mq)
            for kk in range(nb_k):
                nkk = min(nk, u.n - kk * nk)
                first, last = kk == 0, kk == nb_k - 1
                q_load = math.ceil(b * m * u.d * q_bpe) if first else 0
                q_sram = math.ceil(b * m * u.d * q_bpe) + b * m * nkk * FP16_BYTES
                kv_new = nb_k > 1 or im == 0
                kv_load = math.ceil(b * nkk * kv_bpe_row) if kv_new else 0
                kv_free = nb_k > 1 or im == nb_m - 1
                kv_sram = math.ceil(b * nkk * kv_bpe_row)
                pre = cost.softmax_cycles(b, m, nkk, nb_k > 1)
                cyc, rd = cost.cycles(b, m, nkk)
                o_alloc = math.ceil(b * m * u.dv * (o_bpe if nb_k == 1 else PSUM_BYTES)) if first else 0
                o_store = math.ceil(b * m * u.dv * o_bpe) if last else 0
                tiles.append(
                    (
                        q_load,
                        q_sram if first or nb_k > 1 else 0,
                        q_sram if (last or nb_k > 1) else 0,
                        kv_load,
                        kv_sram if kv_new else 0,
                        kv_sram if kv_free else 0,
                        pre,
                        cyc,
                        o_alloc,
                        o_store,
                        0,
                        1 if last else 0,
                    )
                )
                counts["vec_cycles"] += pre
                counts["sram_rd"] += rd + 2 * b * m * nkk * FP16_BYTES + o_store  # scores in and out of the vector unit
                counts["sram_wr"] += q_load + kv_load + 2 * b * m * nkk * FP16_BYTES + math.ceil(b * m * u.dv * o_bpe)
    counts["macs_" + u.precision_qk] = counts.get("macs_" + u.precision_qk, 0) + u.batch * u.m * u.n * u.d
    counts["macs_" + u.precision_av] = counts.get("macs_" + u.precision_av, 0) + u.batch * u.m * u.n * u.dv
    counts.update(epilogue_counts(u))
    counts["dram_rd"] = sum(t[0] + t[3] for t in tiles)
    counts["dram_wr"] = sum(t[9] for t in tiles)
    in_cap = 2 * (math.ceil(bt * mq * u.d * q_bpe) + bt * mq * nk * FP16_BYTES)
    w_cap = 2 * math.ceil(bt * nk * kv_bpe_row)
    out_cap = 2 * math.ceil(bt * mq * u.dv * (o_bpe if nb_k == 1 else PSUM_BYTES))
    return Plan("mac", tiles, max(1, in_cap), max(1, w_cap), max(1, out_cap), counts, (bt, mq, nk))
