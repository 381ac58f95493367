"""Quantization stages are charged on the unit that does them: the arrays' epilogue lanes cost energy
and no cycles (they keep pace with the arrays), a vector op that quantizes what it writes pays lane
cycles for it."""

import dataclasses

import pytest

import hwsim
from hwsim.energy import VECTOR_LANE_CYCLE_PJ_45NM
from hwsim.horowitz import EPILOGUE_PJ_45NM
from hwsim.tiling import VECTOR_WORK
from workloads.recipes import annotate_trace, get_recipe
from workloads.trace import Op, Trace, gemm_trace, reads_str


def _without_epilogues(trace: Trace) -> Trace:
    return dataclasses.replace(trace, ops=[dataclasses.replace(o, epilogue="") for o in trace.ops])


@pytest.mark.parametrize("dataflow", ["output_stationary", "weight_stationary", "input_stationary"])
def test_gemm_epilogue_costs_energy_not_cycles(dataflow):
    hw = hwsim.with_overrides(hwsim.load_hw("edge-npu"), {"mac.dataflow": dataflow})
    m, k, n = 1024, 1152, 3456
    trace = annotate_trace(gemm_trace(m, k, n), get_recipe("static-w8a8"))
    (op,) = trace.ops
    assert op.epilogue == "requant_dequant"  # its reader is float: int32 -> int16 codes -> FP16
    with_epi = hwsim.simulate(trace, hw)
    bare = hwsim.simulate(_without_epilogues(trace), hw)
    assert with_epi.latency_s == bare.latency_s
    e = hw.costs
    expect_j = m * n * EPILOGUE_PJ_45NM["requant_dequant"] * e.vector_lane_cycle_pj / VECTOR_LANE_CYCLE_PJ_45NM * 1e-12
    assert with_epi.energy_breakdown_j["quant_epilogue"] == pytest.approx(expect_j, rel=1e-12)
    assert bare.energy_breakdown_j["quant_epilogue"] == 0
    assert with_epi.energy_j > bare.energy_j


def test_quantize_on_write_runs_on_the_vector_lanes():
    """A GELU that writes int8 codes for the next GEMM does the GELU and the quantization (a
    multiply by 1/scale, round, saturate) on every element it writes."""
    el = 1 << 20

    def gelu(epilogue: str) -> Trace:
        op = Op(
            0,
            "act",
            "gelu",
            elements=el,
            input_bytes=2 * el,
            output_bytes=el if epilogue else 2 * el,
            out_bits=8 if epilogue else 16,
            epilogue=epilogue,
            reads=reads_str([("", 0, el, 16)]),
        )
        return Trace(ops=[op], meta={"workload": "gelu", "num_steps": 1})

    hw = hwsim.load_hw("edge-npu")
    q, f = hwsim.simulate(gelu("quant"), hw), hwsim.simulate(gelu(""), hw)
    cpe = hw.vector.cycles_per_element
    work = {kind: sum(cpe[fn] * c for fn, c in VECTOR_WORK[kind]) for kind in ("gelu", "quantize")}
    ratio = q.energy_breakdown_j["vector"] / f.energy_breakdown_j["vector"]
    assert ratio == pytest.approx((work["gelu"] + work["quantize"]) / work["gelu"], rel=1e-3)
    lane_cycles = el * (work["gelu"] + work["quantize"]) / hw.vector.lanes  # the op's vector time, at least
    assert q.latency_s * hw.clock.freq_hz >= lane_cycles
