"""Huge GEMMs in closed form (hwsim/gemm_closed_form.py): equal to the tile-by-tile replay where
both run (integers exactly: cycles, engine counters, event counts, bytes), used above the tile
budget instead of refusing, and the DRAM capacity checked before any planning."""

from __future__ import annotations

import importlib
import time

import pytest

import hwsim.bounded
import hwsim.gemm_closed_form
from hwsim.config import load_hw, with_overrides
from hwsim.engine import Machine
from hwsim.gemm_closed_form import closed_form_plan, gemm_plan
from hwsim.simulate import clear_cache, simulate
from hwsim.tiling import GemmUnit, plan_estimate, plan_gemm
from workloads.errors import ConfigError
from workloads.trace import gemm_trace

sim = importlib.import_module("hwsim.simulate")  # the module (``hwsim.simulate`` names the function)

# chips with different arrays, dataflows, buffers and DMA engines
CHIPS = {
    "npu": load_hw("edge-npu"),
    "lite-1dma-ws": with_overrides(load_hw("edge-npu-lite"), {"dma.engines": 1, "mac.dataflow": "weight_stationary"}),
    "pro": load_hw("edge-npu-pro"),
    "npu-3dma": with_overrides(load_hw("edge-npu"), {"dma.engines": 3}),
}


def _unit(b: int, m: int, k: int, n: int, **kw) -> GemmUnit:
    d = dict(batch=b, m=m, k=k, n=n, precision="int8", a_bytes=b * m * k, b_bytes=k * n, out_bytes=2 * b * m * n)
    d.update(b_per_item=False, b_resident=False)
    d.update(kw)
    return GemmUnit(**d)


# (chip, unit, tiling (kt, nt, mt, bt, weight_reuse)): non-multiples of the tile, M=1, K=1, N=1,
# K split (partial sums), both loop orders, batch blocks, fused stages, per-item B, resident weights,
# SRAM hand-over
CASES = [
    ("npu", _unit(1, 10000, 33, 5), (33, 1, 7, 1, False)),
    ("npu", _unit(2, 10000, 33, 1), (11, 1, 1, 1, False)),
    ("npu", _unit(1, 1, 1000, 3001), (64, 7, 1, 1, True)),
    ("npu", _unit(1, 20001, 1, 1), (1, 1, 3, 1, True)),
    ("lite-1dma-ws", _unit(1, 1000, 33, 64), (33, 1, 7, 1, True)),
    ("lite-1dma-ws", _unit(3, 3001, 500, 1, b_per_item=True, b_bytes=1500), (32, 1, 50, 3, True)),
    ("lite-1dma-ws", _unit(1, 100, 1000, 1000, precision="int4"), (334, 1, 20, 1, True)),
    ("pro", _unit(3, 10000, 33, 5, post="dyn_rescale", res_bytes=300000), (33, 1, 7, 1, False)),
    ("pro", _unit(3, 10000, 64, 300, b_per_item=True, b_bytes=57600), (64, 300, 3, 3, True)),
    ("pro", _unit(1, 5001, 64, 70, b_resident=True), (32, 7, 9, 1, False)),
    (
        "npu-3dma",
        _unit(3, 3001, 33, 64, pre="smooth_mul", a_extra_sram_bpe=1.0, a_bytes=2 * 3 * 3001 * 33, pre_weight_bytes=128),
        (11, 64, 7, 3, False),
    ),
    ("npu-3dma", _unit(2, 3001, 500, 1, post="dyn_rescale", res_bytes=12004), (167, 1, 1, 1, True)),
    ("npu-3dma", _unit(2, 10000, 1, 300, dram_in=False, dram_out=False, held_bytes=1000), (1, 30, 7, 2, False)),
]


def _replay(plan, hw) -> tuple[int, dict]:
    m = Machine(hw)
    m.env.process(m.run_unit(plan, ""))
    m.env.run()
    return m.env.now, dict(m.st)


@pytest.mark.parametrize("chip, u, shape", CASES, ids=[f"{c}-{u.batch}x{u.m}x{u.k}x{u.n}" for c, u, _ in CASES])
def test_closed_form_equals_the_tile_replay(chip, u, shape):
    hw = CHIPS[chip]
    full = plan_gemm(u, hw, shape=shape)
    assert len(full.tiles) > 200  # long loops: the closed form extrapolates, it does not replay them
    closed = closed_form_plan(u, hw, shape)
    assert len(closed.tiles) == 2
    assert closed.closed == _replay(full, hw)  # cycles and every engine counter, exactly
    assert closed.replayed == closed.closed[0]
    assert closed.counts == full.counts  # event counts (DRAM, SRAM bytes, vector cycles, MACs)
    assert (closed.in_cap, closed.w_cap, closed.out_cap, closed.tile_shape) == (
        full.in_cap,
        full.w_cap,
        full.out_cap,
        full.tile_shape,
    )
    cyc, pj = plan_estimate(full, hw)
    assert closed.estimate == pytest.approx((cyc, pj), rel=1e-12, abs=0)
    # the machine runs a closed-form plan as its replay
    assert _replay(closed, hw) == closed.closed


def _small_sram(hw_name: str = "edge-npu-lite"):
    return with_overrides(load_hw(hw_name), {"sram.activation_buffer_bytes": 16384, "sram.weight_buffer_bytes": 16384})


def _numbers(r) -> tuple:
    return (r.latency_s, r.dram_bytes, r.sram_bytes, r.macs, r.stall_breakdown_s, r.utilisation, r.per_op)


