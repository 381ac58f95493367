"""Huge GEMMs in closed form: the replay's numbers without enumerating every tile.

A GEMM's tiles stream in four nested loops (batch blocks, then output-column and row blocks in the
order of ``tiling._gemm_order``, K innermost). Every block of a loop but its first and its last is
cut the same (full size) and meets the same neighbours, so the tile list of a loop with c + 1
blocks is that of c blocks with one more interior block's tiles inserted. Hence:

- a plan's event counts and the per-tile sums the closed-form estimate reads (bytes, transfers,
  cycles) are affine in each loop's block count, exactly: the next block adds what the last one
  added;
- the replay (``engine.Machine.run_unit``) of those tiles settles, after a few blocks, into a
  periodic steady state: each further ``SAMPLE_STEP`` blocks add the same cycles and the same
  counter increments, since the machine sees the same tiles again from the same relative state.

``closed_form_plan`` replays small copies of the GEMM (interior blocks of every long loop dropped,
the edge blocks kept: ``tiling._gemm_tiles``' ``dims``) at ``SAMPLES`` block counts ``SAMPLE_STEP``
apart, in every long loop, and extrapolates each integer linearly to the real counts. It uses the
extrapolation only where the differences between consecutive samples are all equal (every count,
cycle and counter); otherwise it tries a larger start and step, and refuses with the tile count
where none settles. tests/hwsim/test_gemm_closed_form.py checks it equal to the tile-by-tile
replay, integer for integer, over a spread of shapes and chips.
"""

from __future__ import annotations

import math

from hwsim import bounded
from hwsim.config import HWConfig
from hwsim.energy import energy_breakdown_j
from hwsim.engine import STAT_KEYS, Machine
from hwsim.tiling import (
    GemmUnit,
    Plan,
    _gemm_tiles,
    _GemmSearch,
    _pipeline_cycles,
    epilogue_counts,
    gemm_caps,
    plan_gemm,
)
from workloads.errors import ConfigError

# (first block count, step, samples) tried in turn: a step of 2 follows a steady state that repeats
# every block or every other block (double buffering); 6 and 12 also one of 3 or 4 blocks
# (DMA engines taking turns). Samples beyond two are the check that the differences are constant.
SAMPLINGS = tuple((start, step, 4) for start in (3, 6, 12, 24, 48) for step in (2, 6, 12))
# sample tiles replayed at most for one GEMM, over all samples tried (assumption from a measurement
# on the loaded 2-core CI machine: 108,016 sample tiles of a 1000x[1000,1000]x[1000,1000] GEMM in
# 20x22x50 tiles took 3.2 s; the budget keeps one closed form under about 10 s)
MAX_SAMPLE_TILES = 300_000
SHORT_BLOCKS = 96  # a dimension of at most this many blocks may be replayed whole instead
_COUNT_KEYS = ("sram_rd", "sram_wr", "vec_cycles", "dyn_cycles")
_SUM_FIELDS = (0, 3, 9, 6, 7, 10)  # a_load, b_load, out_store, pre, compute, post (``Plan`` tile tuple)
_NZ_FIELDS = (0, 3, 9)  # transfers: tiles that load or store


class NotPeriodic(Exception):
    """The samples' differences are not constant: no steady state by these block counts."""


def gemm_plan(u: GemmUnit, hw: HWConfig, need_full_k: bool = False, shape: tuple | None = None) -> Plan:
    """``tiling.plan_gemm``, or its closed form (``closed_form_plan``) for a GEMM of more than
    ``bounded.MAX_GEMM_TILES`` tiles."""
    if shape is not None and bounded.gemm_tile_count(u.batch, u.m, u.k, u.n, shape) > bounded.MAX_GEMM_TILES:
        return closed_form_plan(u, hw, shape)
    return plan_gemm(u, hw, need_full_k, shape=shape)


def closed_form_plan(u: GemmUnit, hw: HWConfig, shape: tuple) -> Plan:
    """A GEMM's plan with its numbers extrapolated from small replays (module docstring): its
    ``counts``, ``estimate``, ``replayed`` and ``closed`` (cycles and engine counters of the
    replay alone) are those of ``plan_gemm``'s full tile list; ``tiles`` holds its first tile
    and its last (the timeline shows no tile of it)."""
    srch = _GemmSearch(u, hw)
    kt, nt, mt, bt, wr = shape
    caps = gemm_caps(u, srch, shape)
    total = (u.batch, u.m, u.n, u.k)
    tile = (bt, mt, nt, kt)
    blocks = tuple(math.ceil(x / t) for x, t in zip(total, tile))
    ntiles = math.prod(blocks)
    samples: dict = {}
    replayed = [0]

    def dims(counts: tuple) -> tuple:
        """(batch, m, n, k) cut in ``counts`` blocks: interior blocks dropped, the edge kept."""
        return tuple(x - (b - c) * t for x, b, c, t in zip(total, blocks, counts, tile))

    def sample(counts: tuple) -> tuple:
        hit = samples.get(counts)
        if hit is None:
            replayed[0] += math.prod(counts)
            if replayed[0] > MAX_SAMPLE_TILES:
                raise NotPeriodic  # bounded work: no steady state within the budget
            tiles, cnt = _gemm_tiles(u, hw, srch, shape, dims(counts))
            m = Machine(hw)
            m.env.process(m.run_unit(Plan("mac", tiles, *caps, cnt), ""))
            m.env.run()
            sums = tuple(sum(t[i] for t in tiles) for i in _SUM_FIELDS)
            nz = tuple(sum(1 for t in tiles if t[i]) for i in _NZ_FIELDS)
            hit = samples[counts] = (
                m.env.now,
                *(m.st[k] for k in STAT_KEYS),
                *(cnt[k] for k in _COUNT_KEYS),
                *sums,
                *nz,
            )
        return hit

    try:
        grids = _grids(sample, blocks)
    except NotPeriodic:
        grids = None
    while grids is not None:
        per_dim = [n * c0 + step * n * (n - 1) // 2 for c0, step, n in grids.values()]
        if math.prod(per_dim) * math.prod(blocks[d] for d in range(4) if d not in grids) > MAX_SAMPLE_TILES:
            break  # the samples' tiles, all combinations: each long dimension's sample counts summed
        try:
            v = _extrapolate(sample, blocks, list(blocks), grids)
        except NotPeriodic:  # one dimension's transient lasts longer when the others are longer
            grids = _later(grids, blocks) if replayed[0] <= MAX_SAMPLE_TILES else None
            continue
        ends, _ = _gemm_tiles(u, hw, srch, shape, dims(tuple(min(b, 2) for b in blocks)))
        return _plan(u, hw, caps, shape, v, ntiles, (ends[0], ends[-1]))
    raise ConfigError(
        "workload",
        f"GEMM {u.batch}x[{u.m},{u.k}]x[{u.k},{u.n}]",
        f"at most {bounded.MAX_GEMM_TILES:,} tiles per GEMM on this chip, or one whose replay settles into a "
        f"steady state the closed form can extrapolate (this one needs {ntiles:,} tiles of {bt}x{mt}x{kt}x{nt})",
    )


def _grids(sample, blocks: tuple) -> dict | None:
    """Per long dimension (more blocks than the smallest sampling's samples reach), the first
    sampling of ``SAMPLINGS`` whose samples differ by constant steps, the other dimensions at
    their smallest sample (or all their blocks): ``{dim: (first count, step, samples)}`` with the
    first count raised by the remainder so the real count is reached in whole steps. A dimension
    that settles under none is replayed whole where it is short (``SHORT_BLOCKS``); None where
    it is not."""
    start0, step0, n0 = SAMPLINGS[0]
    long = [d for d in range(4) if blocks[d] > start0 + n0 * step0]
    base = [start0 if d in long else blocks[d] for d in range(4)]
    grids = {}
    for d in long:
        for start, step, n in SAMPLINGS:
            if blocks[d] <= start + n * step:
                continue
            c0 = start + (blocks[d] - start) % step
            try:
                _extrapolate(sample, blocks, list(base), {d: (c0, step, n)})
            except NotPeriodic:
                continue
            grids[d] = (c0, step, 3)  # all dimensions together: three samples each (two equal steps)
            break
        else:
            if blocks[d] > SHORT_BLOCKS:
                return None  # too long to replay whole, settles under no sampling
    return grids


def _later(grids: dict, blocks: tuple) -> dict | None:
    """The samplings of ``grids`` started about twice as late (the same step); a dimension they
    no longer fit is replayed whole where it is short, else None."""
    out = {}
    for d, (c0, step, n) in grids.items():
        c1 = c0 + step * -(-c0 // step)
        if blocks[d] > c1 + n * step:
            out[d] = (c1, step, n)
        elif blocks[d] > SHORT_BLOCKS:
            return None
    return out if out != grids else None


def _extrapolate(sample, blocks: tuple, counts: list, grids: dict) -> tuple:
    """The sample vector at ``blocks`` in every dimension of ``grids`` (others as in ``counts``):
    per dimension, samples at ``c0 + j * step`` blocks (j < n), extrapolated linearly to the real
    count where their differences are all equal (else ``NotPeriodic``), dimension by dimension."""
    if not grids:
        return sample(tuple(counts))
    d = next(iter(grids))
    (c0, step, n), rest = grids[d], {k: v for k, v in grids.items() if k != d}
    vs = []
    for j in range(n):
        counts[d] = c0 + j * step
        vs.append(_extrapolate(sample, blocks, counts, rest))
    counts[d] = blocks[d]
    diff = tuple(b - a for a, b in zip(vs[0], vs[1]))
    for a, b in zip(vs[1:], vs[2:]):
        if tuple(y - x for x, y in zip(a, b)) != diff:
            raise NotPeriodic
    q = (blocks[d] - c0) // step
    return tuple(a + q * x for a, x in zip(vs[0], diff))


def _plan(u: GemmUnit, hw: HWConfig, caps: tuple, shape: tuple, v: tuple, ntiles: int, ends: tuple) -> Plan:
    """The closed-form ``Plan`` from the extrapolated vector ``v`` (``closed_form_plan.sample``'s
    layout): the counts ``plan_gemm`` would count, the estimate ``plan_estimate`` would compute
    from the full tile list (the same sums, so the same floats), the replay's cycles and counters."""
    kt, nt, mt, bt, wr = shape
    cycles, v = v[0], v[1:]
    st = dict(zip(STAT_KEYS, v[: len(STAT_KEYS)]))
    v = v[len(STAT_KEYS) :]
    counts = dict(zip(_COUNT_KEYS, v[: len(_COUNT_KEYS)]))
    v = v[len(_COUNT_KEYS) :]
    a_b, b_b, o_b, pre, comp, post = v[: len(_SUM_FIELDS)]
    a_n, b_n, o_n = v[len(_SUM_FIELDS) :]
    counts["macs_" + u.precision] = u.macs
    counts.update(epilogue_counts(u))
    counts["dram_rd"] = a_b + b_b
    counts["dram_wr"] = o_b
    first, last = ends  # the first and the last tile: those of any sample (interior blocks dropped)
    xfers = ((a_b, a_n), (b_b, b_n), (o_b, o_n))
    est_cycles = _pipeline_cycles(xfers, comp, pre, post, ntiles, hw, "mac", max(first[0], first[3]), last[9])
    energy_j = sum(energy_breakdown_j(hw, counts, est_cycles / hw.clock.freq_hz).values())
    plan = Plan("mac", list(ends), *caps, counts, (bt, mt, kt, nt, wr))
    plan.estimate = (est_cycles, energy_j * 1e12)
    plan.replayed = cycles
    plan.closed = (cycles, st)
    return plan