@pytest.mark.parametrize("mkn", [(4000, 300, 500), (1, 20000, 3000), (30001, 1, 700)])
def test_simulate_above_the_budget_equals_below_it(monkeypatch, mkn):
    """The same GEMM with the tile budget just below its tile count (closed form) and just at it
    (tile replay): the same result, integers exactly, energy to float rounding; with and without
    the memo."""
    hw = _small_sram()
    trace = gemm_trace(*mkn, w_bits=8, a_bits=8)
    clear_cache()
    full = simulate(trace, hw, memo=False)
    tiles = hwsim.bounded.gemm_tile_count(1, *mkn, _tile_shape(trace, hw))
    assert tiles > 5000
    monkeypatch.setattr(hwsim.bounded, "MAX_GEMM_TILES", tiles)  # at the limit: replayed tile by tile
    clear_cache()
    assert _numbers(simulate(trace, hw, memo=False)) == _numbers(full)
    monkeypatch.setattr(hwsim.bounded, "MAX_GEMM_TILES", tiles - 1)  # just over: closed form
    for memo in (False, True):
        clear_cache()
        r = simulate(trace, hw, memo=memo)
        assert _numbers(r) == _numbers(full)
        assert r.energy_j == pytest.approx(full.energy_j, rel=1e-12, abs=0)
        assert r.energy_breakdown_j == pytest.approx(full.energy_breakdown_j, rel=1e-12, abs=0)
    clear_cache()


def _tile_shape(trace, hw) -> tuple:
    """(kt, nt, mt, bt, weight_reuse) the planner gives the trace's one GEMM."""
    clear_cache()
    r = sim._Run()
    info = sim._trace_info(trace, False)
    r.wplan = sim.plan_weights(trace, hw, "jit", info.sets, info.tables)
    us = sim._Units(info.by_step[0], hw, r.wplan, {})
    bt, mt, kt, nt, wr = us.plans[0].tile_shape
    return kt, nt, mt, bt, wr


def test_gemm_plan_switches_at_the_budget(monkeypatch):
    hw = CHIPS["npu"]
    u, shape = CASES[0][1], CASES[0][2]
    tiles = hwsim.bounded.gemm_tile_count(u.batch, u.m, u.k, u.n, shape)
    monkeypatch.setattr(hwsim.bounded, "MAX_GEMM_TILES", tiles)
    assert not gemm_plan(u, hw, shape=shape).closed and len(gemm_plan(u, hw, shape=shape).tiles) == tiles
    monkeypatch.setattr(hwsim.bounded, "MAX_GEMM_TILES", tiles - 1)
    assert gemm_plan(u, hw, shape=shape).closed


def test_huge_gemm_simulated_in_seconds():
    """A GEMM of 2.9 billion tiles (once refused) in closed form, in bounded time."""
    hw = CHIPS["npu"]
    u = _unit(1, 10**9, 64, 1000)
    t0 = time.perf_counter()
    plan = closed_form_plan(u, hw, (64, 64, 7, 1, True))
    assert time.perf_counter() - t0 < 30
    assert plan.counts["macs_int8"] == 64 * 10**12
    assert plan.counts["dram_wr"] == 2 * 10**12  # the FP16 output, once
    assert plan.closed[0] >= plan.counts["macs_int8"] // hw.peak_macs_per_cycle["int8"]


def test_closed_form_refused_where_its_samples_exceed_their_budget(monkeypatch):
    monkeypatch.setattr(hwsim.gemm_closed_form, "MAX_SAMPLE_TILES", 10)
    u = _unit(1, 10**9, 64, 1000)
    with pytest.raises(ConfigError) as e:
        closed_form_plan(u, CHIPS["npu"], (64, 64, 7, 1, True))
    assert e.value.field == "workload" and "2,285,714,288 tiles" in str(e.value)


def test_closed_form_refused_beside_a_background_swap():
    """The closed form assumes the machine to itself: a step that swaps weights in the background
    beside it is refused (one line), and the engine never runs one beside another process."""
    hw = CHIPS["npu"]
    plan = closed_form_plan(CASES[0][1], hw, CASES[0][2])
    us = sim._Units.__new__(sim._Units)
    us.plans, us.labels = [plan_gemm(CASES[0][1], hw, shape=CASES[0][2]), plan], ["small", "huge"]
    with pytest.raises(ConfigError, match="swaps weights in the background") as e:
        sim.closed_form_beside_swap(us)
    assert e.value.value == "huge"
    m = Machine(hw)

    def swap():
        yield m.env.timeout(10**9)

    m.swap_proc = m.env.process(swap())
    m.env.process(m.run_unit(plan, "gemm"))
    with pytest.raises(RuntimeError, match="beside a background process"):
        m.env.run()


def test_dram_capacity_checked_before_planning(monkeypatch):
    """A workload far beyond DRAM is refused before any GEMM is planned, with the number and the
    capacity (the message of the check after planning)."""

    def no_planning(*a, **k):
        raise AssertionError("planned before the DRAM check")

    monkeypatch.setattr(sim, "_Units", no_planning)
    monkeypatch.setattr(sim, "plan_weights", no_planning)
    hw = load_hw("edge-npu")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        simulate(gemm_trace(10**14, 1, 1, w_bits=8, a_bits=8), hw, memo=False)
    assert time.perf_counter() - t0 < 0.5
    assert e.value.field == "dram.capacity_bytes" and e.value.value == hw.dram.capacity_bytes
    assert "gemm's 300000000000000 activation bytes" in str(e.value)
